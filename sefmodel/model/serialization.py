"""The kinds of detector folder: the class that loads each (:func:`detector_class`) and the files that hold each
one's weights (:func:`weight_files`). What a folder holds and how its files are read and written is
:mod:`sefmodel.model.folder`, which knows no detector class; this module imports them on use, so it sits above them.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from sefmodel.model.fields import DETECTOR_TYPE_KEY
from sefmodel.model.folder import (
    BACKBONE_WEIGHTS_NAME,
    DETECTOR_TYPES,
    WEIGHTS_NAME,
    folder_detector_type,
)


def detector_class(kind: str) -> type:
    """The class that loads detectors of ``kind`` (:data:`DETECTOR_TYPES`)."""
    if kind not in DETECTOR_TYPES:
        raise ValueError(f"unknown {DETECTOR_TYPE_KEY} {kind!r}; known: {', '.join(DETECTOR_TYPES)}")
    module, name = DETECTOR_TYPES[kind].split(":")
    return getattr(importlib.import_module(module), name)


def weight_files(folder: Path) -> list[str]:
    """The weight files of a local detector folder (relative names, sorted): what a results file hashes."""
    folder = Path(folder)
    if folder_detector_type(folder) == "sef":
        return [n for n in (WEIGHTS_NAME, BACKBONE_WEIGHTS_NAME) if (folder / n).is_file()]
    from sefmodel.model.aeroblade import AUTOENCODER_FOLDER, DISTANCE_FOLDER

    return sorted(p.relative_to(folder).as_posix() for sub in (AUTOENCODER_FOLDER, DISTANCE_FOLDER)
                  for p in (folder / sub).rglob("*.safetensors"))  # fmt: skip
