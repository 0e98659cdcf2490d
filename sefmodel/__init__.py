"""sefmodel: detection half of the SEF toolkit (backbones, LoRA experts, gated fusion, detector save/load; the
training-free AEROBLADE baseline; ``load_detector`` loads any kind of detector folder).

The names below load on first use (PEP 562), so that reading a config or a command's help does not import torch
and the model stacks."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .lazy import lazy_exports

_EXPORTS = {
    "AerobladeConfig": "aeroblade_config",
    "AerobladeDetector": "aeroblade",
    "Backbone": "backbones",
    "CNNBackbone": "backbones",
    "DetectorConfig": "config",
    "ImageProcessor": "preprocess",
    "LoraSettings": "lora",
    "SEFDetector": "detector",
    "Scores": "pipeline",
    "UnsafeCheckpointError": "folder",
    "ViTBackbone": "backbones",
    "combine_experts": "combine",
    "get_backbone_class": "backbones",
    "known_backbones": "backbones",
    "known_fusions": "fusion",
    "load_detector": "predict",
    "register_backbone": "backbones",
    "register_fusion": "fusion",
    "score": "pipeline",
}

__all__ = [
    "AerobladeConfig",
    "AerobladeDetector",
    "Backbone",
    "CNNBackbone",
    "DetectorConfig",
    "ImageProcessor",
    "LoraSettings",
    "SEFDetector",
    "Scores",
    "UnsafeCheckpointError",
    "ViTBackbone",
    "combine_experts",
    "get_backbone_class",
    "known_backbones",
    "known_fusions",
    "load_detector",
    "register_backbone",
    "register_fusion",
    "score",
]

if TYPE_CHECKING:
    from .aeroblade import AerobladeDetector
    from .aeroblade_config import AerobladeConfig
    from .backbones import (
        Backbone,
        CNNBackbone,
        ViTBackbone,
        get_backbone_class,
        known_backbones,
        register_backbone,
    )
    from .combine import combine_experts
    from .config import DetectorConfig
    from .detector import SEFDetector
    from .folder import UnsafeCheckpointError
    from .fusion import known_fusions, register_fusion
    from .lora import LoraSettings
    from .pipeline import Scores, score
    from .predict import load_detector
    from .preprocess import ImageProcessor


__getattr__ = lazy_exports(__name__, _EXPORTS, globals())
