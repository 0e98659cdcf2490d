"""Benchmark definitions: every layout in manifests/benchmarks/ resolves a fixture folder built from its checks;
bad definitions are refused with the key named."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sefcore.errors import SefError
from sefmodel.evaluation.benchmarks import (
    PLAIN,
    get_definition,
    known_benchmarks,
    load_definition,
    parse_definition,
    resolve_bench_arg,
    resolve_folder,
)

NAMES = sorted(known_benchmarks())
BASE = {
    "name": "x",
    "title": "X",
    "paper": "p",
    "url": "u",
    "licence": "l",
    "layout": "real/ fake/",
    "pitfalls": [],
    "rules": [{"pattern": "real/**", "label": "real"}, {"pattern": "fake/**", "label": "fake"}],
    "checks": [{"path": "real/a.png", "label": "real", "subset": "all"}],
}


def _image(path: Path, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, "PNG")  # extension may say .jpg: content does not matter to layouts


def test_the_issue_benchmarks_are_all_defined():
    for name in (
        "genimage",
        "chameleon",
        "synthbuster",
        "aigcdetectbenchmark",
        "forensynths",
        "universalfakedetect",
        "wildrf",
        "drct-2m",
        "synthwildx",
        "evalgen",
        "dda-coco",
        "co-spy-bench",
        "bfree-synthbuster",
    ):
        assert name in NAMES


@pytest.mark.parametrize("name", NAMES)
def test_every_layout_resolves_its_fixture_folder(tmp_path, name):
    definition = get_definition(name)
    assert definition.url and definition.licence and definition.pitfalls and definition.layout
    labels = {c["label"] for c in definition.checks}
    assert {"real", "fake"} <= labels, f"{name}: checks must show a real and a fake path"
    for i, check in enumerate(definition.checks):
        _image(tmp_path / check["path"], i)
    _image(tmp_path / "stray.png")  # matches no rule in any definition? counted, not dropped
    bench = resolve_folder(tmp_path, definition)
    got = {it.key: ("real" if it.label == 0 else "fake", it.subset) for it in bench.items}
    for check in definition.checks:
        if check["label"] == "ignore":
            assert check["path"] not in got
        else:
            assert got[check["path"]] == (check["label"], check["subset"])
    assert bench.ignored == sum(c["label"] == "ignore" for c in definition.checks)
    assert len(bench.items) + bench.ignored + len(bench.unmatched) == len(definition.checks) + 1
    for subset in bench.subsets:  # every subset with fakes gets reals when the layout provides shared ones
        members = [it for it in bench.items if it.in_subset(subset)]
        assert members


def test_shared_reals_pair_with_every_generator(tmp_path):
    for path in ("RAISE/r1.png", "RAISE/r2.png", "dalle3/f1.png", "glide/f2.png"):
        _image(tmp_path / "sb" / path)
    bench = resolve_bench_arg(f"synthbuster={tmp_path / 'sb'}")
    assert bench.subsets == ["dalle3", "glide"]
    assert sorted(it.key for it in bench.items if it.in_subset("glide")) == [
        "RAISE/r1.png",
        "RAISE/r2.png",
        "glide/f2.png",
    ]


def test_plain_layouts_and_warnings(tmp_path):
    for path in ("a/real/1.png", "a/fake/2.png", "b/0_real/3.png", "b/1_fake/4.png", "notes/x.png"):
        _image(tmp_path / path)
    bench = resolve_bench_arg(str(tmp_path))
    assert bench.subsets == ["a", "b"] and bench.counts() == (2, 2)
    assert bench.unmatched == ["notes/x.png"] and any("match no layout rule" in w for w in bench.warnings)
    renamed = resolve_bench_arg(f"mine={tmp_path}")
    assert renamed.name == "mine" and "not a benchmark definition" in renamed.warnings[0]
    only_fakes = tmp_path / "f"
    _image(only_fakes / "fake" / "1.png")
    assert any("no real images" in w for w in resolve_bench_arg(str(only_fakes)).warnings)
    (tmp_path / "empty").mkdir()
    with pytest.raises(SefError, match="no image under"):
        resolve_bench_arg(str(tmp_path / "empty"))
    with pytest.raises(SefError, match="does not exist"):
        resolve_bench_arg(str(tmp_path / "missing"))
    with pytest.raises(SefError, match="unknown benchmark"):
        get_definition("genimage2")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"colour": 3}, "unknown key 'colour'"),
        ({"pitfalls": "one"}, "key 'pitfalls' must be list"),
        ({"title": 3}, "key 'title' must be str"),
        ({"rules": [{"pattern": "a/**", "label": "maybe"}]}, "rules\\[0\\]: key 'label' must be"),
        ({"rules": [{"pattern": "a/**", "label": "real", "weight": 1}]}, "rules\\[0\\]: unknown key 'weight'"),
        ({"rules": [{"pattern": "a/**", "label": "fake", "serves": "*"}]}, "'serves' is for real images only"),
        ({"rules": [{"pattern": "a/x**/b", "label": "real"}]}, "key 'pattern'"),
        ({"rules": [{"pattern": "a/**", "label": "real", "subset": "{gen}"}]}, "not captured"),
        ({"protocol": {"fake_jpeg_quality": 101}}, "fake_jpeg_quality"),
        ({"protocol": {"jpeg": 96}}, "unknown key 'jpeg'"),
        ({"checks": [{"path": "fake/a.png", "label": "real", "subset": "all"}]}, "checks\\[0\\]"),
    ],
)
def test_bad_definitions_name_the_key(change, message):
    with pytest.raises(SefError, match=message):
        parse_definition({**BASE, **change}, "bad.toml")
    data = dict(BASE)
    del data["licence"]
    with pytest.raises(SefError, match="missing required key 'licence'"):
        parse_definition(data)


def test_definition_file_errors(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text(
        'name = "other"\n'
        + "\n".join(f"{k} = {v!r}".replace("'", '"') for k, v in BASE.items() if isinstance(v, str) and k != "name")
    )
    with pytest.raises(SefError, match="missing required key 'pitfalls'"):
        load_definition(path)
    path.write_text("name = [")
    with pytest.raises(SefError, match="not valid TOML"):
        load_definition(path)
    assert PLAIN.classify("x/y/0_real/z.png")[:2] == (0, "x/y")


def test_hub_dataset_with_image_and_label_columns(tmp_path):
    datasets = pytest.importorskip("datasets")
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)) for _ in range(4)]
    ds = datasets.Dataset.from_dict(
        {"image": images, "label": [0, 1, 0, 1], "generator": ["none", "sd", "none", "mj"]},
        features=datasets.Features(
            {
                "image": datasets.Image(),
                "label": datasets.ClassLabel(names=["real", "fake"]),
                "generator": datasets.Value("string"),
            }
        ),
    )
    (tmp_path / "hub" / "data").mkdir(parents=True)
    ds.to_parquet(tmp_path / "hub" / "data" / "test-00000-of-00001.parquet")
    bench = resolve_bench_arg(f"hubset=hf:{tmp_path / 'hub'}:split=test")
    assert bench.name == "hubset" and bench.counts() == (2, 2)
    assert [it.subset for it in bench.items] == ["none", "sd", "none", "mj"]
    assert bench.items[1].open().size == (8, 8)
    with pytest.raises(SefError, match="bad Hub dataset option"):
        resolve_bench_arg(f"hf:{tmp_path / 'hub'}:colour=red")
