"""Where the real sample assets (photos/ and weights/) are: the tests, benchmarks and demo all look here."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def find_assets(explicit: str | Path | None = None, *, required: Sequence[str] = ("photos", "weights")) -> Path | None:
    """The first of ``explicit``, ``$SEF_ASSETS``, ``../shared/assets`` beside the checkout and the demo kit in
    ``examples/`` that holds every path in ``required``; None if none does."""
    for candidate in (explicit, os.environ.get("SEF_ASSETS"), REPO.parent / "shared" / "assets", REPO / "examples"):
        if candidate and all((Path(candidate) / r).exists() for r in required):
            return Path(candidate)
    return None
