"""Frozen ViT backbones by registry name: ``dinov2``, ``dinov2_registers``, ``clip``.

Each family lives in one file that subclasses :class:`ViTBackbone` and ends with one ``register_backbone``
line; importing this package registers the built-in ones.
"""

from .base import ViTBackbone, resolve_layer
from .registry import get_backbone_class, known_backbones, register_backbone

# Built-in families register themselves on import.
from . import clip, dinov2  # noqa: F401  isort: skip

__all__ = ["ViTBackbone", "get_backbone_class", "known_backbones", "register_backbone", "resolve_layer"]
