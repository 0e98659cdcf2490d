"""Shard files on disk: atomic, deterministic tar writing and the done-marker stats (DESIGN.md §4).

``shard-NNNNNN.tar`` is written as ``shard-NNNNNN.tar.partial``, flushed and fsynced, then renamed into place;
``shard-NNNNNN.stats.json`` is written the same way *after* it. A shard is done if and only if its stats file
exists, so a build killed at any moment leaves at worst a partial file that the next run overwrites.
Tar members carry fixed metadata (mtime 0, fixed owner and mode), so the same samples give the same bytes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path

from webdataset import TarWriter

SHARD_DIGITS = 6


def shard_name(index: int) -> str:
    return f"shard-{index:0{SHARD_DIGITS}d}"


def tar_path(out: Path, index: int) -> Path:
    return out / f"{shard_name(index)}.tar"


def stats_path(out: Path, index: int) -> Path:
    return out / f"{shard_name(index)}.stats.json"


def is_done(out: Path, index: int) -> bool:
    return stats_path(out, index).is_file()


def read_stats(out: Path, index: int) -> dict:
    return json.loads(stats_path(out, index).read_text())


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # not supported on every platform/filesystem
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".partial")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def atomic_write_json(path: Path, obj: dict) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


class ShardWriter:
    """Write one shard's samples to ``<tar>.partial``; :meth:`commit` renames it into place.

    Samples are dicts ``{"__key__": str, "<field>.<ext>": bytes, ..., "json": bytes}``.
    """

    def __init__(self, out: Path, index: int) -> None:
        self.path = tar_path(out, index)
        self.tmp = self.path.with_name(self.path.name + ".partial")
        self._file = open(self.tmp, "wb")  # noqa: SIM115 -- closed by commit() or abort()
        self._tar = TarWriter(self._file, encoder=False, mtime=0, user="sef", group="sef", mode=0o444)
        self.count = 0
        self.encodings: set[str] = set()  # extensions of the samples' real images

    def write(self, sample: dict) -> None:
        self._tar.write(sample)
        self.count += 1
        self.encodings.update(k.partition(".")[2] for k in sample if k.startswith("real."))

    def commit(self) -> tuple[int, str]:
        """Close, fsync and rename into place; returns (bytes, sha256) of the finished tar."""
        self._tar.close()  # closes the tar stream; the file object stays ours
        if not self._file.closed:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
        os.replace(self.tmp, self.path)
        _fsync_dir(self.path.parent)
        return self.path.stat().st_size, file_sha256(self.path)

    def abort(self) -> None:
        if not self._file.closed:
            # end the tar stream while its file is open (else it flushes into a closed file when collected); what
            # it writes is removed below, and an error (a full disk) changes nothing
            with contextlib.suppress(OSError, ValueError):
                self._tar.close()
            self._file.close()
        self.tmp.unlink(missing_ok=True)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
