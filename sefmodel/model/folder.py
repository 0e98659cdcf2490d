"""Detector folders: what they hold, where they come from, the rule that keeps loading safe, and reading and
writing their files.

A detector folder holds ``config.json`` (:class:`~sefmodel.model.config.DetectorConfig` without its processor),
``preprocessor_config.json`` (that processor, :class:`~sefmodel.model.preprocess.ImageProcessor`; folders saved before
it existed hold its settings as flat keys of ``config.json``, see :meth:`DetectorConfig.from_dict`),
``model.safetensors`` (trained tensors only: LoRA adapters, heads, fusion head), ``backbone.safetensors`` for a randomly
initialised backbone only, ``README.md`` (the model card) and, when the detector was calibrated on real images
(``sefmodel calibrate``), ``threshold.json`` (:class:`~sefmodel.evaluation.threshold.CalibratedThreshold`): loading sets
it as ``detector.calibrated_threshold`` (None without one) and saving writes it back, or removes a stale file when the
detector has none. A detector folder may also carry a golden set, ``golden/`` (:mod:`sefmodel.evaluation.golden`: small
PNG images and the probabilities the detector gave them, for ``sefmodel check``); saving other weights into the folder
removes it.

A folder's ``config.json`` says which kind of detector it holds (``"detector_type"``; absent means ``"sef"``, the
trained detector above); :data:`DETECTOR_TYPES` names the class that loads each kind, which
:func:`sefmodel.model.serialization.detector_class` imports on use, and the one loading function,
:func:`sefmodel.predict.load_detector`, dispatches on it. The other kind is the training-free AEROBLADE detector
(:mod:`sefmodel.model.aeroblade`), whose folder holds its networks' weights.

This module knows no detector class: :class:`~sefmodel.model.detector.SEFDetector`'s ``save_pretrained`` and
``from_pretrained`` call :func:`write_folder` and :func:`read_folder` with its parts (the model imports its file
format, never the code that loads or combines detectors).

Pickle-based checkpoints (``.bin``, ``.pt``, ``.pth``, ``.pkl``, ``.ckpt``...) can run arbitrary code while
they are being loaded, so a detector folder that contains one is refused outright, local or on the Hub.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import transformers
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from sefmodel.evaluation.threshold import THRESHOLD_NAME, CalibratedThreshold
from sefmodel.model.config import DetectorConfig
from sefmodel.model.dictconfig import DETECTOR_TYPE_KEY
from sefmodel.model.preprocess import PROCESSOR_NAME, ImageProcessor

CONFIG_NAME = "config.json"
DETECTOR_TYPES = {
    "sef": "sefmodel.model.detector:SEFDetector",
    "aeroblade": "sefmodel.model.aeroblade:AerobladeDetector",
}
"""Kind of detector (``config.json``'s ``detector_type``) -> ``module:class`` that loads it, imported on use
(:func:`sefmodel.model.serialization.detector_class`)."""
WEIGHTS_NAME = "model.safetensors"
BACKBONE_WEIGHTS_NAME = "backbone.safetensors"
AUTOENCODER_FOLDER = "autoencoders"  # an AEROBLADE folder's autoencoders, one subfolder each
DISTANCE_FOLDER = "distance"  # an AEROBLADE folder's feature-distance network
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib")
# What a detector folder may hold; everything else on a Hub repo is not downloaded. (The golden set's PNG files are
# decoded by Pillow, with its decompression-bomb guard, only by `sefmodel check`.)
GOLDEN_DIR = "golden"  # a golden set (sefmodel.evaluation.golden); saving other weights into the folder removes it
ALLOWED_PATTERNS = ["*.json", "*.safetensors", "*.md", f"{GOLDEN_DIR}/*.png"]


class UnsafeCheckpointError(ValueError):
    """A detector source holds pickle files, which can execute code when loaded."""


def refuse_pickles(names: Iterable[str], where: str) -> None:
    """Raise :class:`UnsafeCheckpointError` if any of ``names`` looks like a pickle file."""
    bad = sorted(n for n in names if n.lower().endswith(PICKLE_SUFFIXES))
    if bad:
        shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise UnsafeCheckpointError(
            f"refusing to load the detector from {where}: it contains pickle-format files ({shown}). "
            "Unpickling can execute arbitrary code, so sefmodel only reads safetensors weights and JSON "
            "config. "
            "If you trust the source, convert those files to safetensors (or delete them) and load again."
        )


def resolve_folder(
    path_or_repo_id: str | os.PathLike,
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    force_download: bool = False,
    token: str | bool | None = None,
    local_files_only: bool = False,
) -> Path:
    """A local folder holding a saved detector: ``path_or_repo_id`` itself, or a Hub snapshot of it.

    A Hub repo's file list is checked for pickles before anything is downloaded, and only JSON, safetensors
    and Markdown files are fetched.
    """
    path = Path(path_or_repo_id)
    if path.is_dir():
        refuse_pickles((str(p.relative_to(path)) for p in path.rglob("*") if p.is_file()), f"folder {path}")
        return path
    if path.exists():
        raise ValueError(f"{path} is a file; a detector is a folder holding {CONFIG_NAME} and {WEIGHTS_NAME}")
    repo_id = str(path_or_repo_id)
    if repo_id.startswith((".", "/", "~")) or repo_id.count("/") > 1:
        raise FileNotFoundError(f"no detector folder at {repo_id} (and it is not a Hub repo id of the form user/name)")

    from huggingface_hub import HfApi, snapshot_download

    if not local_files_only:
        files = HfApi().list_repo_files(repo_id, revision=revision, token=token)
        refuse_pickles(files, f"Hub repo {repo_id}")
    folder = snapshot_download(
        repo_id,
        revision=revision,
        cache_dir=cache_dir,
        force_download=force_download,
        token=token,
        local_files_only=local_files_only,
        allow_patterns=ALLOWED_PATTERNS,
    )
    return Path(folder)


def detector_type(config: dict[str, Any]) -> str:
    """The kind of detector a ``config.json`` dict describes (``"sef"`` when it does not say)."""
    kind = config.get(DETECTOR_TYPE_KEY, "sef") if isinstance(config, dict) else None
    if kind not in DETECTOR_TYPES:
        raise ValueError(f"unknown {DETECTOR_TYPE_KEY} {kind!r}; known: {', '.join(DETECTOR_TYPES)}")
    return kind


def folder_detector_type(folder: Path) -> str:
    """The kind of detector a local folder holds, from its ``config.json``."""
    path = Path(folder) / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{folder} is not a detector folder: {CONFIG_NAME} is missing")
    try:
        data = json.loads(path.read_text())
    except ValueError as e:
        raise ValueError(f"{path} is not JSON ({e})") from None
    return detector_type(data)


def weight_files(folder: Path) -> list[str]:
    """The weight files of a local detector folder (relative names, sorted): what a results file and a golden set's
    provenance hash. A trained detector's tensors (and a random backbone's); an AEROBLADE folder's stored networks."""
    folder = Path(folder)
    if folder_detector_type(folder) == "sef":
        return [n for n in (WEIGHTS_NAME, BACKBONE_WEIGHTS_NAME) if (folder / n).is_file()]
    return sorted(p.relative_to(folder).as_posix() for sub in (AUTOENCODER_FOLDER, DISTANCE_FOLDER)
                  for p in (folder / sub).rglob("*.safetensors"))  # fmt: skip


# ---- writing and reading a detector folder -------------------------------------------------------------------


@dataclass
class DetectorFolder:
    """What a detector folder holds, read without building the detector."""

    config: DetectorConfig  # its processor read from preprocessor_config.json (older folders: from config.json)
    trained: dict[str, torch.Tensor]
    backbone: dict[str, torch.Tensor] | None  # only for a backbone built from config
    threshold: CalibratedThreshold | None = None  # threshold.json, when calibrated on real images


def read_folder(folder: Path, map_location: str | torch.device = "cpu") -> DetectorFolder:
    """Read a local detector folder's config, image processor and tensors (JSON and safetensors only)."""
    config_path, weights_path = folder / CONFIG_NAME, folder / WEIGHTS_NAME
    kind = folder_detector_type(folder)
    if kind != "sef":
        raise ValueError(f"{folder} holds a detector of type {kind!r}, not a SEF detector: load it with "
                         "sefmodel.load_detector (or its own class)")  # fmt: skip
    if not weights_path.is_file():
        raise FileNotFoundError(f"{folder} is not a detector folder: {weights_path.name} is missing")
    processor = ImageProcessor.from_pretrained(folder) if (folder / PROCESSOR_NAME).is_file() else None
    config = DetectorConfig.from_dict(json.loads(config_path.read_text()), processor=processor)
    device = str(map_location)
    trained = load_file(str(weights_path), device=device)
    backbone = None
    if config.backbone_config is not None:
        path = folder / BACKBONE_WEIGHTS_NAME
        if not path.is_file():
            raise FileNotFoundError(f"{folder}: the backbone was built from a config, so {path.name} must be there")
        backbone = load_file(str(path), device=device)
    return DetectorFolder(config, trained, backbone, CalibratedThreshold.load(folder))


def write_folder(folder: Path, saved: DetectorFolder) -> None:
    """Write ``config.json``, ``preprocessor_config.json``, ``model.safetensors`` (+ ``backbone.safetensors`` for
    a random backbone: ``saved.backbone``) and ``threshold.json`` (removed when ``saved.threshold`` is None) into
    ``folder``; the model card and the golden set are the caller's (``SEFDetector.save_pretrained``)."""
    folder = Path(folder)
    config = saved.config
    data = config.to_dict()  # without the processor: one copy on disk, preprocessor_config.json
    (folder / CONFIG_NAME).write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    config.processor.save_pretrained(folder)
    meta = {
        "format": "pt",
        "sef_format_version": str(data["format_version"]),
        # LoRA tensors are keyed by the backbone's module names, which transformers may rename (5.18 did)
        "transformers_version": transformers.__version__,
    }
    save_file(_contiguous(saved.trained), str(folder / WEIGHTS_NAME), metadata=meta)
    backbone_file = folder / BACKBONE_WEIGHTS_NAME
    if saved.backbone is not None:
        # The one exception to "no backbone weights": a random backbone has no id to be re-loaded from.
        save_file(_contiguous(saved.backbone), str(backbone_file), metadata=meta)
    else:
        backbone_file.unlink(missing_ok=True)
    if saved.threshold is not None:
        saved.threshold.save(folder)
    else:  # a threshold belongs to the weights it was fitted with
        (folder / THRESHOLD_NAME).unlink(missing_ok=True)


def load_exact(model: nn.Module, state: dict[str, torch.Tensor], expected: dict[str, Any], source: str) -> None:
    """Load ``state`` into ``model``; its keys must be exactly ``expected``'s, shapes matching."""
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        with safe_open(source, framework="pt") as f:
            saved_with = (f.metadata() or {}).get("transformers_version")
        hint = ""
        if saved_with and saved_with != transformers.__version__:
            hint = (
                f". It was saved with transformers {saved_with} and this is {transformers.__version__}: module names"
                " that LoRA tensors are keyed by changed in between (5.18 renamed the ViT projections); load it with"
                " a transformers release on the same side of that change"
            )
        raise ValueError(
            f"{source} does not match this detector: missing {missing[:5]} ({len(missing)}), "
            f"unexpected {unexpected[:5]} ({len(unexpected)}){hint}"
        )
    for key, value in state.items():
        if tuple(value.shape) != tuple(expected[key].shape):
            raise ValueError(f"{source}: {key} has shape {tuple(value.shape)}, expected {tuple(expected[key].shape)}")
    model.load_state_dict(state, strict=False)


def _contiguous(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous() for k, v in state.items()}
