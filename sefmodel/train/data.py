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

**Stages.** A worker's stream is a chain of iterable -> iterable stages, each usable alone, from its own shards
(:func:`select_shards`): :func:`resampled` -> :func:`shuffle` -> :func:`skip` -> :func:`draw_pairs` ->
:func:`decode_pairs` -> :func:`augment_pairs` -> :func:`batched` -> :func:`collate`.

**Pixels.** Every image goes through the detector's :class:`~sefmodel.model.preprocess.ImageProcessor`, the one that
scores it later: training resamples with it, augments (:mod:`sefmodel.train.augment`) and pads/normalises with it;
validation calls it exactly as :meth:`SEFDetector.score` does.

**Batches.** Each worker yields whole batches (``DataLoader(batch_size=None)``), which makes the worker that produces
batch ``b`` simply ``b % workers``. A batch of ``P`` pairs is ``pixels`` (2P, 3, S, S) float32 normalised with the
backbone's mean/std (reals first, then their fakes in the same order), ``labels`` (2P,) float32 (0 real, 1 fake),
``domain`` (2P,) int64 (the fake's domain index; a real carries its partner's) and ``keys`` (sample keys, P).
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import islice
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from sefcore.imageio import to_rgb
from sefdata.shards import ShardSet, field_key, iter_samples, resolve_shards, sample_fields
from sefmodel.images import open_image_file
from sefmodel.model.preprocess import ImageProcessor
from sefmodel.train.augment import AugmentConfig, AugmentParams, apply, sample_params

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


# Stages, webdataset style: each takes an iterable and returns one, so each runs (and is tested) alone on a list.
# PairStream composes them. Resuming is exact because the raw samples' order depends on (seed, segment, rank, worker)
# alone and every later draw on the sample's position, so skipping needs neither decoding nor any draw.


@dataclass(eq=False)
class Pair:
    """One training pair as it flows through the stages: the raw sample, the drawn domain index and fake field, the
    augmentation parameters, then (after :func:`decode_pairs` and :func:`augment_pairs`) the real's and the fake's
    images: PIL images, then normalised (3, S, S) float32 tensors."""

    sample: dict[str, Any]
    domain: int
    field: str
    params: AugmentParams
    real: Image.Image | torch.Tensor | None = None
    fake: Image.Image | torch.Tensor | None = None

    @property
    def key(self) -> str:
        return self.sample["__key__"]


def select_shards(urls: Sequence[str], rank: int, world: int, worker: int, workers: int) -> list[str]:
    """This (rank, worker)'s own shards: ``urls[rank::world][worker::workers]``. Raises ``ValueError`` when some
    reader would get none (:func:`check_split`)."""
    check_split(len(urls), world, workers)
    return list(urls[rank::world][worker::workers])


def resampled(urls: Sequence[str], rng: np.random.Generator) -> Iterator[dict[str, Any]]:
    """Raw samples of shards drawn with replacement from ``urls``, for ever: one draw from ``rng`` per shard."""
    while True:
        yield from iter_samples(urls[int(rng.integers(len(urls)))])


def shuffle(samples: Iterable[Any], size: int, rng: np.random.Generator) -> Iterator[Any]:
    """Shuffle through a buffer of ``size``: once it is full, each new item takes the place of a random one, which
    is yielded. A finite input's last ``size`` items come out at its end, shuffled."""
    buffer: list[Any] = []
    for item in samples:
        if len(buffer) < size:
            buffer.append(item)
            continue
        i = int(rng.integers(len(buffer)))
        buffer[i], item = item, buffer[i]
        yield item
    rng.shuffle(buffer)
    yield from buffer


def skip(samples: Iterable[Any], count: int) -> Iterator[tuple[int, Any]]:
    """``(position, item)`` from position ``count`` on: the first ``count`` items are passed over untouched (not
    decoded), and the positions stay those of the whole stream, which key the per-sample draws."""
    return islice(enumerate(samples), count, None)


def draw_pairs(
    positioned: Iterable[tuple[int, dict[str, Any]]],
    domains: dict[str, list[str]],
    augment: AugmentConfig,
    rng_at: Callable[[int], np.random.Generator],
) -> Iterator[Pair]:
    """Each sample's random draws, from ``rng_at(position)`` alone: a domain uniformly, one of its fields
    uniformly, then the augmentation parameters."""
    names = list(domains)
    for position, sample in positioned:
        rng = rng_at(position)
        d = int(rng.integers(len(names)))
        fields = domains[names[d]]
        field = fields[int(rng.integers(len(fields)))]
        yield Pair(sample, d, field, sample_params(augment, rng))


def decode_pairs(pairs: Iterable[Pair]) -> Iterator[Pair]:
    """Decode each pair's real and fake (RGB PIL images). Raises ``ValueError`` if their sizes differ."""
    for pair in pairs:
        pair.real = decode_image(pair.sample[field_key(pair.sample, "real")])
        pair.fake = decode_image(pair.sample[field_key(pair.sample, pair.field)])
        if pair.fake.size != pair.real.size:
            raise ValueError(f"sample {pair.key!r}: {pair.field} is {pair.fake.size}, real is {pair.real.size}")
        yield pair


def augment_pairs(pairs: Iterable[Pair], processor: ImageProcessor) -> Iterator[Pair]:
    """The processor's resampling, the pair's augmentation (the same on real and fake), then the processor's
    padding and normalisation: each image becomes a (3, S, S) float32 tensor."""
    for pair in pairs:
        pair.real = processor.normalize(apply(processor.resample(pair.real), pair.params, processor.size))
        pair.fake = processor.normalize(apply(processor.resample(pair.fake), pair.params, processor.size))
        yield pair


def batched(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    """Consecutive lists of ``size`` items; an incomplete last list is dropped (the training stream never ends)."""
    it = iter(items)
    while len(batch := list(islice(it, size))) == size:
        yield batch


def collate(batches: Iterable[list[Pair]], with_keys: bool = True) -> Iterator[dict[str, Any]]:
    """A batch of augmented pairs as tensors: reals first, then their fakes (see the module docstring)."""
    for batch in batches:
        n = len(batch)
        domain = [p.domain for p in batch]
        out: dict[str, Any] = {
            "pixels": torch.stack([p.real for p in batch] + [p.fake for p in batch]),
            "labels": torch.cat([torch.zeros(n), torch.ones(n)]),
            "domain": torch.tensor(domain + domain, dtype=torch.long),
        }
        if with_keys:
            out["keys"] = [p.key for p in batch]
        yield out


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
        mine = select_shards(self.urls, self.rank, self.world, worker, workers)
        # one generator for both stages: the shard draws and the buffer's draws interleave as they always have
        rng = np.random.default_rng(_mix(self.seed, self.segment, self.rank, worker, 0x5348))
        return shuffle(resampled(mine, rng), self.shuffle_buffer, rng)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        worker, workers, skip_batches = self._worker()
        seeds = (self.seed, self.segment, self.rank, worker)
        positioned = skip(self.raw_samples(worker, workers), skip_batches * self.pairs)
        pairs = draw_pairs(positioned, self.domains, self.augment, lambda i: np.random.default_rng(_mix(*seeds, i)))
        # decoding and augmenting are lazy: a batch's samples are decoded when the batch is asked for
        return collate(batched(augment_pairs(decode_pairs(pairs), self.processor), self.pairs), self.with_keys)


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
    "Pair",
    "PairStream",
    "ShardSet",
    "augment_pairs",
    "batched",
    "check_split",
    "collate",
    "data_workers",
    "decode_pairs",
    "draw_pairs",
    "iter_samples",
    "make_loader",
    "resampled",
    "resolve_domains",
    "resolve_shards",
    "sample_fields",
    "select_shards",
    "shuffle",
    "skip",
]
