"""The build's pipeline (sefdata/build.py): the CPU stages run beside the models, not between their calls, and the
queues between them are bounded. Measured with the identity generator, whose ``wait_ms`` stands in for a model
call on a GPU (a sleep: no core, no GIL), and with timestamps of every stage, not wall-clock ratios alone, so that a
busy 2-core machine slows the stages without breaking the test."""

from __future__ import annotations

import io
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds
from conftest import photo_like
from PIL import Image

from sefcore.errors import SefError, SkipSample
from sefdata import build as build_module
from sefdata.build import (
    Batch,
    Builder,
    Prefetch,
    Prepared,
    ShardRun,
    WriteBehind,
    build,
    cut_windows,
    find_culprits,
    finish_shard,
    generate_window,
    stack_batches,
)
from sefdata.config import BuildConfig
from sefdata.generators import GenSpec, sample_seed
from sefdata.shards import ShardWriter
from sefdata.sources import SourceItem


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


# -- the stages alone ----------------------------------------------------------------------------------------------


def _items(n: int) -> list[SourceItem]:
    return [SourceItem(f"k{i}", f"p{i}.png", read=lambda: b"", peek=lambda n: b"") for i in range(n)]


def test_windows_cut_each_shard_and_mark_its_last():
    shards = [ShardRun(0, _items(5)), ShardRun(1, _items(2))]
    windows = cut_windows(shards, 2)
    assert [(w.shard.index, [i.key for i in w.items], w.last) for w in windows] == [
        (0, ["k0", "k1"], False), (0, ["k2", "k3"], False), (0, ["k4"], True), (1, ["k0", "k1"], True),
    ]  # fmt: skip


def test_prefetch_yields_windows_in_order_with_each_inputs_result_and_reads_only_lookahead_ahead():
    items = _items(12)
    shard = ShardRun(0, items)
    lock = threading.Lock()
    prepared: list[str] = []

    def prepare(item):
        with lock:
            prepared.append(item.key)
        if item.key == "k4":
            raise SkipSample("corrupt", "stub")
        return Prepared(item, "", None, None, None)  # type: ignore[arg-type]

    def cut(ps):  # batches of two, as the build cuts them: in input order
        return [Batch(ps[i : i + 2], torch.empty(0)) for i in range(0, len(ps), 2)]

    with ThreadPoolExecutor(2) as pool, ThreadPoolExecutor(1) as feeder:
        prefetch = iter(Prefetch(cut_windows([shard], 3), prepare, cut, pool, feeder, lookahead=1))
        first = next(prefetch)
        assert len(prepared) <= 6  # this window and one ahead, never the third
        windows = [first, *prefetch]
    assert sorted(prepared) == sorted(i.key for i in items) and [w.last for w in windows] == [False] * 3 + [True]
    second = windows[1]
    assert [type(r).__name__ for r in second.results] == ["Prepared", "SkipSample", "Prepared"]
    assert second.results[1].reason == "corrupt"
    assert [[p.item.key for p in b.items] for b in second.batches] == [["k3", "k5"]]
    assert shard.timings["worker.read_decode_align"] > 0 and "wait_input" in shard.timings


def test_a_failed_batch_is_rerun_image_by_image_to_name_the_culprit():
    calls = []

    def run_one(i):
        calls.append(i)
        if i == 2:
            raise ValueError("bad pixels")

    failures = find_culprits("vae", [0, 2, 3], run_one)
    assert calls == [0, 2, 3] and list(failures) == [2]
    assert failures[2].reason == "generation_failed" and failures[2].detail == "vae: ValueError: bad pixels"

    def out_of_memory(i):
        raise torch.OutOfMemoryError("no room")

    with pytest.raises(torch.OutOfMemoryError):  # no input's fault: the build stops instead of skipping them all
        find_culprits("vae", [0, 1], out_of_memory)


def test_generate_skips_the_culprit_of_a_failed_batch_and_later_generators_never_see_it(tmp_path, monkeypatch):
    """Three same-size photos in one batch; the first generator fails on one of them: it alone is left out, with
    its reason, the others get their fakes, and the second generator runs on the two that remain."""
    from sefdata.generators.identity import IdentityGenerator
    from sefdata.sources import iter_sources

    photos = _photos(tmp_path / "photos", 3, 40)
    config = BuildConfig(sources=[str(photos)], out=str(tmp_path / "out"), gen=["identity:as=a", "identity:as=b"],
                         format="png", batch_size=3)  # fmt: skip
    items = list(iter_sources(config.sources))
    bad = sample_seed(config.seed, items[1].key, "a")
    generate, seen = IdentityGenerator.generate, []

    def failing(self, images, seeds):
        seen.append((self.name, len(seeds)))
        if bad in seeds:
            raise RuntimeError("stub failure")
        return generate(self, images, seeds)

    monkeypatch.setattr(IdentityGenerator, "generate", failing)
    builder = Builder(config, progress=False)
    try:
        builder.generators()
        (batch,) = stack_batches([builder.prepare(item) for item in items], config.batch_size, pin_memory=False)
        failures = builder.generate(batch, Counter())
    finally:
        builder.close()
    assert list(failures) == [1] and failures[1].detail == "a: RuntimeError: stub failure"
    assert seen == [("identity", 3), ("identity", 1), ("identity", 1), ("identity", 1), ("identity", 2)]
    for i in (0, 2):
        p = batch.items[i]
        assert set(p.fakes) == {"a", "b"} and np.array_equal(p.fakes["b"], p.aligned.pixels)
    assert batch.items[1].fakes == {}


def test_generate_window_records_every_left_out_input_and_encodes_the_rest_in_order():
    items = _items(4)
    shard = ShardRun(0, items)
    window = cut_windows([shard], 4)[0]
    prepared = [Prepared(item, "", None, None, None) for item in items]  # type: ignore[arg-type]
    window.results = [prepared[0], SkipSample("corrupt", "truncated"), prepared[2], prepared[3]]
    window.batches = [Batch([prepared[0], prepared[2]], torch.empty(0)), Batch([prepared[3]], torch.empty(0))]
    encoded = []

    def generate(batch, timings):  # the second image of the first batch fails in a generator
        return {1: SkipSample("generation_failed", "vae: boom")} if len(batch.items) == 2 else {}

    generate_window(window, generate, lambda w, p: encoded.append(p.item.key))
    assert encoded == ["k0", "k3"] and prepared[2].error is not None
    assert sorted(shard.skipped) == [
        (1, {"key": "k1", "source": "p1.png", "reason": "corrupt", "detail": "truncated"}),
        (2, {"key": "k2", "source": "p2.png", "reason": "generation_failed", "detail": "vae: boom"}),
    ]
    assert all(b.pixels is None for b in window.batches)  # the stacked copies are freed once generated


def test_write_behind_writes_in_input_order_whatever_order_encoding_ends_and_stats_come_last(tmp_path):
    items = _items(4)
    shard = ShardRun(0, items)
    windows = cut_windows([shard], 2)
    finished = []

    def encode(p):
        time.sleep(0.05 if p.item.key in ("k0", "k2") else 0)  # each window's first sample is encoded last
        return {"__key__": p.item.key, "real.png": p.item.key.encode()}

    with ThreadPoolExecutor(2) as pool, ThreadPoolExecutor(1) as writer:
        finish = partial(finish_shard, out=tmp_path, header={"rank": 0})
        output = WriteBehind(tmp_path, encode, finish, pool, writer, behind=1, done=finished.append)
        for window in windows:
            window.results = [Prepared(item, "", None, None, None) for item in window.items]  # type: ignore[arg-type]
            for p in window.results:
                output.encode(window, p)
            output.put(window)
        output.drain()
    samples = list(wds.WebDataset(str(tmp_path / "shard-000000.tar"), shardshuffle=False, empty_check=False))
    assert [s["__key__"] for s in samples] == ["k0", "k1", "k2", "k3"]
    (stats,) = finished
    assert stats["written"] == 4 and stats["rank"] == 0 and (tmp_path / "shard-000000.stats.json").is_file()
