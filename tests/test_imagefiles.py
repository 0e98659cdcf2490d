"""One rule for which files of a folder are images: a build, predict/calibrate, a benchmark folder and the page's
dropped folders all see the same files, in the build's order (sefcore/imagefiles.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sefcore.imagefiles import IMAGE_EXTENSIONS, image_files, is_image_name
from sefdata.sources import iter_sources
from sefmodel.evaluation.benchmarks import resolve_bench_arg
from sefmodel.images import expand_inputs

# relative names that are images, in the order expected: sorted as "/"-separated strings ("a-b/..." before "a/...")
IMAGES = ["a-b/x.png", "a.JPG", "a/deep/y.tiff", "b.jpe", "c.jfif", "d.webp", "e.Gif", "f.bmp", "g.jpeg", "h.tif"]
NOT_IMAGES = ["notes.txt", "png", "archive.tar", "noext", "x.png.txt"]


def _touch(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "photos"
    for name in IMAGES + NOT_IMAGES:
        _touch(root / name)
    outside = tmp_path / "elsewhere"
    _touch(outside / "z.png")
    os.symlink(outside, root / "linked")  # a symlinked folder is followed
    os.symlink(root, root / "a" / "loop")  # a link back up is not walked again (no endless loop)
    os.symlink(tmp_path / "missing.png", root / "broken.png")  # a broken link is no image
    return root


def test_image_files_by_extension_in_any_case_sorted_as_paths(tree):
    found = [p.relative_to(tree).as_posix() for p in image_files(tree)]
    assert found == sorted([*IMAGES, "linked/z.png"])
    assert found.index("a-b/x.png") < found.index("a.JPG") < found.index("a/deep/y.tiff")  # plain string order
    assert all(p.is_file() for p in image_files(tree))


def test_is_image_name():
    assert all(is_image_name(f"x.{e.upper()}") and is_image_name(f"x.{e}") for e in IMAGE_EXTENSIONS)
    assert not any(is_image_name(n) for n in NOT_IMAGES)


def test_every_command_that_takes_a_folder_sees_the_same_files(tree, tmp_path):
    expected = [p.relative_to(tree).as_posix() for p in image_files(tree)]
    assert [item.source for item in iter_sources([str(tree)])] == expected  # sefdata build FOLDER
    assert [p.relative_to(tree).as_posix() for p in expand_inputs([tree])] == expected  # predict, calibrate, golden
    bench = tmp_path / "bench"
    bench.mkdir()
    for label in ("real", "fake"):
        os.symlink(tree, bench / label)
    items = resolve_bench_arg(str(bench)).items  # eval --bench FOLDER (real/ + fake/)
    assert sorted(item.key for item in items) == sorted(
        f"{label}/{rel}" for label in ("real", "fake") for rel in expected
    )
