"""Name -> backbone class registry. Explicit, and loud about duplicates and unknown names."""

from __future__ import annotations

from sefmodel.model.backbones.base import Backbone

_BACKBONES: dict[str, type[Backbone]] = {}


def register_backbone(name: str, cls: type[Backbone]) -> type[Backbone]:
    """Register ``cls`` under ``name``; raises ``ValueError`` if the name is taken. Returns ``cls``."""
    if not isinstance(cls, type) or not issubclass(cls, Backbone):
        raise TypeError(
            f"register_backbone({name!r}, ...) needs a Backbone subclass (ViTBackbone or CNNBackbone), got {cls!r}"
        )
    if name in _BACKBONES:
        raise ValueError(
            f"backbone {name!r} is already registered "
            f"(by {_BACKBONES[name].__module__}.{_BACKBONES[name].__qualname__})"
        )
    _BACKBONES[name] = cls
    return cls


def get_backbone_class(name: str) -> type[Backbone]:
    """The class registered as ``name``; an unknown name raises ``KeyError`` listing the known ones."""
    try:
        return _BACKBONES[name]
    except KeyError:
        raise KeyError(f"unknown backbone {name!r}; known: {', '.join(sorted(_BACKBONES))}") from None


def known_backbones() -> list[str]:
    """Registered names, sorted."""
    return sorted(_BACKBONES)
