"""Where detector files come from, and the rule that keeps loading safe: safetensors and JSON only.

Pickle-based checkpoints (``.bin``, ``.pt``, ``.pth``, ``.pkl``, ``.ckpt``...) can run arbitrary code while
they are being loaded, so a detector folder that contains one is refused outright, local or on the Hub.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
BACKBONE_WEIGHTS_NAME = "backbone.safetensors"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib")
# What a detector folder may hold; everything else on a Hub repo is not downloaded.
ALLOWED_PATTERNS = ["*.json", "*.safetensors", "*.md"]


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
