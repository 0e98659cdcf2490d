"""A build on disk (DESIGN.md §4): the shard writer, the reader beside it, the per-shard stats and the manifest.

**Writing.** ``shard-NNNNNN.tar`` is written as ``shard-NNNNNN.tar.partial``, flushed and fsynced, then renamed into
place; ``shard-NNNNNN.stats.json`` is written the same way *after* it. A shard is done if and only if its stats file
exists, so a build killed at any moment leaves at worst a partial file that the next run overwrites.
Tar members carry fixed metadata (mtime 0, fixed owner and mode), so the same samples give the same bytes.

**Reading.** Everything that reads a build goes through here: training (:mod:`sefmodel.train.data`), ``preview``,
``verify``, ``publish`` and its scan of staged shards, and a build's WebDataset tar *sources*
(:mod:`sefdata.sources`). A shard opens from a local path or any fsspec URL (:func:`open_url`) and reads as plain
``webdataset`` reads it (:func:`iter_samples`): a member's key is its name up to the first dot of its basename, its
field the rest, lowercased (:func:`split_name`). ``manifest.json`` is written by
:func:`sefdata.manifest.write_manifest` and read only by :class:`Manifest`.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import tarfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from webdataset import TarWriter
from webdataset.tariterators import base_plus_ext

from sefcore.errors import SefError
from sefcore.hub import file_sha256
from sefcore.imagefiles import IMAGE_EXTENSIONS

SHARD_DIGITS = 6
MANIFEST_FILE = "manifest.json"
# what reading a damaged tar raises: truncated or not a tar (TarError, OSError), a duplicate member (ValueError)
READ_ERRORS = (OSError, tarfile.TarError, ValueError)


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
        self.encodings.add(sample_encoding(sample))

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


# ---- reading ---------------------------------------------------------------------------------------------------


def is_url(ref: str) -> bool:
    return "://" in ref


def open_url(url: str) -> IO[bytes]:
    """A seekable binary file: a local path, or any fsspec URL (``hf://``, which huggingface_hub registers,
    ``http(s)://``, ``s3://``, ``file://``...)."""
    if is_url(url):
        import fsspec

        return fsspec.open(url, "rb").open()
    return open(url, "rb")


def split_name(name: str) -> tuple[str, str] | None:
    """``(key, field)`` of a tar member by webdataset's rule: the key is the name up to the first dot of its basename
    (folders included), the field the rest, lowercased; None for a name without one.
    ``a/b.Real.PNG`` -> ``("a/b", "real.png")``."""
    key, rest = base_plus_ext(name)
    return None if key is None else (key, rest.lower())


def field_name(key: str) -> str:
    """The field a sample key holds: ``real.png`` -> ``real``, ``json`` -> ``json``."""
    return key.split(".", 1)[0]


def is_image_key(key: str) -> bool:
    """Whether a sample key (``real.png``, ``jpg``) holds an image, by its extension."""
    return key.rsplit(".", 1)[-1].lower() in IMAGE_EXTENSIONS


def field_keys(sample: dict[str, Any]) -> dict[str, str]:
    """Each field of a raw sample with its key, in the sample's order, metadata (``__key__``, ``__url__``) left out:
    ``{"real": "real.png", "vae": "vae.png", "json": "json"}``."""
    out: dict[str, str] = {}
    for key in sample:
        if not key.startswith("__"):
            out.setdefault(field_name(key), key)
    return out


def sample_fields(sample: dict[str, Any]) -> list[str]:
    """Image fields of a raw sample (``real`` first), e.g. ``["real", "vae", "sr"]``."""
    names = [f for f, key in field_keys(sample).items() if is_image_key(key)]
    return sorted(names, key=lambda n: n != "real")


def field_key(sample: dict[str, Any], field: str) -> str:
    """The key of a raw sample's image ``field`` (``real`` -> ``real.jpg``); ValueError naming the fields it has."""
    for key in sample:
        if field_name(key) == field and is_image_key(key):
            return key
    present = ", ".join(sample_fields(sample))
    raise ValueError(f"sample {sample.get('__key__')!r} in {sample.get('__url__')} has no field {field!r} ({present})")


def sample_encoding(sample: dict[str, Any]) -> str | None:
    """A sample's encoding, its real image's extension (``jpg``, ``png``); None without a real."""
    key = field_keys(sample).get("real")
    return key.rsplit(".", 1)[-1] if key and "." in key else None


def iter_samples(url: str) -> Iterator[dict[str, Any]]:
    """Raw samples of one tar, in tar order, exactly as webdataset reads them:
    ``{"__key__", "__url__", "<field>.<ext>": bytes, ..., "json": bytes}``. A damaged tar raises one of
    :data:`READ_ERRORS`."""
    from webdataset.tariterators import group_by_keys, tar_file_expander

    with open_url(url) as stream:
        yield from group_by_keys(tar_file_expander([{"url": url, "stream": stream}]))


def iter_members(url: str, select: Callable[[str], bool] | None = None) -> Iterator[tuple[str, bytes]]:
    """``(name, bytes)`` of every regular file of a tar, in order, including the metadata files webdataset skips;
    a member whose name ``select`` refuses is passed over unread."""
    with open_url(url) as f, tarfile.open(fileobj=f, mode="r:*") as tar:
        for member in tar:
            if member.isfile() and (select is None or select(member.name)):
                yield member.name, tar.extractfile(member).read()


def index_samples(stream: IO[bytes]) -> Iterator[tuple[str, dict[str, tuple[int, int]]]]:
    """``(key, {field: (offset, size)})`` per sample of an open, seekable tar, in order, from its headers alone
    (tarfile seeks over each member's data), so that one field can be read later by a range read."""
    key, fields = None, {}
    with tarfile.open(fileobj=stream, mode="r:") as tar:
        for member in tar:
            split = split_name(member.name) if member.isfile() else None
            if split is None:
                continue
            if split[0] != key and key is not None:
                yield key, fields
                fields = {}
            key = split[0]
            fields[split[1]] = (member.offset_data, member.size)
    if key is not None:
        yield key, fields


@dataclass
class ShardSet:
    """Resolved shard URLs/paths, in a deterministic order, and the sample fields (``real`` + fakes) if known."""

    urls: list[str]
    fields: list[str] | None

    def __len__(self) -> int:
        return len(self.urls)


def _glob_url(pattern: str) -> list[str]:
    import fsspec

    fs, path = fsspec.core.url_to_fs(pattern)
    protocol = pattern.split("://", 1)[0]
    return [f"{protocol}://{p}" for p in sorted(fs.glob(path))]


def resolve_shards(sources: Sequence[str]) -> ShardSet:
    """Expand shard sources into a list of tars.

    A source is a build folder (its ``manifest.json`` shard list, else its ``*.tar`` files), a ``.tar`` path or URL,
    or a brace/glob pattern (``shards/shard-{000000..000009}.tar``, ``hf://datasets/me/x/shard-*.tar``). Fields come
    from the manifest when there is one, else from the first sample.
    """
    from braceexpand import braceexpand

    if isinstance(sources, str):
        sources = [sources]
    urls: list[str] = []
    fields: list[str] | None = None
    for source in sources:
        source = str(source)
        for ref in braceexpand(source):
            if (not is_url(ref) and Path(ref).is_dir()) or (is_url(ref) and not ref.endswith(".tar")):
                manifest = Manifest.find(ref)
                if manifest is not None:
                    urls.extend(manifest.shard_urls(ref))
                    fields = fields or manifest.fields
                elif is_url(ref):
                    urls.extend(_glob_url(f"{ref.rstrip('/')}/*.tar"))
                else:
                    urls.extend(sorted(str(p) for p in Path(ref).glob("*.tar")))
            elif any(c in ref for c in "*?["):
                urls.extend(_glob_url(ref) if is_url(ref) else sorted(glob.glob(ref)))
            elif is_url(ref) or Path(ref).is_file():
                urls.append(ref)
            else:
                raise FileNotFoundError(f"shard source {source!r}: {ref!r} is not a folder, a .tar file or a URL")
    if not urls:
        raise FileNotFoundError(f"no shards (*.tar) found in {', '.join(map(str, sources))}")
    if fields is None:
        fields = sample_fields(next(iter_samples(urls[0])))
    return ShardSet(urls, fields)


# ---- the manifest ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ShardEntry:
    """One shard of the manifest's ``shardlist`` (a wids shard-index entry and what sefdata adds to it)."""

    url: str  # relative to the build folder
    nsamples: int
    filesize: int | None = None
    sha256: str | None = None
    encoding: str | None = None  # its samples' encoding (``jpg``); None before format_version 2
    config_hash: str | None = None

    @classmethod
    def from_dict(cls, entry: dict[str, Any]) -> ShardEntry:
        optional = {k: entry.get(k) for k in ("filesize", "sha256", "encoding", "config_hash")}
        return cls(str(entry["url"]), int(entry["nsamples"]), **optional)


@dataclass(frozen=True)
class Totals:
    inputs: int
    written: int
    failed: dict[str, int]  # skip reason -> inputs

    @classmethod
    def from_dict(cls, totals: dict[str, Any]) -> Totals:
        return cls(int(totals["inputs"]), int(totals["written"]), dict(totals["failed"]))


@dataclass
class Manifest:
    """``manifest.json``, typed as its readers use it. A plain wids shard index (no ``sef`` block) loads too, with
    ``format_version`` None; ``raw`` keeps the whole file, keys this class does not name included."""

    shards: list[ShardEntry]
    name: str | None = None
    format_version: int | None = None
    fields: list[str] | None = None  # "real", then the fakes in the build's generator order
    generators: dict[str, dict] = field(default_factory=dict)  # field -> generator, params, model ids and hashes
    config: dict[str, Any] = field(default_factory=dict)  # the resolved build config, as published
    config_hash: str | None = None
    totals: Totals | None = None
    provenance: dict[str, Any] | None = None  # what made the build (sefdata.provenance); None before it existed
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = MANIFEST_FILE) -> Manifest:
        try:
            sef = data.get("sef") or {}
            return cls(
                shards=[ShardEntry.from_dict(entry) for entry in data["shardlist"]],
                name=data.get("name"),
                format_version=sef.get("format_version"),
                fields=sef.get("fields"),
                generators=sef.get("generators") or {},
                config=sef.get("config") or {},
                config_hash=sef.get("config_hash"),
                totals=Totals.from_dict(sef["totals"]) if sef.get("totals") else None,
                provenance=data.get("provenance"),
                raw=data,
            )
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise SefError(
                f"{where} is not a shard index ({type(e).__name__}: {e}); rewrite it with `sefdata manifest FOLDER`"
            ) from None

    @classmethod
    def find(cls, ref: str | Path) -> Manifest | None:
        """The manifest of a build folder, or a manifest file itself (local or fsspec URL); None where there is none.
        One that does not parse raises SefError."""
        ref = str(ref)
        path = ref if ref.endswith(".json") else f"{ref.rstrip('/')}/{MANIFEST_FILE}"
        try:
            with open_url(path) as f:
                text = f.read()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None
        try:
            data = json.loads(text)
        except ValueError as e:
            raise SefError(f"{path} does not parse ({e}); rewrite it with `sefdata manifest FOLDER`") from None
        return cls.from_dict(data, path)

    @classmethod
    def load(cls, ref: str | Path) -> Manifest:
        """:meth:`find`, with a SefError where the folder has no manifest."""
        manifest = cls.find(ref)
        if manifest is None:
            raise SefError(f"{str(ref)!r} has no {MANIFEST_FILE}: finish the build (and `sefdata manifest`) first")
        return manifest

    def shard_urls(self, folder: str | Path) -> list[str]:
        """The shards' paths or URLs, for the build folder ``folder`` (a path or URL)."""
        base = str(folder).rstrip("/")
        return [f"{base}/{s.url}" for s in self.shards]
