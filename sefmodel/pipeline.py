"""Scoring: images (PIL or paths) -> the image processor's crops -> the detector -> one probability per image.

The third object beside the detector (the module) and its image processor: it opens images, cuts them into
crops with the processor, streams the crops through the detector in batches and averages each image's crops.
It works with any detector that has a ``processor`` and returns ``logits`` (SEF, AEROBLADE); the detector does not
import it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from PIL import Image

from sefmodel.images import open_image_file
from sefmodel.model.preprocess import ImageProcessor, check_crop

if TYPE_CHECKING:
    from sefmodel.model.detector import SEFDetector

ImageInput = Image.Image | str | os.PathLike


@dataclass
class Scores:
    """Result of :func:`score` for N images.

    Attributes:
        probs: (N,) float32, probability in [0, 1] that each image is generated (mean over its crops).
        gate_weights: (N, E) float32 rows summing to 1 (SEF only; mean over crops), else None.
        experts: the E expert names, in column order of ``gate_weights``.
        num_crops: crops averaged per image.
    """

    probs: torch.Tensor
    gate_weights: torch.Tensor | None
    experts: list[str]
    num_crops: list[int]


@contextmanager
def open_image(image: Any, index: int = 0) -> Iterator[Image.Image]:
    """A PIL image as given, or the image at a path, decoded and closed on exit; ``index`` names the input in the
    error for anything else."""
    if isinstance(image, Image.Image):
        yield image
    elif isinstance(image, (str, os.PathLike)):
        opened = open_image_file(image)
        try:
            yield opened
        finally:
            opened.close()
    else:
        raise TypeError(f"image {index}: expected a PIL image or a path, got {type(image).__name__}")


def crop_batches(
    images: Iterable[Any], processor: ImageProcessor, batch_size: int, crop: str | None, counts: list[int]
) -> Iterator[tuple[torch.Tensor, list[int]]]:
    """Stream the images' crops in batches of ``batch_size`` (B, 3, S, S), each with the index of the image each
    crop came from; ``counts`` receives the number of crops per image."""
    buffer: list[torch.Tensor] = []
    owner: list[int] = []
    for i, image in enumerate(images):
        with open_image(image, i) as opened:
            crops = processor(opened, crop)
        counts.append(len(crops))
        buffer.extend(crops)
        owner.extend([i] * len(crops))
        while len(buffer) >= batch_size:
            yield torch.stack(buffer[:batch_size]), owner[:batch_size]
            buffer, owner = buffer[batch_size:], owner[batch_size:]
    if buffer:
        yield torch.stack(buffer), owner


@torch.inference_mode()
def score(
    detector: SEFDetector,
    images: ImageInput | Iterable[ImageInput],
    batch_size: int = 16,
    crop: str | None = None,
    processor: ImageProcessor | None = None,
) -> Scores:
    """Probability that each image is generated.

    Args:
        detector: a detector (SEF or AEROBLADE); it runs in eval mode here, and its mode is restored after.
        images: PIL images (any size and mode) or paths, or one of them.
        batch_size: crops per forward pass.
        crop: ``"center"`` or ``"multi"``; default the processor's (``processor.crop``). Multi-crop averages
            probabilities (and gate weights) over the crops of an image.
        processor: the image processor; default the detector's own.

    Returns:
        :class:`Scores` with ``probs`` (N,) in [0, 1] and, for SEF, ``gate_weights`` (N, E).
    """
    processor = processor or detector.processor
    if crop is not None:
        check_crop(crop)  # once, not per image
    if isinstance(images, (Image.Image, str, os.PathLike)):
        images = [images]
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    was_training = detector.training
    detector.eval()
    probs: list[torch.Tensor] = []
    gates: list[torch.Tensor] = []
    owners: list[int] = []
    counts: list[int] = []
    try:
        for batch, owner in crop_batches(images, processor, batch_size, crop, counts):
            out = detector(batch)
            probs.append(out["logits"].float().sigmoid().cpu())
            if "gate_weights" in out:
                gates.append(out["gate_weights"].float().cpu())
            owners.extend(owner)
    finally:
        detector.train(was_training)
    n = len(counts)
    index = torch.tensor(owners, dtype=torch.long)
    denom = torch.tensor(counts, dtype=torch.float32).clamp_min(1)
    mean_probs = torch.zeros(n).index_add_(0, index, torch.cat(probs)) / denom if probs else torch.zeros(0)
    mean_gates = None
    if gates:
        stacked = torch.cat(gates)
        mean_gates = torch.zeros(n, stacked.shape[1]).index_add_(0, index, stacked) / denom[:, None]
    return Scores(probs=mean_probs, gate_weights=mean_gates, experts=detector.expert_names, num_crops=counts)
