"""The build's pipeline (sefdata/build.py): the CPU stages run beside the models, not between their calls, and the
queues between them are bounded. Measured with the identity generator, whose ``wait_ms`` stands in for a model
call on a GPU (a sleep: no core, no GIL), and with timestamps of every stage, not wall-clock ratios alone, so that a
busy 2-core machine slows the stages without breaking the test."""

from __future__ import annotations

import io
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from conftest import photo_like
from PIL import Image

from sefdata import build as build_module
from sefdata.build import Builder, build
from sefdata.config import BuildConfig
from sefdata.errors import SefError
from sefdata.generators import GenSpec
from sefdata.shards import ShardWriter


def _photos(root: Path, n: int, side: int) -> Path:
    root.mkdir()
    for i in range(n):
        Image.fromarray(photo_like(side, side, i)).save(root / f"p{i:02d}.png")
    return root


class Intervals:
    """Thread-safe (start, end) records per stage."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.spans: dict[str, list[tuple[float, float]]] = {}

    def wrap(self, stage: str, fn):
        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                with self.lock:
                    self.spans.setdefault(stage, []).append((t0, time.perf_counter()))

        return timed


def _union(spans: list[tuple[float, float]]) -> list[tuple[float, float]]:
    out: list[list[float]] = []
    for a, b in sorted(spans):
        if out and a <= out[-1][1]:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return [(a, b) for a, b in out]


def _length(spans) -> float:
    return sum(b - a for a, b in spans)


def _inside(span: tuple[float, float], union: list[tuple[float, float]]) -> float:
    a, b = span
    return sum(max(0.0, min(b, y) - max(a, x)) for x, y in union)


def test_the_build_hides_a_models_latency_behind_the_cpu_work(tmp_path, monkeypatch):
    """32 photos, batch 2, two shards: 16 model calls of 150 ms each. Reading, decoding, aligning, encoding and
    writing run while the model waits, so the build takes about max(model time, CPU time), not their sum; a build
    that ran them in turn would take model + CPU time and overlap nothing."""
    photos = _photos(tmp_path / "photos", 32, 384)
    wait_ms = 150
    spans = Intervals()
    monkeypatch.setattr(Builder, "prepare", spans.wrap("prepare", Builder.prepare))
    monkeypatch.setattr(Builder, "sample", spans.wrap("encode", Builder.sample))
    monkeypatch.setattr(ShardWriter, "write", spans.wrap("write", ShardWriter.write))
    monkeypatch.setattr(ShardWriter, "commit", spans.wrap("write", ShardWriter.commit))
    # the model side: the stand-in's wait and what this thread does around it (the copy to the device, quantising)
    monkeypatch.setattr(Builder, "generate", spans.wrap("model", Builder.generate))
    config = BuildConfig(sources=[str(photos)], out=str(tmp_path / "out"), gen=[f"identity:wait_ms={wait_ms}"],
                         format="png", batch_size=2, shard_size=16, workers=2)  # fmt: skip
    summary = build(config, progress=False)
    assert summary.written == 32 and len(summary.built) == 2
    everything = [s for stage in spans.spans.values() for s in stage]
    wall = max(b for _, b in everything) - min(a for a, _ in everything)  # first read to last write

    model = _union(spans.spans["model"])
    assert len(spans.spans["model"]) == 16
    model_time = _length(model)  # at least 16 x 150 ms
    cpu = [s for stage in ("prepare", "encode", "write") for s in spans.spans[stage]]
    cpu_time = _length(_union(cpu))  # wall time during which some CPU stage ran
    overlapped = sum(_inside(s, model) for s in cpu) / _length(cpu)
    detail = f"wall {wall:.2f}s, model {model_time:.2f}s, cpu {cpu_time:.2f}s, overlapped {overlapped:.0%}"
    # By construction only the first window's decoding (8 of 32 photos) and the last batch's encoding and writing
    # (2 of 32) cannot overlap a model call: about 70% of the stage time can; in turn, none would.
    assert overlapped > 0.5, detail
    assert wall < max(model_time, cpu_time) + 0.5 * min(model_time, cpu_time), detail


def test_queues_are_bounded_memory_stays_flat(tmp_path, monkeypatch):
    """A writer slower than everything else: the models may run only LOOKAHEAD + 1 + WRITE_BEHIND windows ahead of
    it, so decoded-but-unwritten samples never exceed that many windows, however long the corpus."""
    photos = _photos(tmp_path / "photos", 48, 32)
    lock = threading.Lock()
    count = {"prepared": 0, "written": 0, "most_pending": 0}
    prepare, write = Builder.prepare, ShardWriter.write

    def counted_prepare(self, item):
        out = prepare(self, item)
        with lock:
            count["prepared"] += 1
            count["most_pending"] = max(count["most_pending"], count["prepared"] - count["written"])
        return out

    def slow_write(self, sample):
        time.sleep(0.02)
        write(self, sample)
        with lock:
            count["written"] += 1

    monkeypatch.setattr(Builder, "prepare", counted_prepare)
    monkeypatch.setattr(ShardWriter, "write", slow_write)
    config = BuildConfig(sources=[str(photos)], out=str(tmp_path / "out"), gen=["identity"], format="png",
                         batch_size=1, shard_size=20, workers=2)  # fmt: skip
    assert build(config, progress=False).written == 48
    window = 4 * config.batch_size
    bound = (build_module.LOOKAHEAD + 1 + build_module.WRITE_BEHIND) * window
    assert bound < 48 and 0 < count["most_pending"] <= bound, count


def test_identity_fakes_are_the_reals_and_its_wait_is_checked(tmp_path):
    photos = _photos(tmp_path / "photos", 3, 40)
    out = tmp_path / "out"
    build(BuildConfig(sources=[str(photos)], out=str(out), gen=["identity:wait_ms=1"], format="png"), progress=False)
    samples = list(wds.WebDataset(sorted(str(p) for p in out.glob("*.tar")), shardshuffle=False, empty_check=False))
    assert len(samples) == 3
    for s in samples:
        real, fake = (np.asarray(Image.open(io.BytesIO(s[f"{f}.png"]))) for f in ("real", "identity"))
        np.testing.assert_array_equal(real, fake)
    with pytest.raises(SefError, match="wait_ms must be >= 0"):
        GenSpec.parse("identity:wait_ms=-1").config()


def test_a_failure_mid_build_leaves_no_partial_tar_and_a_rerun_finishes(tmp_path, monkeypatch):
    """An error in the writer thread reaches the build, every unfinished shard is aborted, the finished one stays
    done, and the same command then finishes the build (the pipeline spans shards)."""
    photos = _photos(tmp_path / "photos", 12, 32)
    config = BuildConfig(sources=[str(photos)], out=str(tmp_path / "out"), gen=["identity"], format="png",
                         batch_size=1, shard_size=4, workers=2)  # fmt: skip
    write = ShardWriter.write
    calls = []

    def failing(self, sample):
        calls.append(1)
        if len(calls) == 7:  # in the second shard
            raise OSError(28, "No space left on device")
        write(self, sample)

    monkeypatch.setattr(ShardWriter, "write", failing)
    with pytest.raises(OSError, match="No space left"):
        build(config, progress=False)
    out = tmp_path / "out"
    assert sorted(p.name for p in out.glob("shard-*")) == ["shard-000000.stats.json", "shard-000000.tar"]
    monkeypatch.setattr(ShardWriter, "write", write)
    summary = build(config, progress=False)
    assert summary.already_done == 1 and summary.built == [1, 2] and summary.written == 8
