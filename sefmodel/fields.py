"""Building settings dataclasses from plain dicts (JSON/TOML), refusing keys they do not have."""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

T = TypeVar("T")


def from_known_fields(cls: type[T], data: dict[str, Any], what: str) -> T:
    """``cls(**data)``; a key that is not a field of ``cls`` is a ``ValueError`` naming it and the known ones, so a
    typo in a config file is never silently ignored. ``what`` names the keys in the message ("lora settings")."""
    known = sorted(f.name for f in dataclasses.fields(cls))  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ValueError(f"unknown {what} {unknown}; known: {known}")
    return cls(**data)
