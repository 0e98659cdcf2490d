"""Combining experts trained apart (single-expert detectors) into one fused detector with a fresh fusion head.

This module uses the detector (it builds one and fills it), so it imports :mod:`sefmodel.model.detector`, never the
other way round."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any

import torch

from sefmodel.model.detector import SEFDetector
from sefmodel.model.folder import DetectorFolder, load_exact, read_folder, resolve_folder
from sefmodel.model.preprocess import ImageProcessor

# must be equal for experts to share a backbone and a fusion head
SHARED_CONFIG = ("backbone", "backbone_id", "backbone_revision", "backbone_config", "feature_layer", "feature_pool",
                 "lora", "spectrum", "input_filter")  # fmt: skip
# what each expert's training saw of an image: must be equal too (the crop mode is only a scoring default)
SHARED_PROCESSING = ("size", "image_mean", "image_std", "resize", "small")


def processing_differences(a: ImageProcessor, b: ImageProcessor) -> list[str]:
    """The :data:`SHARED_PROCESSING` settings on which two image processors disagree (empty: same pixels)."""
    return [k for k in SHARED_PROCESSING if getattr(a, k) != getattr(b, k)]


def combine_experts(
    sources: Sequence[SEFDetector | str | os.PathLike],
    fusion: str = "sef",
    names: Sequence[str] | None = None,
    gate_hidden: int | None = None,
    gate_input: str | None = None,
    **load_kwargs: Any,
) -> SEFDetector:
    """Combine trained single-expert detectors (objects, folders or Hub ids) into one fused detector.

    The experts' adapters and heads are copied under ``names`` (default: each source's expert name); the fusion head
    is fresh (``fusion``, ``gate_hidden`` and ``gate_input`` as in :class:`~sefmodel.model.config.DetectorConfig`). All
    sources must share the backbone, feature layer, LoRA settings, spectrum and input filter (:data:`SHARED_CONFIG`),
    and image processing (:data:`SHARED_PROCESSING`: crop side, normalisation, resize and small-image rules, what
    their training saw). ``load_kwargs`` go to :func:`~sefmodel.model.folder.resolve_folder` (``revision``,
    ``token``...).
    """
    if len(sources) < 2:
        raise ValueError("combine_experts needs at least two single-expert detectors")
    loaded: list[DetectorFolder] = []
    for src in sources:
        if isinstance(src, SEFDetector):
            backbone = src.backbone_state_dict() if src.config.backbone_config is not None else None
            loaded.append(DetectorFolder(src.config, src.trained_state_dict(), backbone))
        else:
            loaded.append(read_folder(resolve_folder(src, **load_kwargs), "cpu"))
    first = loaded[0].config
    for cfg in (entry.config for entry in loaded):
        if cfg.fusion != "single":
            raise ValueError(f"combine_experts takes single-expert detectors; got one with fusion={cfg.fusion!r}")
        for key in SHARED_CONFIG:
            if getattr(cfg, key) != getattr(first, key):
                raise ValueError(f"experts disagree on {key}: {getattr(first, key)!r} vs {getattr(cfg, key)!r}")
    names = list(names) if names is not None else [entry.config.experts[0] for entry in loaded]
    if len(names) != len(loaded):
        raise ValueError(f"{len(names)} names for {len(loaded)} experts")
    base = loaded[0].backbone
    for other in (entry.backbone for entry in loaded[1:]):
        if base is not None and (other is None or any(not torch.equal(base[k], other[k]) for k in base)):
            raise ValueError("experts were built on different random backbones; they cannot share one")
    heads = {k: v for k, v in (("gate_hidden", gate_hidden), ("gate_input", gate_input)) if v is not None}
    # replace() re-validates the combination; the first expert's processor is the detector's
    config = dataclasses.replace(first, experts=names, fusion=fusion, **heads)
    detector = SEFDetector(config)
    for entry in loaded:
        diff = processing_differences(entry.config.processor.for_backbone(detector.backbone), detector.processor)
        if diff:
            raise ValueError(f"experts were trained on differently processed images: they disagree on {diff}")
    state = {}
    for entry, new in zip(loaded, names, strict=True):
        old = entry.config.experts[0]
        state.update({SEFDetector.rename_expert_key(k, old, new): v for k, v in entry.trained.items()})
    expected = {k: v for k, v in detector.trained_state_dict().items() if not k.startswith("fusion.")}
    load_exact(detector, state, expected, "the experts")
    if base is not None:
        load_exact(detector, base, detector.backbone_state_dict(), "the experts' backbone")
    return detector
