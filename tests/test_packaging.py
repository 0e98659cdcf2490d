"""A clean install: the wheel, built offline, installs into a fresh venv with every package and the manifests, its
commands run, and it installs no top-level module a generic name could collide with."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import venv
import zipfile
from pathlib import Path

import pytest
from conftest import REPO

from sefdata import presets


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    """The wheel built offline from the files a source distribution has (no network, no build isolation)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for name in ("sefcore", "sefdata", "sefmodel", "cli", "manifests"):
        shutil.copytree(REPO / name, src / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(REPO / name, src / name)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp), "."],
        cwd=src, check=True, capture_output=True,
    )  # fmt: skip
    (path,) = tmp.glob("*.whl")
    return zipfile.ZipFile(path)


@pytest.mark.slow
def test_the_wheel_installs_the_manifests(wheel):
    names = set(wheel.namelist())
    wanted = [p.relative_to(REPO) for p in (REPO / "manifests").rglob("*") if p.is_file()]
    missing = [str(p) for p in wanted if not any(n.endswith(f".data/data/share/sef-toolkit/{p}") for n in names)]
    assert wanted and not missing, f"not in the wheel: {missing}"


@pytest.mark.slow
def test_the_wheel_holds_every_package_and_no_generic_top_level_name(wheel):
    top = {n.split("/", 1)[0] for n in wheel.namelist() if "/" in n and ".dist-info" not in n and ".data" not in n}
    assert top == {"sefcore", "sefdata", "sefmodel", "sef_cli"}
    folders = {p.parent.relative_to(REPO).as_posix() for p in REPO.glob("s*/**/__init__.py")}
    packed = {n.rsplit("/", 1)[0] for n in wheel.namelist() if n.endswith("/__init__.py")}
    assert folders - {"sef_cli"} <= packed, f"packages missing from pyproject's list: {folders - packed}"


@pytest.mark.slow
def test_the_wheel_installs_into_a_fresh_venv_and_its_commands_run(wheel, tmp_path):
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    py = env_dir / "bin" / "python"
    site = subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], capture_output=True,
                          text=True, check=True).stdout.strip()  # fmt: skip
    # the dependencies come from this environment (no network); the toolkit itself only from the wheel
    (Path(site) / "deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    subprocess.run([py, "-m", "pip", "install", "-q", "--no-deps", "--no-index", wheel.filename], check=True,
                   capture_output=True)  # fmt: skip
    clean = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    for command in ("sefdata", "sefmodel"):
        result = subprocess.run([env_dir / "bin" / command, "--help"], capture_output=True, text=True, cwd=tmp_path,
                                env=clean)  # fmt: skip
        assert result.returncode == 0 and "Usage" in result.stdout, result.stderr
    probe = "import importlib.util as u; print(u.find_spec('cli'), u.find_spec('sef_cli').origin)"
    found = subprocess.run([py, "-c", probe], capture_output=True, text=True, cwd=tmp_path, env=clean).stdout.split()
    assert found[0] == "None" and found[1].startswith(str(env_dir)), found


def test_the_suite_runs_on_the_python_floor_in_ci():
    """requires-python is a promise: CI runs the suite on the oldest Python it names."""
    spec = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"]
    floor = tuple(int(v) for v in spec.removeprefix(">=").split("."))
    assert sys.version_info[:2] >= floor
    if os.environ.get("CI"):
        assert sys.version_info[:2] == floor, f"CI runs Python {sys.version_info[:2]}, the floor is {floor}"


def test_an_installed_copy_of_the_manifests_is_found_without_a_checkout(tmp_path, monkeypatch):
    installed = tmp_path / "prefix" / "share" / "sef-toolkit" / "manifests"
    (installed / "generators").mkdir(parents=True)
    monkeypatch.setattr(sysconfig, "get_path", lambda name, scheme=None: str(tmp_path / "prefix"))
    assert presets.find_manifests(tmp_path / "no-checkout" / "manifests") == installed
    assert presets.find_manifests(REPO / "manifests") == REPO / "manifests"  # a checkout wins
