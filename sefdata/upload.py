"""The publish core that ``sefdata publish`` and ``sefmodel publish`` share: stage, scan, upload.

Each command writes what it publishes into an emptied staging folder (:func:`empty_folder`), then hands it to
:func:`upload_staged`, which reads every staged file that can hold text (text files whatever their suffix, the
JSON header of a ``.safetensors`` file, every record of a ``.tar`` shard) for local paths of this machine
(:mod:`sefcore.privacy`: absolute, home-directory and parent-relative paths) and uploads only if there is none.
``--dry-run`` runs the same scan and stops before the upload, so a dry run that passes is what would be sent.
"""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

from sefcore.errors import SefError
from sefcore.hub import staged_files, upload_folder
from sefcore.privacy import json_local_paths, local_paths
from sefdata.shards import iter_members

# files that hold only pixels or tensors: nothing a path could hide in
_BINARY = frozenset({".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".bin", ".pt", ".pth"})
_SNIFF = 8192  # bytes read to tell a text file from a binary one


def empty_folder(staging: Path) -> Path:
    """``staging``, emptied (or created): a staged folder holds only what this publish wrote."""
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    return staging


def _text_local_paths(data: bytes, name: str) -> list[str]:
    text = data.decode("utf-8", errors="replace")
    if name.endswith(".json"):
        try:
            return json_local_paths(json.loads(text))
        except ValueError:
            pass
    return local_paths(text)


def staged_local_paths(path: Path) -> list[str]:
    """The local paths in one staged file, at most a few: a shard record by record (its JSON and text members),
    a safetensors file's header (its metadata), any other file whose start is text, whatever its suffix."""
    suffix = path.suffix.lower()
    found: list[str] = []
    if suffix == ".tar":
        for name, data in iter_members(str(path), lambda name: Path(name).suffix.lower() not in _BINARY):
            if b"\0" not in data[:_SNIFF]:
                found += _text_local_paths(data, name)
    elif suffix == ".safetensors":  # an 8-byte length, then a JSON header whose __metadata__ is free text
        with path.open("rb") as f:
            try:
                (size,) = struct.unpack("<Q", f.read(8))
                header = json.loads(f.read(size))
            except (struct.error, ValueError, MemoryError):
                raise SefError(f"{path.name} is not a readable safetensors file: nothing was uploaded") from None
        found = json_local_paths(header.get("__metadata__") or {})
    elif suffix not in _BINARY:
        with path.open("rb") as f:
            if b"\0" not in f.read(_SNIFF):  # text (JSON, Markdown, YAML, CSV, ...), not a binary
                found = _text_local_paths(path.read_bytes(), path.name)
    return found[:5]


def check_staged(folder: Path, *, hint: str) -> list[str]:
    """Every staged file (sorted relative paths) after scanning each; a file that holds a local path stops the
    publish with a one-line error naming it and ``hint`` (what the user can do)."""
    files = staged_files(folder)
    leaks = {name: found for name in files if (found := staged_local_paths(folder / name))}
    if leaks:
        name, found = next(iter(leaks.items()))
        more = f" (and {len(leaks) - 1} more staged file(s))" if len(leaks) > 1 else ""
        raise SefError(f"{name}{more} holds a local path of this machine ({found[0]!r}): nothing was uploaded; {hint}")
    return files


def upload_staged(
    folder: Path,
    repo_id: str,
    *,
    repo_type: str,
    command: str,
    hint: str,
    private: bool = False,
    revision: str | None = None,
    dry_run: bool = False,
    api=None,
) -> list[str]:
    """Scan the staged ``folder`` (:func:`check_staged`), then upload it to ``repo_id`` unless ``dry_run``.
    ``command`` names the commit (``sefdata publish``). Returns the staged files."""
    files = check_staged(folder, hint=hint)
    if not dry_run:
        upload_folder(folder, repo_id, repo_type=repo_type, private=private, revision=revision, api=api,
                      message=f"{command} ({len(files)} files)")  # fmt: skip
    return files
