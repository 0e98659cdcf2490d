"""``sefdata build``: real corpus → aligned shards.

Data flows through small stages, and a bad sample carries its reason to the stats instead of stopping the build::

    list sources (no image read) → plan shards → per shard of this rank: read → decode → align → generate (batched)
    → encode → write

Shard ``i`` (:mod:`sefdata.plan`) belongs to rank ``i % world``, which alone reads its inputs; a shard whose stats
file exists is done and skipped, so re-running the same command resumes, reading only the unfinished shards'
inputs (DESIGN.md §4). A shard records the hash of everything that decides its bytes (the config and the runtime
settings); a resume whose settings differ stops and names each difference, unless ``allow_mixed``.

Inside a rank the models never wait for the CPU when there are cores enough (DESIGN.md §8). One pipeline runs
through all of the rank's unfinished shards, in windows of ``4 x batch_size`` inputs::

    I/O pool (one thread per core): read → decode → align      up to LOOKAHEAD windows ahead of the models
    feeder thread: same-size batches stacked into uint8 (N, H, W, 3), in pinned memory on CUDA
    this thread: copy to the device (non-blocking), the generators, quantise to uint8 there, one copy back per batch
    I/O pool: encode each sample as soon as its batch is done
    writer thread: the samples in input order into the shard's tar; commit and stats at a shard's end

Each is a stage of its own below, and :meth:`Builder.build_shards` composes them: :func:`cut_windows` →
:class:`Prefetch` (:meth:`Builder.prepare` in the pool, :func:`stack_batches` in the feeder) →
:func:`generate_window` (:meth:`Builder.generate`: :func:`run_generator`, and :func:`find_culprits` when a batch
fails) → :class:`WriteBehind` (:meth:`Builder.sample` in the pool, then the writer thread; :func:`finish_shard` at a
shard's end).

Queues are bounded: the models run at most LOOKAHEAD windows behind the decoders and WRITE_BEHIND windows ahead of
the writer, so memory stays flat whatever the corpus size. Samples are written in input order and batches are cut
from the same windows whatever the timing, so the bytes do not depend on thread counts or scheduling.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from functools import partial
from itertools import islice
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from sefcore.errors import SefError, SkipSample
from sefcore.imageio import NOT_A_JPEG, DecodedImage, decode
from sefcore.privacy import public_json
from sefdata.align import Aligned, align, common_multiple
from sefdata.config import (
    BuildConfig,
    default_batch_size,
    differences,
    resolve_device,
    resolve_dtype,
    resolve_rank_world,
    runtime_settings,
    settings_hash,
)
from sefdata.encode import Encoding, EncodingPolicy, encode, encoding_for
from sefdata.generators import Generator, Runtime, create_generator, sample_seed
from sefdata.manifest import BUILD_FILE, write_manifest
from sefdata.plan import ShardPlan, plan_sha256, plan_shards
from sefdata.psnr import psnr
from sefdata.shards import ShardWriter, atomic_write_json, is_done, read_stats, stats_path, tar_path
from sefdata.sources import SourceItem, iter_sources, read_item, want

LOOKAHEAD = 2  # windows read, decoded and aligned ahead of the one the models are on
WRITE_BEHIND = 2  # windows generated but not yet written (encoding or waiting for the writer)


class NothingWritten(SefError):
    """Every input of this rank's shards was skipped: no shard is written, the build is not done."""

    def __init__(self, failed: Counter, message: str) -> None:
        super().__init__(message)
        self.failed = failed


@dataclass(eq=False)
class Prepared:
    """One input that passed decoding and alignment."""

    item: SourceItem
    source_sha256: str
    decoded: DecodedImage
    aligned: Aligned
    encoding: Encoding
    fakes: dict[str, np.ndarray] = field(default_factory=dict)  # field -> H x W x 3 uint8
    records: dict[str, dict] = field(default_factory=dict)  # field -> the generator's per-sample measurements
    error: SkipSample | None = None  # set when a generator failed on this image
    copies: list = field(default_factory=list)  # CUDA events: the fakes' copies to the host are done once these are

    def wait_for_fakes(self) -> None:
        for event in self.copies:
            event.synchronize()  # releases the GIL while it waits
        self.copies = []


@dataclass(eq=False)
class Batch:
    """Same-size prepared images, their pixels stacked: uint8 (N, H, W, 3), on the CPU (pinned for a CUDA device)."""

    items: list[Prepared]
    pixels: torch.Tensor


@dataclass(eq=False)
class ShardRun:
    """One shard on its way through the pipeline: its inputs, the ones left out with their reasons, its timings."""

    index: int
    items: list[SourceItem]
    started: float = 0.0
    timings: Counter = field(default_factory=Counter)
    skipped: list[tuple[int, dict]] = field(default_factory=list)  # (input position, entry)
    writer: ShardWriter | None = None
    position: dict[int, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)  # the timings of pool threads

    def __post_init__(self) -> None:
        self.position = {id(item): i for i, item in enumerate(self.items)}

    def skip(self, item: SourceItem, err: SkipSample) -> None:
        entry = {"key": item.key, "source": item.source, "reason": err.reason, "detail": err.detail}
        self.skipped.append((self.position[id(item)], entry))

    def timed(self, name: str, fn: Callable, *args):
        """``fn(*args)`` (in a pool thread), its wall time added to the timings under ``worker.NAME``."""
        t0 = time.perf_counter()
        try:
            return fn(*args)
        finally:
            with self.lock:
                self.timings[f"worker.{name}"] += time.perf_counter() - t0


@dataclass(eq=False)
class Window:
    """Up to ``4 x batch_size`` consecutive inputs of one shard, decoded and cut into batches."""

    shard: ShardRun
    items: list[SourceItem]
    last: bool  # the shard's last window
    results: list[Prepared | SkipSample] = field(default_factory=list)  # one per input, in order
    batches: list[Batch] = field(default_factory=list)
    encoded: dict[int, Future] = field(default_factory=dict)  # id(Prepared) -> its sample's encoding


@dataclass
class BuildSummary:
    out: Path
    num_shards: int
    built: list[int]  # shards this run wrote
    already_done: int  # shards of this rank found done and skipped
    inputs: int
    written: int
    failed: Counter
    seconds: float
    manifest: Path | None  # written by this run, if every shard is done and this is rank 0
    skipped: list[dict] = field(default_factory=list)  # every input this run left out, with its reason
    notes: list[str] = field(default_factory=list)  # what the user should know about how it ran (one line each)

    @property
    def images_per_second(self) -> float:
        return self.inputs / self.seconds if self.seconds > 0 else 0.0


@dataclass
class DryRun:
    """What a build would do (``sefdata build --dry-run``): its inputs, how they are cut into shards, and this rank's
    share of them, done or to build."""

    out: Path
    inputs: int
    groups: dict[str | None, int]  # inputs per shard group: "jpeg" / "other" under `match`, else None
    num_shards: int
    rank: int
    world: int
    mine: list[int]  # this rank's shards
    done: list[int]  # of them, those already done

    def describe(self) -> str:
        kinds = {"jpeg": "JPEG sources", "other": "other sources"}
        split = "" if list(self.groups) == [None] else " (" + ", ".join(
            f"{kinds[g]} {n}" for g, n in self.groups.items()) + ")"  # fmt: skip
        todo = [i for i in self.mine if i not in self.done]
        shards = ", ".join(map(str, todo[:12])) + (" ..." if len(todo) > 12 else "")
        return (f"dry run: {self.inputs} inputs{split} in {self.num_shards} shard(s); rank {self.rank}/{self.world} "
                f"has {len(self.mine)}: {len(self.done)} done, {len(todo)} to build{': ' + shards if todo else ''}. "
                f"Nothing was read, loaded or written in {self.out}")  # fmt: skip


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity where the OS tells, e.g. under Slurm or taskset)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _lower_priority() -> None:
    """Give the calling thread a lower CPU priority (nice 10; Linux: a thread's id is a process id here)."""
    with contextlib.suppress(AttributeError, OSError):  # elsewhere, or not permitted: run as is
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)


# -- stages: each with its inputs and outputs explicit, composed by Builder.build_shards -------------------------------


def cut_windows(shards: list[ShardRun], size: int) -> list[Window]:
    """Each shard's inputs, in order, cut into windows of ``size`` consecutive inputs (a shard's last may be short)."""
    return [Window(s, s.items[lo : lo + size], lo + size >= len(s.items))
            for s in shards for lo in range(0, len(s.items), size)]  # fmt: skip


def _attempt(prepare: Callable[[SourceItem], Prepared], item: SourceItem) -> Prepared | SkipSample:
    try:
        return prepare(item)
    except SkipSample as e:
        return e


class Prefetch:
    """read → decode → align, ahead of the models: iterating yields ``windows`` in order, each with its ``results``
    (a :class:`Prepared`, or the :class:`SkipSample` that stopped that input) and its ``batches``, while up to
    ``lookahead`` more windows are prepared by ``prepare`` in ``pool`` and cut into batches by ``cut`` in ``feeder``.
    The wait for a window is added to its shard's ``wait_input`` timing."""

    def __init__(
        self,
        windows: list[Window],
        prepare: Callable[[SourceItem], Prepared],
        cut: Callable[[list[Prepared]], list[Batch]],
        pool: ThreadPoolExecutor,
        feeder: ThreadPoolExecutor,
        lookahead: int,
    ) -> None:
        self.windows, self.prepare, self.cut = windows, prepare, cut
        self.pool, self.feeder, self.lookahead = pool, feeder, lookahead
        self._reads: dict[int, list[Future]] = {}  # window -> its read/decode/align tasks, while in flight
        self._fed: deque[Future] = deque()  # windows being fed, in order
        self._reading: list[ShardRun] = []  # shards with reads in flight, in order

    def _submit(self, window: Window, w: int) -> None:
        shard = window.shard
        if not self._reading or shard is not self._reading[-1]:  # a shard's first window
            self._reading.append(shard)
            # a streamed dataset keeps exactly the rows of the shards being read as they pass
            want([item for s in self._reading for item in s.items])
            shard.started = time.perf_counter()
        self._reads[w] = [self.pool.submit(shard.timed, "read_decode_align", _attempt, self.prepare, item)
                          for item in window.items]  # fmt: skip
        self._fed.append(self.feeder.submit(self._feed, window, self._reads[w]))

    def _feed(self, window: Window, reads: list[Future]) -> Window:
        """Feeder thread: a window's prepared inputs, cut into stacked batches."""
        window.results = [f.result() for f in reads]
        window.batches = self.cut([r for r in window.results if isinstance(r, Prepared)])
        return window

    def __iter__(self) -> Iterator[Window]:
        submitted = 0
        for w in range(len(self.windows)):
            while submitted < min(len(self.windows), w + 1 + self.lookahead):
                self._submit(self.windows[submitted], submitted)
                submitted += 1
            t0 = time.perf_counter()
            window = self._fed.popleft().result()
            del self._reads[w]
            if window.last:  # every read of this shard is done
                self._reading.remove(window.shard)
            window.shard.timings["wait_input"] += time.perf_counter() - t0
            yield window

    def cancel(self) -> None:
        """Cancel what has not started (the build is stopping)."""
        for f in [*self._fed, *(t for tasks in self._reads.values() for t in tasks)]:
            f.cancel()


def stack_batches(prepared: list[Prepared], batch_size: int, pin_memory: bool) -> list[Batch]:
    """Same-size images batched in input order of their first member (what decides a batch's members, and so its
    floating-point results), their pixels stacked for the device: pinned memory for a GPU copies without waiting."""
    by_size: dict[tuple[int, ...], list[Prepared]] = {}
    for p in prepared:
        by_size.setdefault(p.aligned.pixels.shape, []).append(p)
    out = []
    for group in by_size.values():
        for b in range(0, len(group), batch_size):
            items = group[b : b + batch_size]
            pixels = torch.empty((len(items), *items[0].aligned.pixels.shape), dtype=torch.uint8,
                                 pin_memory=pin_memory)  # fmt: skip
            np.stack([p.aligned.pixels for p in items], out=pixels.numpy())
            out.append(Batch(items, pixels))
    return out


def run_generator(gen: Generator, name: str, items: list[Prepared], x: torch.Tensor, seed: int) -> None:
    """``gen`` on ``x`` (float32 (N, 3, H, W) in [0, 1], on the device), each item's fake stored as
    ``item.fakes[name]`` (uint8 (H, W, 3)) with the generator's per-sample record, if any. On a GPU the fakes reach
    the host without waiting: ``item.wait_for_fakes()`` waits."""
    seeds = [sample_seed(seed, p.item.key, name) for p in items]
    y = gen.generate(x, seeds)
    if y.shape != x.shape:
        raise RuntimeError(f"generator returned {tuple(y.shape)} for input {tuple(x.shape)}")
    # quantise where the output lives (on the GPU if any), in float32 whatever the model's dtype
    with torch.inference_mode():
        fakes = y.float().mul(255).round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
    copied = None
    if fakes.device.type == "cuda":  # one copy back per batch, into pinned memory, without waiting for it:
        host = torch.empty(fakes.shape, dtype=torch.uint8, pin_memory=True)  # the encoders wait instead
        host.copy_(fakes, non_blocking=True)
        copied = torch.cuda.current_stream(fakes.device).record_event()
        fakes = host
    for p, fake in zip(items, fakes.cpu().numpy(), strict=True):
        p.fakes[name] = fake
        if copied is not None:
            p.copies.append(copied)
    records = gen.sample_records()
    for p, record in zip(items, records, strict=True) if records else ():
        p.records[name] = record


def find_culprits(name: str, positions: list[int], run_one: Callable[[int], None]) -> dict[int, SkipSample]:
    """After generator ``name`` failed on a batch: ``run_one`` on each position alone, to find the input(s) at
    fault. Returns each failing position's reason; running out of memory is no input's fault and propagates."""
    failures: dict[int, SkipSample] = {}
    for i in positions:
        try:
            run_one(i)
        except torch.OutOfMemoryError:
            raise
        except Exception as e:
            failures[i] = SkipSample("generation_failed", f"{name}: {type(e).__name__}: {e}")
    return failures


def generate_window(
    window: Window,
    generate: Callable[[Batch, Counter], dict[int, SkipSample]],
    encode: Callable[[Window, Prepared], None],
) -> None:
    """The models' stage for one window: each batch through ``generate`` (which returns its failures by position),
    each sample that came through handed to ``encode`` as soon as its batch is done. Every input left out, at
    decoding or by a generator, is recorded in its shard with its reason."""
    shard = window.shard
    for item, r in zip(window.items, window.results, strict=True):
        if isinstance(r, SkipSample):
            shard.skip(item, r)
    for batch in window.batches:
        failures = generate(batch, shard.timings)
        batch.pixels = None  # the stacked copy is no longer needed (each item keeps its own)
        for i, p in enumerate(batch.items):
            if i in failures:
                p.error = failures[i]
                shard.skip(p.item, p.error)
            else:
                encode(window, p)


class WriteBehind:
    """encode → write, behind the models. :meth:`encode` encodes a sample with ``encode`` in ``pool``; :meth:`put`
    hands a window to the ``writer`` thread, which writes its samples into its shard's tar in input order, and
    blocks while ``behind`` windows already wait there. A shard's last window ends with ``finish(shard)``, which
    commits the tar and returns the stats, passed to ``done``."""

    def __init__(
        self,
        out: Path,
        encode: Callable[[Prepared], dict],
        finish: Callable[[ShardRun], dict],
        pool: ThreadPoolExecutor,
        writer: ThreadPoolExecutor,
        behind: int,
        done: Callable[[dict], None] | None = None,
    ) -> None:
        self.out, self._encode, self.finish, self.done = out, encode, finish, done
        self.pool, self.writer, self.behind = pool, writer, behind
        self._pending: deque[tuple[Future, list[Future]]] = deque()  # (write, its encodes), in order
        self._failed = False

    def encode(self, window: Window, p: Prepared) -> None:
        window.encoded[id(p)] = self.pool.submit(window.shard.timed, "encode", self._encode, p)

    def put(self, window: Window) -> None:
        in_order = [window.encoded[id(r)] for r in window.results if id(r) in window.encoded]
        t0 = time.perf_counter()
        while len(self._pending) >= self.behind:  # bounded: the models wait here if encoding falls behind
            self._collect()
        window.shard.timings["wait_encode_write"] += time.perf_counter() - t0
        self._pending.append((self.writer.submit(self._write, window.shard, in_order, window.last), in_order))

    def drain(self) -> None:
        """Wait until every window put is written."""
        while self._pending:
            self._collect()

    def cancel(self) -> None:
        """Cancel what has not started and let the writer stop (a cancelled encode ends its window)."""
        for _, encodes in self._pending:
            for f in encodes:
                f.cancel()
        for write, _ in self._pending:
            write.cancel() or wait([write])

    def _collect(self) -> None:
        stats = self._pending.popleft()[0].result()
        if stats is not None and self.done is not None:
            self.done(stats)

    def _write(self, shard: ShardRun, encoded: list[Future], last: bool) -> dict | None:
        """Writer thread: a window's samples into its shard's tar; a shard's last window finishes it (stats last:
        they mark it done). Returns the stats then."""
        if self._failed:  # windows queued behind a failed one are not written: the build is stopping
            raise RuntimeError("not written: an earlier window's write failed")
        t0 = time.perf_counter()
        try:
            if shard.writer is None:
                shard.writer = ShardWriter(self.out, shard.index)
            for f in encoded:
                shard.writer.write(f.result())
            with shard.lock:
                shard.timings["writer.wait_encode_write"] += time.perf_counter() - t0
            return self.finish(shard) if last else None
        except BaseException:
            self._failed = True
            raise


def finish_shard(shard: ShardRun, out: Path, header: dict) -> dict:
    """Commit a shard's tar and write its stats (``header``: the build's part of them), last, which marks it done.
    A shard with no sample written gets stats but no tar and no file (see :meth:`Builder.run`)."""
    writer = shard.writer
    assert writer is not None
    if writer.count == 0:  # nothing to write: no empty tar, and no stats, so the shard is not done
        writer.abort()
    else:
        nbytes, sha = writer.commit()
    with shard.lock:
        timings = {k: round(v, 4) for k, v in sorted(shard.timings.items())}
    stats = {
        "shard": shard.index,
        "tar": tar_path(out, shard.index).name,
        "inputs": len(shard.items),
        "written": writer.count,
        "failed": dict(sorted(Counter(entry["reason"] for _, entry in shard.skipped).items())),
        "skipped": [entry for _, entry in sorted(shard.skipped, key=lambda e: e[0])],
        "timings": timings | {"total": round(time.perf_counter() - shard.started, 4)},
        **header,
    }
    if writer.count:
        stats |= {"bytes": nbytes, "sha256": sha, "encoding": ",".join(sorted(writer.encodings))}
        atomic_write_json(stats_path(out, shard.index), stats)  # last: this marks the shard done
    return stats


class Builder:
    """Runs one rank's share of a build. Models load lazily: a finished build re-runs without loading any.

    ``generators``, if given, are already-made generators for ``config.gen`` (in order, on the config's device and
    precision): a caller that builds several times with the same models (a benchmark, a notebook) loads them once."""

    def __init__(
        self,
        config: BuildConfig,
        *,
        progress: bool = True,
        command: str | None = None,
        generators: list[Generator] | None = None,
    ) -> None:
        if not config.out:
            raise SefError("no output folder: give --out DIR")
        if not config.sources:
            raise SefError("no source: name at least one folder, file, tar or dataset to build from")
        self.config = config
        self.specs = config.specs()
        self.policy = EncodingPolicy.parse(config.format)
        self.rank, self.world = resolve_rank_world(config.rank, config.world)
        self.out = Path(config.out)
        self.device = resolve_device(config.device)
        self.dtype = resolve_dtype(config.dtype, self.device)
        self.batch_size = config.batch_size or default_batch_size(self.device)
        self.notes: list[str] = []
        # torch.compile pays on a GPU, where eager kernels launch one by one and small ones leave it idle; on a CPU
        # it compiled TAEF2 for a minute and then ran it no faster (2 cores, measured), so there it is left off
        self.compile = config.compile and self.device.type == "cuda"
        if config.compile and not self.compile:
            self.notes.append(f"--compile is ignored on {self.device.type} (compiling takes minutes there and did not "
                              "pay); it applies on CUDA GPUs")  # fmt: skip
        self.runtime = Runtime(
            self.device, self.dtype, compile="inductor" if self.compile else None, channels_last=config.channels_last
        )
        self.settings = {"config": config.output_dict(), "runtime": runtime_settings(
            self.batch_size, self.device, self.dtype, compile=self.compile,
            channels_last=config.channels_last)}  # fmt: skip
        self.recipe_hash = settings_hash(self.settings["config"])  # what is built
        self.config_hash = settings_hash(self.settings)  # what is built and everything that decides its bytes
        self.progress = progress
        self.command = command  # the command line, for the manifest's provenance (None: a library call)
        if generators is not None:
            names = [g.name for g in generators]
            if names != [s.name for s in self.specs] or any(g.runtime != self.runtime for g in generators):
                raise SefError(f"the generators given ({', '.join(names)}) are not those of --gen on this runtime")
        self._given = generators
        self._generators: list[tuple[str, Generator]] | None = None
        self._infos: dict[str, dict] = {}
        self._plan_sha256: str | None = None  # set by plan(); shards built by build_shards alone record none
        self.multiple = 1
        # decoding (Pillow) and encoding (libdeflate/libjpeg) release the GIL: one pool, a thread per core, does both
        # beside the models; the feeder stacks batches, the writer writes tars, each in a thread of its own so that
        # neither waits in (nor blocks) the pool. A GPU's thread keeps a core of its own to launch kernels
        cores = available_cores()
        self.workers = config.workers or min(16, max(1, cores - 1) if self.device.type == "cuda" else cores)
        # On a CPU the models' threads use every core: a decode that takes a core from one of them stalls each of
        # the model's parallel regions until it ends, so there the I/O threads run at a lower priority and take the
        # cores the models leave (builds ran 1.3x faster so, median of 8 alternated pairs on 2 busy cores)
        lower = _lower_priority if self.device.type == "cpu" else None
        self._pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="sefdata-io", initializer=lower)
        self._feeder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sefdata-feed")
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sefdata-write")

    # -- setup ------------------------------------------------------------------------------------------------
    def _check_out(self) -> None:
        try:
            self.out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise SefError(f"cannot create output folder {str(self.out)!r}: {e.strerror}") from None
        self._check_previous()

    def _check_previous(self) -> None:
        """Stop unless what ``out`` already holds (build.json, shards' stats) was made by this build."""
        previous = self.out / BUILD_FILE
        if previous.is_file():
            self._check_settings(json.loads(previous.read_text()), str(previous.name))
        for done in sorted(self.out.glob("shard-*.stats.json"))[:1]:
            self._check_settings(json.loads(done.read_text()), done.name)

    def _check_settings(self, other: dict, where: str) -> None:
        """Stop unless ``other`` (a build.json or a shard's stats) was made by this build with these settings;
        runtime settings may differ with ``allow_mixed``."""
        if other.get("config_hash") == self.config_hash:
            return
        if "settings" not in other:  # written before settings were recorded: nothing to compare but the hash
            raise SefError(
                f"{str(self.out)!r} holds shards of a different build ({where}: config {other.get('config_hash')}, "
                f"this one {self.config_hash}); use another --out, or delete the old shards to start over"
            )
        theirs = other["settings"]
        changed = differences(theirs["config"], self.settings["config"])
        if changed:
            raise SefError(
                f"{str(self.out)!r} holds shards of a different build ({where}; {'; '.join(changed)}); use "
                "another --out, or delete the old shards to start over"
            )
        if not self.config.allow_mixed:
            changed = differences(theirs["runtime"], self.settings["runtime"])
            on_threads = any(c.startswith("torch_threads:") for c in changed)
            hint = " (torch's CPU threads follow OMP_NUM_THREADS)" if on_threads else ""
            raise SefError(
                f"{str(self.out)!r} holds shards made with other settings ({where}; {'; '.join(changed)}), so "
                f"this run's samples would not be byte-identical to theirs; resume with the same settings{hint}, or "
                "add --allow-mixed to go on and record each shard's settings in manifest.json"
            )

    def generators(self) -> list[tuple[str, Generator]]:
        if self._generators is None:
            if self.device.type == "cuda":
                torch.cuda.set_device(self.device)  # pinned copies, streams and events are this GPU's
            made = self._given or [create_generator(s, self.runtime) for s in self.specs]
            self._generators = [(s.field, g) for s, g in zip(self.specs, made, strict=True)]
            # once per build: model_info hashes the weight files, which per sample would cost more than encoding.
            # Recorded as published (model folders and weight files by name, sefcore.privacy): the stats, the
            # manifest and every sample record name no local path; build.json keeps the config as given.
            self._infos = {name: public_json(gen.info()) for name, gen in self._generators}
            self.multiple = common_multiple([g.multiple for _, g in self._generators])
            if self.config.crop is not None and self.config.crop % self.multiple:
                raise SefError(f"--crop {self.config.crop} must be a multiple of {self.multiple} for these generators")
        return self._generators

    # -- stages -----------------------------------------------------------------------------------------------
    def prepare(self, item: SourceItem) -> Prepared:
        """read → decode → align → choose encoding; raises SkipSample."""
        data = read_item(item)
        decoded = decode(data, max_pixels=self.config.max_pixels, max_side=self.config.max_side)
        aligned = align(
            decoded.image, multiple=self.multiple, max_side=self.config.max_side, crop=self.config.crop,
            min_side=self.config.min_side, full_size=decoded.full_size,
        )  # fmt: skip
        decoded.image = None  # keep one copy in memory: the aligned one
        return Prepared(item, hashlib.sha256(data).hexdigest(), decoded, aligned, encoding_for(self.policy, decoded))

    def generate(self, batch: Batch, timings: Counter) -> dict[int, SkipSample]:
        """Run every generator on a batch, filling its items' ``fakes``. Returns failures by position: a generator
        that fails on a batch is run on each of its images alone to find the culprits, which the next generators
        skip."""
        failures: dict[int, SkipSample] = {}
        start = time.perf_counter()
        # uint8 crosses to the device (a quarter of float32's bytes) and becomes float32 in [0, 1] there, once for
        # every generator (they read it, never write it)
        x = batch.pixels.to(self.device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255)
        timings["to_device"] += time.perf_counter() - start
        seed, items = self.config.seed, batch.items
        for name, gen in self.generators():
            todo = [i for i in range(len(items)) if i not in failures]
            if not todo:
                break
            start = time.perf_counter()
            try:
                run_generator(gen, name, [items[i] for i in todo], x if len(todo) == len(items) else x[todo], seed)
            except torch.OutOfMemoryError:
                raise SefError(
                    f"out of memory in generator {name!r} at batch size {len(todo)} of "
                    f"{x.shape[-1]}x{x.shape[-2]} images; lower --batch-size (shards already written used this one: "
                    "add --allow-mixed, or use a new --out), use --dtype fp16/bf16, --max-side, or a smaller sr tile"
                ) from None
            except Exception:
                failures |= find_culprits(
                    name, todo, lambda i, gen=gen, name=name: run_generator(gen, name, [items[i]], x[i : i + 1], seed)
                )
            timings[f"generate.{name}"] += time.perf_counter() - start
        return failures

    def sample(self, p: Prepared) -> dict:
        """Encode a prepared sample into its shard fields."""
        p.wait_for_fakes()
        ext = p.encoding.ext
        fields = {f"real.{ext}": encode(p.aligned.pixels, p.encoding)}
        gens = {}
        for name, gen in self.generators():
            data = encode(p.fakes[name], p.encoding)
            fields[f"{name}.{ext}"] = data
            gens[name] = {
                "generator": gen.name,
                "seed": sample_seed(self.config.seed, p.item.key, name),
                "params": self._infos[name]["params"],
                "sha256": hashlib.sha256(data).hexdigest(),
                "psnr_db": round(psnr(p.fakes[name], p.aligned.pixels), 3),
                **p.records.get(name, {}),
            }
        h, w = p.aligned.pixels.shape[:2]
        # One schema for every sample: the same keys with the same types and no nulls, whatever the source, so that
        # `datasets` (which infers the schema from a shard's first samples) loads any shard (README, "sample record")
        meta = {
            "key": p.item.key,
            "source": p.item.source,
            "source_sha256": p.source_sha256,
            "source_format": p.decoded.format,
            "source_mode": p.decoded.mode,
            "source_size": list(p.decoded.size),
            "jpeg": p.decoded.jpeg.describe() if p.decoded.jpeg else dict(NOT_A_JPEG),
            "conversions": ",".join(p.decoded.conversions),
            "upright_size": list(p.aligned.upright_size),
            "resized": p.aligned.resized_from is not None,
            "crop_box": list(p.aligned.crop_box),
            "size": [w, h],
            "encoding": p.encoding.describe(),
            "generators": gens,
        }
        fields["json"] = json.dumps(meta, sort_keys=True).encode()
        return {"__key__": p.item.key, **fields}

    # -- the pipeline -----------------------------------------------------------------------------------------
    def _stats_header(self) -> dict:
        """What every shard's stats record of this build and run (the rest is the shard's own)."""
        gens = self.generators()
        return {
            "fields": ["real", *(n for n, _ in gens)],
            "generators": {n: self._infos[n] for n, _ in gens},
            "rank": self.rank,
            "world": self.world,
            "host": socket.gethostname(),
            "config_hash": self.config_hash,
            "settings": self.settings,
            "allow_mixed": self.config.allow_mixed,
            "plan_sha256": self._plan_sha256,
        }

    def build_shards(self, plans: list, bar: tqdm | None = None, done: Callable[[dict], None] | None = None) -> None:
        """Build ``plans``' shards through one pipeline (see the module docstring): the models run in this thread,
        reading LOOKAHEAD windows ahead and writing up to WRITE_BEHIND windows behind, across shard boundaries, so
        a shard's start and end cost no idle model time. ``done`` gets each shard's stats, in order, once its stats
        file is written (a shard whose every input was skipped gets stats, but no file: see :meth:`run`)."""
        self.generators()  # load the models before reading anything
        shards = [ShardRun(p.index, p.items) for p in plans]
        cut = partial(stack_batches, batch_size=self.batch_size, pin_memory=self.device.type == "cuda")
        inputs = Prefetch(cut_windows(shards, 4 * self.batch_size), self.prepare, cut, self._pool,
                          self._feeder, LOOKAHEAD)  # fmt: skip
        finish = partial(finish_shard, out=self.out, header=self._stats_header())
        output = WriteBehind(self.out, self.sample, finish, self._pool, self._writer, WRITE_BEHIND, done)
        try:
            for window in inputs:
                generate_window(window, self.generate, output.encode)
                output.put(window)
                if bar is not None:
                    bar.update(len(window.items))
            output.drain()
        except BaseException:
            inputs.cancel()
            output.cancel()
            for shard in shards:
                if shard.writer is not None:
                    shard.writer.abort()  # a committed shard is left as it is
            raise

    def plan(self) -> tuple[list[ShardPlan], list[ShardPlan], dict[int, dict]]:
        """List the sources and cut the shards (no image is read): all shards, this rank's, and the stats of those
        of them already done, each checked to belong to this build and this listing of the sources."""
        items = iter_sources(self.config.sources, image_field=self.config.image_field, split=self.config.split)
        if self.config.limit is not None:
            items = islice(items, self.config.limit)
        plans = plan_shards(items, self.config.shard_size, by_encoding=self.policy.kind == "match")
        if not plans:
            raise SefError(f"no input images found in {', '.join(self.config.sources)}")
        self._plan_sha256 = plan_sha256(plans)
        mine = [p for p in plans if p.index % self.world == self.rank]
        done = {}
        for plan in mine:
            if is_done(self.out, plan.index):
                stats = read_stats(self.out, plan.index)
                self._check_settings(stats, stats_path(self.out, plan.index).name)
                if stats.get("plan_sha256", self._plan_sha256) != self._plan_sha256:  # stats before 2026-12-05: none
                    raise SefError(
                        f"the sources list other files than when shard {plan.index} of {self.out} was built (files "
                        "added, removed or renamed since): a resume must see the same inputs, or it would mix two "
                        "listings. Restore the sources, or build into a new --out"
                    )
                done[plan.index] = stats
        return plans, mine, done

    def dry_run(self) -> DryRun:
        """What :meth:`run` would do, without loading a model, reading an image or writing anything."""
        self._check_previous()
        plans, mine, done = self.plan()
        return DryRun(
            out=self.out, inputs=sum(len(p.items) for p in plans),
            groups={g: sum(len(p.items) for p in plans if p.group == g) for g in dict.fromkeys(p.group for p in plans)},
            num_shards=len(plans), rank=self.rank, world=self.world, mine=[p.index for p in mine], done=sorted(done),
        )  # fmt: skip

    def run(self) -> BuildSummary:
        self._check_out()
        started = time.perf_counter()
        plans, mine, done_stats = self.plan()
        built, already, inputs, written, failed, skipped, empty = [], len(done_stats), 0, 0, Counter(), [], []
        written_before = sum(stats["written"] for stats in done_stats.values())  # what earlier runs finished here
        todo = [p for p in mine if p.index not in done_stats]
        done_items = sum(len(p.items) for p in mine if p.index in done_stats)
        if todo:
            self.generators()  # load (or fetch) the models before the bar starts: a failure here is one line, alone
        bar = tqdm(
            total=sum(len(p.items) for p in mine), initial=done_items, unit="img",
            desc=f"build rank {self.rank}/{self.world}", disable=not self.progress, dynamic_ncols=True,
        )  # fmt: skip
        with bar:

            def done(stats: dict) -> None:
                nonlocal inputs, written, skipped
                inputs += stats["inputs"]
                written += stats["written"]
                failed.update(stats["failed"])
                skipped += stats["skipped"]
                built.append(stats["shard"])
                if not stats["written"]:
                    empty.append(stats)
                bar.set_postfix(shard=stats["shard"], written=written, skipped=sum(failed.values()))

            if todo:
                self.build_shards(todo, bar, done)
        if empty and written == 0 and written_before == 0:
            reasons = ", ".join(f"{k}: {v}" for k, v in sorted(failed.items()))
            first = ", ".join(f"{e['source']} ({e['reason']})" for e in skipped[:3])
            raise NothingWritten(
                failed,
                f"every input was skipped ({reasons}; e.g. {first}), so no shard was written and the build is not "
                "finished: fix or remove those inputs, or name other sources",
            )
        for stats in empty:  # a shard whose inputs were all skipped, in a build that has samples: done, no tar
            atomic_write_json(stats_path(self.out, stats["shard"]), stats)
        self._write_build_file(plans)
        manifest = None
        if self.rank == 0 and all(is_done(self.out, p.index) for p in plans):
            write_manifest(self.out, command=self.command)
            manifest = self.out / "manifest.json"
        return BuildSummary(
            out=self.out, num_shards=len(plans), built=built, already_done=already, inputs=inputs,
            written=written, failed=failed, seconds=time.perf_counter() - started, manifest=manifest, skipped=skipped,
            notes=self.notes,
        )  # fmt: skip

    def close(self) -> None:
        for pool in (self._pool, self._feeder, self._writer):
            pool.shutdown(wait=True, cancel_futures=True)

    def _write_build_file(self, plans: list) -> None:
        """``build.json``, a local file (never published): the config as given, with its paths, the plan and the
        command line (``sefdata manifest`` puts it in the manifest's provenance, by names)."""
        recipe = None
        if self.config.recipe:
            path = Path(self.config.recipe)
            recipe = {"path": str(path), "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
        atomic_write_json(
            self.out / BUILD_FILE,
            {
                "config": self.config.output_dict(),
                "config_hash": self.config_hash,
                "settings": self.settings,
                "recipe": recipe,
                "fields": ["real", *(s.field for s in self.specs)],
                "num_shards": len(plans),
                "shard_size": self.config.shard_size,
                "command": self.command,
            },
        )


def build(
    config: BuildConfig,
    *,
    progress: bool = True,
    command: str | None = None,
    generators: list[Generator] | None = None,
) -> BuildSummary:
    """Build (or resume) this rank's shards of ``config``; see :class:`Builder`. ``command``: the command line,
    recorded in the manifest's provenance."""
    builder = Builder(config, progress=progress, command=command, generators=generators)
    try:
        return builder.run()
    finally:
        builder.close()


def dry_run(config: BuildConfig) -> DryRun:
    """What :func:`build` would do with ``config`` on this rank: the sources listed and cut into shards, the done ones
    checked against this build and this listing; no model is loaded, no image read, nothing written."""
    builder = Builder(config, progress=False)
    try:
        return builder.dry_run()
    finally:
        builder.close()


__all__ = [
    "Batch",
    "BuildSummary",
    "Builder",
    "DryRun",
    "NothingWritten",
    "Prefetch",
    "Prepared",
    "ShardRun",
    "Window",
    "WriteBehind",
    "available_cores",
    "build",
    "cut_windows",
    "dry_run",
    "find_culprits",
    "finish_shard",
    "generate_window",
    "run_generator",
    "stack_batches",
]
