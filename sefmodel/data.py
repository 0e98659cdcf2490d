"""Streaming training data from sefdata shards (DESIGN.md §4): pairs of a real and one of its fakes, same augmentation.

Nothing is loaded into memory beyond a shuffle buffer of raw samples. Shards are read one at a time from local
paths, brace/glob patterns, build folders (their ``manifest.json``) or ``hf://`` / http(s) URLs, through the reader
beside the shard writer (:mod:`sefdata.shards`: :func:`resolve_shards`, :func:`iter_samples`).

**Splitting.** Training shards are split by rank (``shards[rank::world]``), then by data-loader worker
(``rank_shards[w::workers]``), so ranks and workers see disjoint data. A worker without a shard would starve its rank
and hang the others, so the trainer runs at most as many workers per rank as the rank has shards
(:func:`data_workers`); fewer shards than ranks is an error.

**Resampled shards and the data position.** Each worker draws shards *with replacement* from its own subset, for
ever, so every rank yields as many batches as asked and all ranks take the same number of steps. The stream is a
pure function of ``(seed, segment, rank, worker)``: the trainer starts a fresh stream at every checkpoint boundary
(``segment`` = the step it starts at) and, when resuming from a step inside a segment, skips the batches already
consumed *before* decoding them. Augmentation parameters come from a per-sample generator keyed by the sample's
position in the stream, so skipped samples need no decoding and a resumed run sees exactly the batches an
uninterrupted one would.

**Pixels.** Every image goes through the detector's :class:`~sefmodel.preprocess.ImageProcessor`, the one that
scores it later: training resamples with it, augments (:mod:`sefmodel.augment`) and pads/normalises with it;
validation calls it exactly as :meth:`SEFDetector.score` does.

**Batches.** Each worker yields whole batches (``DataLoader(batch_size=None)``), which makes the worker that produces
batch ``b`` simply ``b % workers``. A batch of ``P`` pairs is ``pixels`` (2P, 3, S, S) float32 normalised with the
backbone's mean/std (reals first, then their fakes in the same order), ``labels`` (2P,) float32 (0 real, 1 fake),
``domain`` (2P,) int64 (the fake's domain index; a real carries its partner's) and ``keys`` (sample keys, P).
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from sefdata.imageio import to_rgb
from sefdata.shards import ShardSet, field_key, iter_samples, resolve_shards, sample_fields

from .augment import AugmentConfig, AugmentParams, apply, sample_params
from .images import open_image_file
from .preprocess import ImageProcessor

DEFAULT_DOMAINS: dict[str, list[str]] = {"recon": ["vae", "ddim", "taesd"], "sr": ["sr"]}


# ---- domains and splits ---------------------------------------------------------------------------------------


def resolve_domains(
    domains: dict[str, list[str]], wanted: Sequence[str] | None, present: Sequence[str]
) -> dict[str, list[str]]:
    """Map each wanted domain to its fields that the shards hold; ``wanted=None`` takes every domain present.

    Raises ``ValueError`` naming the fields present when a wanted domain has none of its fields in the shards."""
    fakes = [f for f in present if f != "real"]
    if "real" not in present:
        raise ValueError(f"the shards have no 'real' field (fields present: {', '.join(present)})")
    names = list(domains) if wanted is None else list(wanted)
    out: dict[str, list[str]] = {}
    for name in names:
        if name not in domains:
            raise ValueError(f"unknown domain {name!r}; configured domains: {', '.join(domains)}")
        fields = [f for f in domains[name] if f in fakes]
        if fields:
            out[name] = fields
        elif wanted is not None:
            raise ValueError(
                f"domain {name!r} uses fields {domains[name]}, but the shards hold {', '.join(fakes) or 'no fakes'} "
                f"(besides 'real'); map the domain to its fields, e.g. --domain-fields {name}={','.join(fakes[:2])}"
            )
    if not out:
        raise ValueError(
            f"no configured domain matches the shards' fake fields ({', '.join(fakes)}); "
            f"configured: {domains}. Set --domain-fields NAME=FIELD,..."
        )
    return out


def data_workers(num_shards: int, world: int, workers: int) -> int:
    """The data workers each rank can feed: ``workers``, lowered to the shards per rank (never below one when
    ``workers`` asks for processes; 0 stays 0). Raises ``ValueError`` when there are fewer shards than ranks."""
    check_split(num_shards, world, 0)
    return min(workers, num_shards // world)


def check_split(num_shards: int, world: int, workers: int) -> None:
    """Every (rank, worker) needs at least one shard of its own, or it would starve."""
    need = world * max(1, workers)
    if num_shards < need:
        fix = "Lower --num-workers, or rebuild" if workers > 1 else "Use fewer ranks, or rebuild"
        raise ValueError(
            f"{num_shards} training shard(s) cannot feed {world} rank(s) x {max(1, workers)} data worker(s) "
            f"= {need} readers; each needs a shard of its own. {fix} with a smaller --shard-size so there are "
            "more shards"
        )


# ---- decoding -------------------------------------------------------------------------------------------------


def decode_image(data: bytes) -> Image.Image:
    return to_rgb(open_image_file(io.BytesIO(data)))  # the build's rule; shards it wrote are RGB already


# ---- streams --------------------------------------------------------------------------------------------------


def _mix(*values: int) -> list[int]:
    return [int(v) & 0xFFFFFFFF for v in values]


class PairStream(IterableDataset):
    """Infinite batches of (real, fake) pairs for one rank; see the module docstring for splitting and resuming.

    Args:
        urls: all training shards (every rank gets the same list; the split happens here).
        domains: domain name -> its fake fields, e.g. ``{"recon": ["vae", "taesd"]}``. Each pair's fake is drawn
            by picking a domain uniformly, then one of its fields uniformly.
        pairs: pairs per batch (the batch holds 2 * pairs images).
        processor: the detector's image processor (crop side, normalisation, resize and small-image rules).
        augment: the paired augmentation.
        seed, segment: the stream is a function of (seed, segment, rank, worker).
        rank, world: this process's place among the training processes.
        skip_batches: batches of this rank's stream to skip (resume inside a segment), without decoding them.
        shuffle_buffer: raw samples held per worker for shuffling across shard boundaries.
        with_keys: also yield the sample keys (tests, debugging).
    """

    def __init__(
        self,
        urls: Sequence[str],
        domains: dict[str, list[str]],
        *,
        pairs: int,
        processor: ImageProcessor,
        augment: AugmentConfig | None = None,
        seed: int = 0,
        segment: int = 0,
        rank: int = 0,
        world: int = 1,
        skip_batches: int = 0,
        shuffle_buffer: int = 256,
        with_keys: bool = True,
    ) -> None:
        super().__init__()
        if pairs < 1 or shuffle_buffer < 1:
            raise ValueError("pairs and shuffle_buffer must be >= 1")
        self.urls = list(urls)
        self.domains = {k: list(v) for k, v in domains.items()}
        self.pairs, self.processor = pairs, processor
        self.augment = augment or AugmentConfig()
        self.seed, self.segment, self.rank, self.world = seed, segment, rank, world
        self.skip_batches = skip_batches
        self.shuffle_buffer = shuffle_buffer
        self.with_keys = with_keys

    def _worker(self) -> tuple[int, int, int]:
        """(logical worker id, number of workers, batches to skip) for the calling worker process.

        A resumed loader's physical worker p must continue the stream of the worker that produced global batch
        ``skip + p`` in the uninterrupted run, which is logical worker ``(skip + p) % W``, at its batch
        ``(skip + p) // W``."""
        info = get_worker_info()
        p, w = (0, 1) if info is None else (info.id, info.num_workers)
        return (self.skip_batches + p) % w, w, (self.skip_batches + p) // w

    def raw_samples(self, worker: int, workers: int) -> Iterator[dict[str, Any]]:
        """This worker's infinite, shuffled stream of raw (undecoded) samples."""
        check_split(len(self.urls), self.world, workers)
        mine = self.urls[self.rank :: self.world][worker::workers]
        rng = np.random.default_rng(_mix(self.seed, self.segment, self.rank, worker, 0x5348))
        buffer: list[dict[str, Any]] = []
        while True:
            for sample in iter_samples(mine[int(rng.integers(len(mine)))]):
                if len(buffer) < self.shuffle_buffer:
                    buffer.append(sample)
                    continue
                i = int(rng.integers(len(buffer)))
                buffer[i], sample = sample, buffer[i]
                yield sample

    def __iter__(self) -> Iterator[dict[str, Any]]:
        worker, workers, skip = self._worker()
        samples = self.raw_samples(worker, workers)
        names = list(self.domains)
        index = 0  # position in this worker's stream: keys the per-sample random draws
        batch: list[tuple[dict[str, Any], int, str, AugmentParams]] = []
        skip_samples = skip * self.pairs
        for sample in samples:
            if index < skip_samples:
                index += 1
                continue
            rng = np.random.default_rng(_mix(self.seed, self.segment, self.rank, worker, index))
            index += 1
            d = int(rng.integers(len(names)))
            fields = self.domains[names[d]]
            field = fields[int(rng.integers(len(fields)))]
            batch.append((sample, d, field, sample_params(self.augment, rng)))
            if len(batch) == self.pairs:
                yield self._collate(batch)
                batch = []

    def _collate(self, batch: list[tuple[dict[str, Any], int, str, AugmentParams]]) -> dict[str, Any]:
        reals, fakes, domain = [], [], []
        for sample, d, field, params in batch:
            real = decode_image(sample[field_key(sample, "real")])
            fake = decode_image(sample[field_key(sample, field)])
            if fake.size != real.size:
                raise ValueError(f"sample {sample['__key__']!r}: {field} is {fake.size}, real is {real.size}")
            reals.append(self._pixels(real, params))
            fakes.append(self._pixels(fake, params))
            domain.append(d)
        n = len(batch)
        out: dict[str, Any] = {
            "pixels": torch.stack(reals + fakes),
            "labels": torch.cat([torch.zeros(n), torch.ones(n)]),
            "domain": torch.tensor(domain + domain, dtype=torch.long),
        }
        if self.with_keys:
            out["keys"] = [s["__key__"] for s, _, _, _ in batch]
        return out

    def _pixels(self, image: Image.Image, params: AugmentParams) -> torch.Tensor:
        """The processor's resampling, the augmentation, then the processor's padding and normalisation."""
        processor = self.processor
        return processor.normalize(apply(processor.resample(image), params, processor.size))


class EvalStream(IterableDataset):
    """One finite pass over held-out shards: every sample gives its real and *all* its domain fakes, not augmented,
    each turned into crops by the processor exactly as :meth:`SEFDetector.score` does (centre crop, or the grid of
    ``crop="multi"``, whose probabilities the trainer averages per image as scoring does). Samples are split by
    position across ranks and workers (``i % (world * W) == rank * W + w``), so any number of shards works; each
    reader skips the others' samples before decoding them.

    Yields batches of up to ``batch`` crops (more only when one image has more crops): ``pixels`` (M, 3, S, S),
    ``image`` (M,) int64, the index of each crop's image in the batch, and per image ``labels`` (B,) and
    ``domain`` (B,) (-1 for reals)."""

    def __init__(
        self,
        urls: Sequence[str],
        domains: dict[str, list[str]],
        *,
        batch: int,
        processor: ImageProcessor,
        crop: str | None = None,
        rank: int = 0,
        world: int = 1,
        max_samples: int | None = None,
    ) -> None:
        super().__init__()
        self.urls, self.domains = list(urls), {k: list(v) for k, v in domains.items()}
        self.batch, self.processor, self.crop = batch, processor, crop
        self.rank, self.world, self.max_samples = rank, world, max_samples

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        p, w = (0, 1) if info is None else (info.id, info.num_workers)
        readers, me = self.world * w, self.rank * w + p
        crops: list[torch.Tensor] = []  # one (n, 3, S, S) tensor per image
        labels: list[float] = []
        domain: list[int] = []
        held = 0  # crops in the batch so far
        index = 0
        for sample in self._samples():
            index += 1
            if (index - 1) % readers != me:
                continue
            items = [("real", -1)] + [(f, d) for d, fields in enumerate(self.domains.values()) for f in fields]
            for field, d in items:
                image = self.processor(decode_image(sample[field_key(sample, field)]), self.crop)
                if crops and held + len(image) > self.batch:  # an image's crops stay in one batch
                    yield self._batch(crops, labels, domain)
                    crops, labels, domain, held = [], [], [], 0
                crops.append(image)
                held += len(image)
                labels.append(0.0 if d < 0 else 1.0)
                domain.append(d)
        if crops:
            yield self._batch(crops, labels, domain)

    def _samples(self) -> Iterator[dict[str, Any]]:
        count = 0
        for url in self.urls:
            for sample in iter_samples(url):
                if self.max_samples is not None and count >= self.max_samples:
                    return
                count += 1
                yield sample

    @staticmethod
    def _batch(crops: list[torch.Tensor], labels: list[float], domain: list[int]) -> dict[str, torch.Tensor]:
        return {
            "pixels": torch.cat(crops),
            "image": torch.cat([torch.full((len(c),), i, dtype=torch.long) for i, c in enumerate(crops)]),
            "labels": torch.tensor(labels),
            "domain": torch.tensor(domain, dtype=torch.long),
        }


def make_loader(dataset: IterableDataset, num_workers: int) -> DataLoader:
    """A DataLoader over a stream that yields whole batches (so batch ``b`` comes from worker ``b % W``)."""
    return DataLoader(
        dataset,
        batch_size=None,
        num_workers=num_workers,
        pin_memory=torch.cuda.is_available(),
        prefetch_factor=4 if num_workers else None,
    )


__all__ = [
    "DEFAULT_DOMAINS",
    "EvalStream",
    "PairStream",
    "ShardSet",
    "check_split",
    "data_workers",
    "iter_samples",
    "make_loader",
    "resolve_domains",
    "resolve_shards",
    "sample_fields",
]
