"""Frozen backbones by registry name: the ViTs ``dinov2``, ``dinov2_registers``, ``clip`` and the CNNs
``mobilenet_v2``, ``resnet``, ``convnext``.

Each family lives in one file that subclasses :class:`ViTBackbone` or :class:`CNNBackbone` and ends with one
``register_backbone`` line; importing this package registers the built-in ones.
"""

from sefmodel.model.backbones.base import Backbone, ViTBackbone, resolve_layer
from sefmodel.model.backbones.cnn import CNNBackbone
from sefmodel.model.backbones.registry import get_backbone_class, known_backbones, register_backbone

# Built-in families register themselves on import.
from sefmodel.model.backbones import clip, convnext, dinov2, mobilenet_v2, resnet  # noqa: F401  isort: skip

__all__ = [
    "Backbone",
    "CNNBackbone",
    "ViTBackbone",
    "get_backbone_class",
    "known_backbones",
    "register_backbone",
    "resolve_layer",
]
