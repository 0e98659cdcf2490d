"""Name -> backbone class registry. Explicit, and loud about duplicates and unknown names."""

from __future__ import annotations

from .base import ViTBackbone

_BACKBONES: dict[str, type[ViTBackbone]] = {}


def register_backbone(name: str, cls: type[ViTBackbone]) -> type[ViTBackbone]:
    """Register ``cls`` under ``name``; raises ``ValueError`` if the name is taken. Returns ``cls``."""
    if not isinstance(cls, type) or not issubclass(cls, ViTBackbone):
        raise TypeError(f"register_backbone({name!r}, ...) needs a ViTBackbone subclass, got {cls!r}")
    if name in _BACKBONES:
        raise ValueError(
            f"backbone {name!r} is already registered "
            f"(by {_BACKBONES[name].__module__}.{_BACKBONES[name].__qualname__})"
        )
    _BACKBONES[name] = cls
    return cls


def get_backbone_class(name: str) -> type[ViTBackbone]:
    """The class registered as ``name``; an unknown name raises ``KeyError`` listing the known ones."""
    try:
        return _BACKBONES[name]
    except KeyError:
        raise KeyError(f"unknown backbone {name!r}; known: {', '.join(sorted(_BACKBONES))}") from None


def known_backbones() -> list[str]:
    """Registered names, sorted."""
    return sorted(_BACKBONES)
