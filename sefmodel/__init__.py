"""sefmodel: detection half of the SEF toolkit (backbones, LoRA experts, gated fusion, detector save/load; the
training-free AEROBLADE baseline; ``load_detector`` loads any kind of detector folder).

The names below load on first use (PEP 562), so that reading a config or a command's help does not import torch
and the model stacks."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sefmodel.lazy import lazy_exports

_EXPORTS = {
    "AerobladeConfig": "model.aeroblade_config",
    "AerobladeDetector": "model.aeroblade",
    "Backbone": "model.backbones",
    "CNNBackbone": "model.backbones",
    "DetectorConfig": "model.config",
    "ImageProcessor": "model.preprocess",
    "LoraSettings": "model.lora",
    "SEFDetector": "model.detector",
    "Scores": "pipeline",
    "UnsafeCheckpointError": "model.folder",
    "ViTBackbone": "model.backbones",
    "combine_experts": "model.combine",
    "get_backbone_class": "model.backbones",
    "known_backbones": "model.backbones",
    "known_fusions": "model.fusion",
    "load_detector": "predict",
    "register_backbone": "model.backbones",
    "register_fusion": "model.fusion",
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
    from sefmodel.model.aeroblade import AerobladeDetector
    from sefmodel.model.aeroblade_config import AerobladeConfig
    from sefmodel.model.backbones import (
        Backbone,
        CNNBackbone,
        ViTBackbone,
        get_backbone_class,
        known_backbones,
        register_backbone,
    )
    from sefmodel.model.combine import combine_experts
    from sefmodel.model.config import DetectorConfig
    from sefmodel.model.detector import SEFDetector
    from sefmodel.model.folder import UnsafeCheckpointError
    from sefmodel.model.fusion import known_fusions, register_fusion
    from sefmodel.model.lora import LoraSettings
    from sefmodel.model.preprocess import ImageProcessor
    from sefmodel.pipeline import Scores, score
    from sefmodel.predict import load_detector


__getattr__ = lazy_exports(__name__, _EXPORTS, globals())
