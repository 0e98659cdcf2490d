"""Builds at scale: verify, crash safety under SIGKILL, many uncoordinated workers, bad input mid-build."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
import torch
from conftest import DEFAULT_THREADS, REPO, photo_like
from PIL import Image
from sef_cli.sefdata import app
from typer.testing import CliRunner

from sefcore.errors import SefError
from sefdata.build import Builder, build
from sefdata.config import BuildConfig, resolve_rank_world
from sefdata.verify import verify


@pytest.fixture
def gens(tiny_sr_file, tiny_taesd_files) -> list[str]:
    enc, dec = tiny_taesd_files
    return [f"sr:weights={tiny_sr_file},scale=2", f"taesd:encoder={enc},decoder={dec}"]


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(12):
        Image.fromarray(photo_like(160, 128, seed=i)).save(folder / f"p{i:02d}.png")
    return folder


def _args(photos: Path, out: Path, gens: list[str], *extra: str) -> list[str]:
    args = ["build", str(photos), "--out", str(out), "--shard-size", "2", "--no-progress"]
    for g in gens:
        args += ["--gen", g]
    return args + list(extra)


def _reference(photos: Path, out: Path, gens: list[str]) -> None:
    """Build in this process as a ``sefdata build`` subprocess does: with torch's default CPU threads (the tests run
    with one), which the build records because one image per call gives other bytes on another thread count."""
    torch.set_num_threads(DEFAULT_THREADS)
    try:
        build(BuildConfig(sources=[str(photos)], out=str(out), gen=gens, shard_size=2), progress=False)
    finally:
        torch.set_num_threads(1)


def _shard_files(out: Path) -> dict[str, bytes]:
    """Tars byte for byte, and stats without run-dependent timings, host and rank."""
    files = {p.name: p.read_bytes() for p in out.glob("*.tar")}
    for p in out.glob("*.stats.json"):
        stats = json.loads(p.read_text())
        for k in ("timings", "host", "rank", "world"):
            stats.pop(k)
        files[p.name] = json.dumps(stats, sort_keys=True).encode()
    return files


# -- verify ------------------------------------------------------------------------------------------------------


def test_verify_passes_a_build_and_finds_each_kind_of_damage(photos, gens, tmp_path):
    out = tmp_path / "out"
    build(BuildConfig(sources=[str(photos)], out=str(out), gen=gens, shard_size=4), progress=False)
    report = verify(out)
    assert report.ok and report.shards == 3 and report.samples == 12

    result = CliRunner().invoke(app, ["verify", str(out)])
    assert result.exit_code == 0 and "ok: 3 shards, 12 samples" in result.output

    # flip one byte inside a member of shard 0
    tar0 = out / "shard-000000.tar"
    data = bytearray(tar0.read_bytes())
    data[2048] ^= 0xFF
    tar0.write_bytes(bytes(data))
    # shard 1: rewrite without one sample's 'sr' field, updating nothing else
    tar1 = out / "shard-000001.tar"
    with tarfile.open(tar1) as src:
        members = [(m, src.extractfile(m).read()) for m in src.getmembers()]
    dropped = next(m.name for m, _ in members if m.name.endswith(".sr.png"))
    with tarfile.open(tar1, "w") as dst:
        for m, payload in members:
            if m.name != dropped:
                dst.addfile(m, io.BytesIO(payload))
    # shard 2: unfinished
    (out / "shard-000002.stats.json").unlink()

    report = verify(out)
    assert not report.ok
    assert any("sha256 differ from its stats" in p for p in report.problems["shard-000000.tar"])
    assert any("fields wrong" in p and "'sr'" in p for p in report.problems["shard-000001.tar"])
    assert report.problems["shard-000002.tar"] == ["unfinished: no stats file (re-run the build to finish it)"]
    result = CliRunner().invoke(app, ["verify", str(out)])
    assert result.exit_code == 1 and "FAILED" in result.output


def test_verify_refuses_a_folder_that_is_not_a_build(tmp_path):
    with pytest.raises(SefError, match="not a sefdata build folder"):
        verify(tmp_path)


# -- many workers --------------------------------------------------------------------------------------------------


def test_rank_and_world_come_from_flags_torchrun_or_slurm():
    assert resolve_rank_world(None, None, {}) == (0, 1)
    assert resolve_rank_world(None, None, {"RANK": "3", "WORLD_SIZE": "8"}) == (3, 8)
    slurm = {"SLURM_ARRAY_TASK_ID": "12", "SLURM_ARRAY_TASK_MIN": "10", "SLURM_ARRAY_TASK_COUNT": "4"}
    assert resolve_rank_world(None, None, slurm) == (2, 4)
    assert resolve_rank_world(1, 2, {"RANK": "3", "WORLD_SIZE": "8"}) == (1, 2)  # flags win
    with pytest.raises(SefError, match="rank 4 is not in 0..3"):
        resolve_rank_world(4, 4, {})


def _sefdata(*args: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "sef_cli.sefdata", *args], cwd=REPO, env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


@pytest.mark.slow
def test_three_uncoordinated_ranks_equal_one_process(photos, gens, tmp_path):
    single = tmp_path / "single"
    _reference(photos, single, gens)
    multi = tmp_path / "multi"
    procs = [_sefdata(*_args(photos, multi, gens), env={"RANK": str(r), "WORLD_SIZE": "3"}) for r in range(3)]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    stats = [json.loads(p.read_text()) for p in sorted(multi.glob("*.stats.json"))]
    assert [s["rank"] for s in stats] == [i % 3 for i in range(6)]  # shard i built by rank i % 3, once
    if not (multi / "manifest.json").exists():  # rank 0 finished before the others: merge now
        assert _sefdata("manifest", str(multi)).wait(timeout=120) == 0
    assert _shard_files(multi) == _shard_files(single)
    assert verify(multi).ok


# -- crash safety ------------------------------------------------------------------------------------------------


def _kill_when(proc: subprocess.Popen, out: Path, condition, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if out.is_dir() and condition(out):
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.002)
    proc.wait(timeout=30)


@pytest.mark.slow
def test_sigkill_at_any_point_then_resume_is_byte_identical(photos, gens, tmp_path):
    reference = tmp_path / "reference"
    _reference(photos, reference, gens)
    expected = _shard_files(reference)
    kill_points = {
        "while a tar is being written": lambda out: any(out.glob("*.tar.partial")),
        "after the first shard is done": lambda out: len(list(out.glob("*.stats.json"))) >= 1,
        "after half the shards": lambda out: len(list(out.glob("*.stats.json"))) >= 3,
    }
    for name, condition in kill_points.items():
        out = tmp_path / name.replace(" ", "_")
        proc = _sefdata(*_args(photos, out, gens))
        _kill_when(proc, out, condition)
        assert proc.returncode == -signal.SIGKILL, f"{name}: the build ended before it could be killed"
        assert len(list(out.glob("*.stats.json"))) < 6, name
        resumed = _sefdata(*_args(photos, out, gens))
        log = resumed.communicate(timeout=300)[0]
        assert resumed.returncode == 0, log
        assert _shard_files(out) == expected, name
        assert not list(out.glob("*.partial")) and verify(out).ok


# -- bad input at scale --------------------------------------------------------------------------------------------


def test_duplicates_are_kept_and_a_vanished_source_is_counted(photos, gens, tmp_path, monkeypatch):
    (photos / "copy of p00.png").write_bytes((photos / "p00.png").read_bytes())
    doomed = photos / "p11.png"
    original = Builder.prepare

    def prepare(self, item):
        doomed.unlink(missing_ok=True)  # disappears after listing, before it is read
        return original(self, item)

    monkeypatch.setattr(Builder, "prepare", prepare)
    out = tmp_path / "out"
    summary = build(BuildConfig(sources=[str(photos)], out=str(out), gen=gens, shard_size=5), progress=False)
    assert summary.written == 12 and dict(summary.failed) == {"missing": 1}
    metas = [json.loads(s["json"]) for s in _read(out)]
    same = [m for m in metas if m["source"].endswith(("p00.png", "copy of p00.png"))]
    assert len(same) == 2 and same[0]["source_sha256"] == same[1]["source_sha256"]
    assert same[0]["key"] != same[1]["key"] and all("." not in m["key"] for m in metas)


def _read(out: Path) -> list[dict]:
    import webdataset as wds

    return list(wds.WebDataset(sorted(str(p) for p in out.glob("*.tar")), shardshuffle=False))
