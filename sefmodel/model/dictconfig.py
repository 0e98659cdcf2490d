"""Building settings dataclasses from plain dicts (JSON/TOML), refusing keys they do not have."""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

T = TypeVar("T")

# the key of a detector folder's config.json that names its kind ("sef" when absent; the kinds: model/folder.py)
DETECTOR_TYPE_KEY = "detector_type"


def from_known_fields(cls: type[T], data: dict[str, Any], what: str) -> T:
    """``cls(**data)``; a key that is not a field of ``cls`` is a ``ValueError`` naming it and the known ones, so a
    typo in a config file is never silently ignored. ``what`` names the keys in the message ("lora settings")."""
    known = sorted(f.name for f in dataclasses.fields(cls))  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ValueError(f"unknown {what} {unknown}; known: {known}")
    return cls(**data)


def from_versioned_dict(
    cls: type[T], data: dict[str, Any], *, version: int, meta_keys: tuple[str, ...], what: str
) -> T:
    """:func:`from_known_fields` on a dict written with a ``format_version`` and other bookkeeping keys: a file of
    another format version is a ``ValueError``; ``meta_keys`` (the version among them) are not fields."""
    found = data.get("format_version", version)
    if found != version:
        raise ValueError(f"{what} format_version {found} is not supported (this code reads {version})")
    return from_known_fields(cls, {k: v for k, v in data.items() if k not in meta_keys}, f"{what} keys")
