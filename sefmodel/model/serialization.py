"""The kinds of detector folder: the class that loads each (:func:`detector_class`). What a folder holds (its weight
files among it: :func:`sefmodel.model.folder.weight_files`) and how its files are read and written is
:mod:`sefmodel.model.folder`, which knows no detector class; this module imports them on use, so it sits above them.
"""

from __future__ import annotations

import importlib

from sefmodel.model.dictconfig import DETECTOR_TYPE_KEY
from sefmodel.model.folder import (
    DETECTOR_TYPES,
)


def detector_class(kind: str) -> type:
    """The class that loads detectors of ``kind`` (:data:`DETECTOR_TYPES`)."""
    if kind not in DETECTOR_TYPES:
        raise ValueError(f"unknown {DETECTOR_TYPE_KEY} {kind!r}; known: {', '.join(DETECTOR_TYPES)}")
    module, name = DETECTOR_TYPES[kind].split(":")
    return getattr(importlib.import_module(module), name)
