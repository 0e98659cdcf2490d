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
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from sefdata.align import Aligned, align, common_multiple
from sefdata.config import (
    BuildConfig,
    differences,
    resolve_device,
    resolve_dtype,
    resolve_rank_world,
    runtime_settings,
    settings_hash,
)
from sefdata.encode import Encoding, EncodingPolicy, encode, encoding_for
from sefdata.errors import SefError, SkipSample
from sefdata.generators import Generator, Runtime, create_generator, sample_seed
from sefdata.imageio import NOT_A_JPEG, DecodedImage, decode
from sefdata.manifest import BUILD_FILE, write_manifest
from sefdata.plan import plan_shards
from sefdata.privacy import public_json
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
class _Shard:
    """One shard on its way through the pipeline."""

    index: int
    items: list[SourceItem]
    started: float = 0.0
    timings: Counter = field(default_factory=Counter)
    skipped: list[tuple[int, dict]] = field(default_factory=list)  # (input position, entry)
    writer: ShardWriter | None = None
    position: dict[int, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.position = {id(item): i for i, item in enumerate(self.items)}

    def skip(self, item: SourceItem, err: SkipSample) -> None:
        entry = {"key": item.key, "source": item.source, "reason": err.reason, "detail": err.detail}
        self.skipped.append((self.position[id(item)], entry))


@dataclass(eq=False)
class _Window:
    """Up to ``4 x batch_size`` consecutive inputs of one shard, decoded and cut into batches."""

    shard: _Shard
    items: list[SourceItem]
    last: bool  # the shard's last window
    results: list[Prepared | SkipSample] = field(default_factory=list)
    batches: list[Batch] = field(default_factory=list)


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
            config.batch_size, self.device, self.dtype, compile=self.compile,
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
        self._timing_lock = threading.Lock()
        self._write_failed = False

    # -- setup ------------------------------------------------------------------------------------------------
    def _check_out(self) -> None:
        try:
            self.out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise SefError(f"cannot create output folder {str(self.out)!r}: {e.strerror}") from None
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
            raise SefError(
                f"{str(self.out)!r} holds shards made with other settings ({where}; {'; '.join(changed)}), so "
                "this run's samples would not be byte-identical to theirs; resume with the same settings, or add "
                "--allow-mixed to go on and record each shard's settings in manifest.json"
            )

    def generators(self) -> list[tuple[str, Generator]]:
        if self._generators is None:
            if self.device.type == "cuda":
                torch.cuda.set_device(self.device)  # pinned copies, streams and events are this GPU's
            made = self._given or [create_generator(s, self.runtime) for s in self.specs]
            self._generators = [(s.field, g) for s, g in zip(self.specs, made, strict=True)]
            # once per build: model_info hashes the weight files, which per sample would cost more than encoding.
            # Recorded as published (model folders and weight files by name, sefdata.privacy): the stats, the
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
            decoded.pixels, multiple=self.multiple, max_side=self.config.max_side, crop=self.config.crop,
            min_side=self.config.min_side, full_size=decoded.full_size,
        )  # fmt: skip
        decoded.pixels = aligned.pixels  # keep one copy in memory
        return Prepared(item, hashlib.sha256(data).hexdigest(), decoded, aligned, encoding_for(self.policy, decoded))

    def batches(self, prepared: list[Prepared]) -> list[Batch]:
        """Same-size images batched in input order of their first member (what decides a batch's members, and so
        its floating-point results), their pixels stacked for the device: pinned memory for a GPU copies without
        waiting."""
        by_size: dict[tuple[int, ...], list[Prepared]] = {}
        for p in prepared:
            by_size.setdefault(p.aligned.pixels.shape, []).append(p)
        out = []
        for group in by_size.values():
            for b in range(0, len(group), self.config.batch_size):
                items = group[b : b + self.config.batch_size]
                pixels = torch.empty((len(items), *items[0].aligned.pixels.shape), dtype=torch.uint8,
                                     pin_memory=self.device.type == "cuda")  # fmt: skip
                np.stack([p.aligned.pixels for p in items], out=pixels.numpy())
                out.append(Batch(items, pixels))
        return out

    def generate(self, batch: Batch, timings: Counter) -> dict[int, SkipSample]:
        """Run every generator on a batch, filling its items' ``fakes``. Returns failures by position."""
        failures: dict[int, SkipSample] = {}
        start = time.perf_counter()
        # uint8 crosses to the device (a quarter of float32's bytes) and becomes float32 in [0, 1] there, once for
        # every generator (they read it, never write it)
        x = batch.pixels.to(self.device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255)
        timings["to_device"] += time.perf_counter() - start
        for name, gen in self.generators():
            todo = [i for i in range(len(batch.items)) if i not in failures]
            if not todo:
                break
            start = time.perf_counter()
            try:
                self._run(gen, name, [batch.items[i] for i in todo], x if len(todo) == len(batch.items) else x[todo])
            except torch.OutOfMemoryError:
                raise SefError(
                    f"out of memory in generator {name!r} at batch size {len(todo)} of "
                    f"{x.shape[-1]}x{x.shape[-2]} images; lower --batch-size (shards already written used this one: "
                    "add --allow-mixed, or use a new --out), use --dtype fp16/bf16, --max-side, or a smaller sr tile"
                ) from None
            except Exception:
                for i in todo:  # find the culprit(s): one image at a time
                    try:
                        self._run(gen, name, [batch.items[i]], x[i : i + 1])
                    except torch.OutOfMemoryError:
                        raise
                    except Exception as e:
                        failures[i] = SkipSample("generation_failed", f"{name}: {type(e).__name__}: {e}")
            timings[f"generate.{name}"] += time.perf_counter() - start
        return failures

    def _run(self, gen: Generator, name: str, batch: list[Prepared], x: torch.Tensor) -> None:
        seeds = [sample_seed(self.config.seed, p.item.key, name) for p in batch]
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
        for p, fake in zip(batch, fakes.cpu().numpy(), strict=True):
            p.fakes[name] = fake
            if copied is not None:
                p.copies.append(copied)
        records = gen.sample_records()
        for p, record in zip(batch, records, strict=True) if records else ():
            p.records[name] = record

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
    def _timed(self, shard: _Shard, name: str, fn, *args):
        """Run ``fn`` in a pool thread, adding its wall time to the shard's timings under ``worker.NAME``."""
        t0 = time.perf_counter()
        try:
            return fn(*args)
        finally:
            with self._timing_lock:
                shard.timings[f"worker.{name}"] += time.perf_counter() - t0

    def _try_prepare(self, item: SourceItem) -> Prepared | SkipSample:
        try:
            return self.prepare(item)
        except SkipSample as e:
            return e

    def _feed(self, window: _Window, reads: list[Future]) -> _Window:
        """Feeder thread: a window's decoded inputs, cut into stacked batches."""
        window.results = [f.result() for f in reads]
        window.batches = self.batches([r for r in window.results if isinstance(r, Prepared)])
        return window

    def _write(self, shard: _Shard, encoded: list[Future], last: bool) -> dict | None:
        """Writer thread: a window's samples into its shard's tar, in input order; a shard's last window commits
        it and writes its stats (last: they mark it done). Returns the stats then."""
        if self._write_failed:  # windows queued behind a failed one are not written: the build is stopping
            raise RuntimeError("not written: an earlier window's write failed")
        t0 = time.perf_counter()
        try:
            if shard.writer is None:
                shard.writer = ShardWriter(self.out, shard.index)
            for f in encoded:
                shard.writer.write(f.result())
            with self._timing_lock:
                shard.timings["writer.wait_encode_write"] += time.perf_counter() - t0
            return self._finish(shard) if last else None
        except BaseException:
            self._write_failed = True
            raise

    def _finish(self, shard: _Shard) -> dict:
        writer = shard.writer
        assert writer is not None
        if writer.count == 0:  # nothing to write: no empty tar, and no stats, so the shard is not done
            writer.abort()
        else:
            nbytes, sha = writer.commit()
        with self._timing_lock:
            timings = {k: round(v, 4) for k, v in sorted(shard.timings.items())}
        gens = self.generators()
        stats = {
            "shard": shard.index,
            "tar": tar_path(self.out, shard.index).name,
            "inputs": len(shard.items),
            "written": writer.count,
            "failed": dict(sorted(Counter(entry["reason"] for _, entry in shard.skipped).items())),
            "skipped": [entry for _, entry in sorted(shard.skipped, key=lambda e: e[0])],
            "fields": ["real", *(n for n, _ in gens)],
            "generators": {n: self._infos[n] for n, _ in gens},
            "timings": timings | {"total": round(time.perf_counter() - shard.started, 4)},
            "rank": self.rank,
            "world": self.world,
            "host": socket.gethostname(),
            "config_hash": self.config_hash,
            "settings": self.settings,
            "allow_mixed": self.config.allow_mixed,
        }
        if writer.count:
            stats |= {"bytes": nbytes, "sha256": sha, "encoding": ",".join(sorted(writer.encodings))}
            atomic_write_json(stats_path(self.out, shard.index), stats)  # last: this marks the shard done
        return stats

    def build_shards(self, plans: list, bar: tqdm | None = None, done: Callable[[dict], None] | None = None) -> None:
        """Build ``plans``' shards through one pipeline (see the module docstring): the models run in this thread,
        reading LOOKAHEAD windows ahead and writing up to WRITE_BEHIND windows behind, across shard boundaries, so
        a shard's start and end cost no idle model time. ``done`` gets each shard's stats, in order, once its stats
        file is written (a shard whose every input was skipped gets stats, but no file: see :meth:`run`)."""
        self.generators()  # load the models before reading anything
        size = self.config.batch_size * 4
        shards = [_Shard(p.index, p.items) for p in plans]
        windows = [_Window(s, s.items[lo : lo + size], lo + size >= len(s.items))
                   for s in shards for lo in range(0, len(s.items), size)]  # fmt: skip
        reads: dict[int, list[Future]] = {}  # window -> its read/decode/align tasks, while in flight
        fed: deque[Future] = deque()  # windows being fed, in order
        written: deque[tuple[Future, list[Future]]] = deque()  # (write, its encodes), in order
        reading: list[_Shard] = []  # shards with reads in flight, in order

        def submit(w: int) -> None:
            window = windows[w]
            if not reading or window.shard is not reading[-1]:  # a shard's first window
                reading.append(window.shard)
                # a streamed dataset keeps exactly the rows of the shards being read as they pass
                want([item for shard in reading for item in shard.items])
                window.shard.started = time.perf_counter()
            reads[w] = [self._pool.submit(self._timed, window.shard, "read_decode_align", self._try_prepare, item)
                        for item in window.items]  # fmt: skip
            fed.append(self._feeder.submit(self._feed, window, reads[w]))

        def collect(write: Future) -> None:
            stats = write.result()
            if stats is not None and done is not None:
                done(stats)

        submitted = 0
        try:
            for w in range(len(windows)):
                while submitted < min(len(windows), w + 1 + LOOKAHEAD):
                    submit(submitted)
                    submitted += 1
                t0 = time.perf_counter()
                window = fed.popleft().result()
                del reads[w]
                shard = window.shard
                if window.last:  # every read of this shard is done
                    reading.remove(shard)
                shard.timings["wait_input"] += time.perf_counter() - t0
                for item, r in zip(window.items, window.results, strict=True):
                    if isinstance(r, SkipSample):
                        shard.skip(item, r)
                encodes: dict[int, Future] = {}
                for batch in window.batches:
                    failures = self.generate(batch, shard.timings)
                    batch.pixels = None  # the stacked copy is no longer needed (each item keeps its own)
                    for i, p in enumerate(batch.items):
                        if i in failures:
                            p.error = failures[i]
                            shard.skip(p.item, p.error)
                        else:  # encoded as soon as its batch is done, while the models go on
                            encodes[id(p)] = self._pool.submit(self._timed, shard, "encode", self.sample, p)
                in_order = [encodes[id(r)] for r in window.results if id(r) in encodes]
                t0 = time.perf_counter()
                while len(written) >= WRITE_BEHIND:  # bounded: the models wait here if encoding falls behind
                    collect(written.popleft()[0])
                shard.timings["wait_encode_write"] += time.perf_counter() - t0
                written.append((self._writer.submit(self._write, shard, in_order, window.last), in_order))
                if bar is not None:
                    bar.update(len(window.items))
            while written:
                collect(written.popleft()[0])
        except BaseException:
            for f in [*fed, *(t for tasks in reads.values() for t in tasks), *(f for _, fs in written for f in fs)]:
                f.cancel()
            for write, _ in written:  # let the writer stop (a cancelled encode ends its window) before aborting
                write.cancel() or wait([write])
            for shard in shards:
                if shard.writer is not None:
                    shard.writer.abort()  # a committed shard is left as it is
            raise

    def run(self) -> BuildSummary:
        self._check_out()
        started = time.perf_counter()
        items = iter_sources(self.config.sources, image_field=self.config.image_field, split=self.config.split)
        if self.config.limit is not None:
            items = islice(items, self.config.limit)
        plans = plan_shards(items, self.config.shard_size, by_encoding=self.policy.kind == "match")
        if not plans:
            raise SefError(f"no input images found in {', '.join(self.config.sources)}")
        mine = [p for p in plans if p.index % self.world == self.rank]
        built, already, inputs, written, failed, skipped, empty = [], 0, 0, 0, Counter(), [], []
        written_before = 0  # samples in this rank's shards that earlier runs finished
        bar = tqdm(
            total=sum(len(p.items) for p in mine), unit="img", desc=f"build rank {self.rank}/{self.world}",
            disable=not self.progress, dynamic_ncols=True,
        )  # fmt: skip
        todo = []
        with bar:
            for plan in mine:
                if is_done(self.out, plan.index):
                    stats = read_stats(self.out, plan.index)
                    self._check_settings(stats, stats_path(self.out, plan.index).name)
                    already += 1
                    written_before += stats["written"]
                    bar.update(len(plan.items))
                else:
                    todo.append(plan)

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


__all__ = ["Batch", "BuildSummary", "Builder", "NothingWritten", "available_cores", "build"]
