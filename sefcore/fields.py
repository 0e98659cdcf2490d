"""How a config dataclass documents its fields, one way everywhere: ``field(default=..., metadata=doc("..."))``.

The help is what ``--help`` shows for the field's option (``cli/options.py`` reads it) and what a config file's key
means. This module imports nothing, so every config, torch-free or not, can use it.
"""

from __future__ import annotations

import dataclasses
from typing import Any


def doc(text: str, *, metavar: str | None = None) -> dict[str, str]:
    """Field metadata holding the field's one-line help and, for its option, the ``metavar`` shown for the value
    (``N``, ``center|multi``; default: from the type)."""
    return {"help": text} if metavar is None else {"help": text, "metavar": metavar}


def same_as(cls: type, name: str) -> Any:
    """A field declared as ``cls``'s field ``name`` (same default and help): a setting two configs share is declared
    once."""
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    return dataclasses.field(default=f.default, default_factory=f.default_factory, metadata=f.metadata)
