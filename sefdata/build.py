"""``sefdata build``: real corpus → aligned shards.

Data flows through small stages, and a bad sample carries its reason to the stats instead of stopping the build::

    list sources (no image read) → plan shards → per shard of this rank: read → decode → align → generate (batched)
    → encode → write

Shard ``i`` (:mod:`sefdata.plan`) belongs to rank ``i % world``, which alone reads its inputs; a shard whose stats
file exists is done and skipped, so re-running the same command resumes, reading only the unfinished shards'
inputs (DESIGN.md §4). A shard records the hash of everything that decides its bytes (the config and the runtime
settings); a resume whose settings differ stops and names each difference, unless ``allow_mixed``.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import threading
import time
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
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
from sefdata.shards import ShardWriter, atomic_write_json, is_done, read_stats, stats_path, tar_path
from sefdata.sources import SourceItem, iter_sources, read_item, want


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

    @property
    def images_per_second(self) -> float:
        return self.inputs / self.seconds if self.seconds > 0 else 0.0


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB between two uint8 images (inf if identical)."""
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))


class Builder:
    """Runs one rank's share of a build. Models load lazily: a finished build re-runs without loading any."""

    def __init__(self, config: BuildConfig, *, progress: bool = True, command: str | None = None) -> None:
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
        self.settings = {"config": config.output_dict(), "runtime": runtime_settings(
            config.batch_size, self.device, self.dtype)}  # fmt: skip
        self.recipe_hash = settings_hash(self.settings["config"])  # what is built
        self.config_hash = settings_hash(self.settings)  # what is built and everything that decides its bytes
        self.progress = progress
        self.command = command  # the command line, for the manifest's provenance (None: a library call)
        self._generators: list[tuple[str, Generator]] | None = None
        self._infos: dict[str, dict] = {}
        self.multiple = 1
        # decoding (Pillow) and encoding (zlib/libjpeg) release the GIL: threads overlap them with the models
        workers = config.workers or min(16, os.cpu_count() or 1)
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sefdata-io")
        self._timing_lock = threading.Lock()
        self._worker_timings: Counter = Counter()

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
            runtime = Runtime(self.device, self.dtype)
            self._generators = [(s.field, create_generator(s, runtime)) for s in self.specs]
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
        decoded = decode(data, max_pixels=self.config.max_pixels)
        aligned = align(
            decoded.pixels, multiple=self.multiple, max_side=self.config.max_side, crop=self.config.crop,
            min_side=self.config.min_side,
        )  # fmt: skip
        decoded.pixels = aligned.pixels  # keep one copy in memory
        return Prepared(item, hashlib.sha256(data).hexdigest(), decoded, aligned, encoding_for(self.policy, decoded))

    def generate(self, batch: list[Prepared], timings: Counter) -> dict[int, SkipSample]:
        """Run every generator on a batch of same-size images, filling ``fakes``. Returns failures by position."""
        failures: dict[int, SkipSample] = {}
        for name, gen in self.generators():
            todo = [i for i in range(len(batch)) if i not in failures]
            if not todo:
                break
            start = time.perf_counter()
            try:
                self._run(gen, name, [batch[i] for i in todo])
            except torch.OutOfMemoryError:
                raise SefError(
                    f"out of memory in generator {name!r} at batch size {len(todo)} of "
                    f"{batch[0].aligned.pixels.shape[1]}x{batch[0].aligned.pixels.shape[0]} images; lower "
                    "--batch-size (shards already written used this one: add --allow-mixed, or use a new --out), "
                    "use --dtype fp16/bf16, --max-side, or a smaller sr tile"
                ) from None
            except Exception:
                for i in todo:  # find the culprit(s): one image at a time
                    try:
                        self._run(gen, name, [batch[i]])
                    except torch.OutOfMemoryError:
                        raise
                    except Exception as e:
                        failures[i] = SkipSample("generation_failed", f"{name}: {type(e).__name__}: {e}")
            timings[f"generate.{name}"] += time.perf_counter() - start
        return failures

    def _run(self, gen: Generator, name: str, batch: list[Prepared]) -> None:
        x = torch.from_numpy(np.stack([p.aligned.pixels for p in batch])).permute(0, 3, 1, 2).float().div_(255)
        seeds = [sample_seed(self.config.seed, p.item.key, name) for p in batch]
        y = gen.generate(x, seeds)
        if y.shape != x.shape:
            raise RuntimeError(f"generator returned {tuple(y.shape)} for input {tuple(x.shape)}")
        # quantise where the output lives (on the GPU if any), in float32 whatever the model's dtype
        with torch.inference_mode():
            fakes = y.float().mul(255).round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        for p, fake in zip(batch, fakes, strict=True):
            p.fakes[name] = fake
        records = gen.sample_records()
        for p, record in zip(batch, records, strict=True) if records else ():
            p.records[name] = record

    def sample(self, p: Prepared) -> dict:
        """Encode a prepared sample into its shard fields."""
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

    # -- shards -----------------------------------------------------------------------------------------------
    def _timed(self, name: str, fn, *args):
        """Run ``fn`` in a worker thread, adding its wall time to the shard's timings under ``name``."""
        t0 = time.perf_counter()
        try:
            return fn(*args)
        finally:
            with self._timing_lock:
                self._worker_timings[name] += time.perf_counter() - t0

    def _try_prepare(self, item: SourceItem) -> Prepared | SkipSample:
        try:
            return self.prepare(item)
        except SkipSample as e:
            return e

    def build_shard(self, index: int, items: list[SourceItem], bar: tqdm | None = None) -> dict:
        """Build one shard. Three things overlap: worker threads decode window i+1 and encode window i-1 while the
        models run on window i in this thread. Samples are written in input order whatever finishes first."""
        started = time.perf_counter()
        timings: Counter = Counter()
        self._worker_timings = Counter()
        skipped: list[tuple[int, dict]] = []
        position = {id(item): i for i, item in enumerate(items)}
        gens = self.generators()
        writer = ShardWriter(self.out, index)
        size = self.config.batch_size * 4  # decode/generate/encode in windows to bound memory
        windows = [items[lo : lo + size] for lo in range(0, len(items), size)]

        def skip(item: SourceItem, err: SkipSample) -> None:
            entry = {"key": item.key, "source": item.source, "reason": err.reason, "detail": err.detail}
            skipped.append((position[id(item)], entry))

        def submit_prepare(chunk: list[SourceItem]) -> list[Future]:
            return [self._pool.submit(self._timed, "read_decode_align", self._try_prepare, item) for item in chunk]

        def flush(pending: list[tuple[Prepared, Future | None]]) -> None:
            t0 = time.perf_counter()
            for p, encoded in pending:
                if encoded is None:
                    skip(p.item, p.error)
                else:
                    writer.write(encoded.result())
            timings["wait_encode_write"] += time.perf_counter() - t0

        pending_prepare = submit_prepare(windows[0]) if windows else []
        pending_write: list[tuple[Prepared, Future | None]] = []
        try:
            for w, chunk in enumerate(windows):
                t0 = time.perf_counter()
                results = [f.result() for f in pending_prepare]
                timings["wait_input"] += time.perf_counter() - t0
                if w + 1 < len(windows):
                    pending_prepare = submit_prepare(windows[w + 1])
                prepared = [r for r in results if isinstance(r, Prepared)]
                for item, r in zip(chunk, results, strict=True):
                    if isinstance(r, SkipSample):
                        skip(item, r)
                by_size: dict[tuple[int, ...], list[Prepared]] = {}
                for p in prepared:
                    by_size.setdefault(p.aligned.pixels.shape, []).append(p)
                for group in by_size.values():
                    for b in range(0, len(group), self.config.batch_size):
                        batch = group[b : b + self.config.batch_size]
                        for i, err in self.generate(batch, timings).items():
                            batch[i].error = err
                flush(pending_write)
                pending_write = [
                    (p, None if p.error else self._pool.submit(self._timed, "encode", self.sample, p)) for p in prepared
                ]
                if bar is not None:
                    bar.update(len(chunk))
            flush(pending_write)
            if writer.count == 0:  # nothing to write: no empty tar, and no stats, so the shard is not done
                writer.abort()
            else:
                nbytes, sha = writer.commit()
        except BaseException:
            for f in pending_prepare:
                f.cancel()
            writer.abort()
            raise
        failed = Counter(entry["reason"] for _, entry in skipped)
        timings.update({f"worker.{k}": v for k, v in self._worker_timings.items()})
        stats = {
            "shard": index,
            "tar": tar_path(self.out, index).name,
            "inputs": len(items),
            "written": writer.count,
            "failed": dict(sorted(failed.items())),
            "skipped": [entry for _, entry in sorted(skipped, key=lambda e: e[0])],
            "fields": ["real", *(n for n, _ in gens)],
            "generators": {n: self._infos[n] for n, _ in gens},
            "timings": {k: round(v, 4) for k, v in sorted(timings.items())}
            | {"total": round(time.perf_counter() - started, 4)},
            "rank": self.rank,
            "world": self.world,
            "host": socket.gethostname(),
            "config_hash": self.config_hash,
            "settings": self.settings,
            "allow_mixed": self.config.allow_mixed,
        }
        if writer.count:
            stats |= {"bytes": nbytes, "sha256": sha, "encoding": ",".join(sorted(writer.encodings))}
            atomic_write_json(stats_path(self.out, index), stats)  # last: this marks the shard done
        return stats

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
        with bar:
            for plan in mine:
                if is_done(self.out, plan.index):
                    stats = read_stats(self.out, plan.index)
                    self._check_settings(stats, stats_path(self.out, plan.index).name)
                    already += 1
                    written_before += stats["written"]
                    bar.update(len(plan.items))
                    continue
                self.generators()  # load models before the first shard that needs them
                want(plan.items)  # a streamed dataset keeps exactly this shard's rows as they pass
                stats = self.build_shard(plan.index, plan.items, bar)
                inputs += stats["inputs"]
                written += stats["written"]
                failed.update(stats["failed"])
                skipped += stats["skipped"]
                built.append(plan.index)
                if not stats["written"]:
                    empty.append(stats)
                bar.set_postfix(shard=plan.index, written=written, skipped=sum(failed.values()))
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
        )  # fmt: skip

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

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


def build(config: BuildConfig, *, progress: bool = True, command: str | None = None) -> BuildSummary:
    """Build (or resume) this rank's shards of ``config``; see :class:`Builder`. ``command``: the command line,
    recorded in the manifest's provenance."""
    builder = Builder(config, progress=progress, command=command)
    try:
        return builder.run()
    finally:
        builder.close()


__all__ = ["BuildSummary", "Builder", "NothingWritten", "build", "psnr"]
