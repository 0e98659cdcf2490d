"""The wheel carries what an installed toolkit needs besides code: presets, recipes and benchmark layouts."""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import zipfile

import pytest
from conftest import REPO

from sefdata import presets


@pytest.mark.slow
def test_the_wheel_installs_the_manifests(tmp_path):
    src = tmp_path / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for name in ("sefdata", "sefmodel", "cli", "manifests"):
        shutil.copytree(REPO / name, src / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(REPO / name, src / name)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), "."],
        cwd=src, check=True, capture_output=True,
    )  # fmt: skip
    (wheel,) = tmp_path.glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    wanted = [p.relative_to(REPO) for p in (REPO / "manifests").rglob("*") if p.is_file()]
    missing = [str(p) for p in wanted if not any(n.endswith(f".data/data/share/sef-toolkit/{p}") for n in names)]
    assert wanted and not missing, f"not in the wheel: {missing}"


def test_an_installed_copy_of_the_manifests_is_found_without_a_checkout(tmp_path, monkeypatch):
    installed = tmp_path / "prefix" / "share" / "sef-toolkit" / "manifests"
    (installed / "generators").mkdir(parents=True)
    monkeypatch.setattr(sysconfig, "get_path", lambda name, scheme=None: str(tmp_path / "prefix"))
    assert presets.find_manifests(tmp_path / "no-checkout" / "manifests") == installed
    assert presets.find_manifests(REPO / "manifests") == REPO / "manifests"  # a checkout wins
