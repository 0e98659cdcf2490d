"""Listing real images from the sources a user names, in a deterministic order, with stable keys: the reader.

A build first *lists* its inputs (paths, tar member offsets, dataset row numbers) without reading any image, plans
shards from that listing (:mod:`sefdata.plan`), and only then does each rank read the bytes of its own shards'
inputs, as img2dataset separates its reader from its shard planner and writers. A source is one of:

* a folder: every file with an image extension below it, recursively, sorted by relative path (other files are
  ignored; a file with an image extension that is not an image is counted as ``not_an_image``);
* an image file;
* a text file (``.txt``, ``.lst``, ``.list``): one path per line, relative to the text file's folder; blank lines and
  lines starting with ``#`` are ignored;
* WebDataset tars: a ``.tar`` path, a glob or brace pattern (``shards/train-{000..009}.tar``), an http(s) URL or an
  ``hf://datasets/OWNER/NAME/...`` path, opened through fsspec; the listing reads the tar headers only (seeking
  over the data) and a sample's image is read from its offset; the image is the sample's ``real.*`` field if it
  has one, else its first field with an image extension (or the one named by ``image_field``);
* a Hugging Face dataset: a folder written by ``Dataset.save_to_disk`` (rows read by index), or a folder of data
  files or a Hub id, which can only be *streamed*: its listing streams the rows once, keeping only their numbers,
  and a rank's reads stream it again, keeping only the rows it builds.

Keys are derived from where the image came from, made of ``[A-Za-z0-9_-]`` only (WebDataset splits keys at the
first dot) and made unique by a short hash of the full source id, so dotted, unicode and same-stem names never
collide. ``SourceItem.source`` says where an image came from *relative to the source it was found in* (a path
below the folder, a list's line, ``TAR_NAME#KEY``, ``DATASET/SPLIT/ROW``), never an absolute path of the
building machine: it goes into every sample's record and into what ``publish`` uploads.
"""

from __future__ import annotations

import glob
import hashlib
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from sefcore.errors import SefError, SkipSample
from sefcore.imagefiles import image_files, is_image_name
from sefcore.privacy import is_local_path
from sefdata.shards import READ_ERRORS, field_name, index_samples, is_image_key, open_url

LIST_EXTENSIONS = frozenset({".txt", ".lst", ".list"})
JPEG_MAGIC = b"\xff\xd8\xff"
SNIFF_BYTES = len(JPEG_MAGIC)


@dataclass(slots=True)
class SourceItem:
    """One input, listed but not read."""

    key: str  # stable, unique, dot-free
    source: str  # where it came from, relative to its source (recorded per sample; never a local absolute path)
    read: Callable[[], bytes]  # the encoded image; called only by the rank that builds this item's shard
    peek: Callable[[int], bytes]  # the first n bytes (the format's magic), without reading the rest where possible


def make_key(source_id: str) -> str:
    """A readable, dot-free, unique key for a source id."""
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", source_id).strip("_")[-64:] or "item"
    return f"{stem}-{hashlib.sha1(source_id.encode()).hexdigest()[:10]}"


def is_jpeg(prefix: bytes) -> bool:
    """Whether encoded image bytes starting with ``prefix`` are a JPEG (SOI marker then another marker)."""
    return prefix[:SNIFF_BYTES] == JPEG_MAGIC


# --- files ---------------------------------------------------------------------------------------------------------


def _read_head(path: Path, n: int) -> bytes:
    with open(path, "rb") as f:
        return f.read(n)


def _file_item(path: Path, source_id: str) -> SourceItem:
    return SourceItem(
        key=make_key(source_id), source=source_id, read=path.read_bytes, peek=lambda n, p=path: _read_head(p, n)
    )


def _iter_folder(folder: Path) -> Iterator[SourceItem]:
    for p in image_files(folder):
        yield _file_item(p, p.relative_to(folder).as_posix())


def _list_entry_id(line: str, listing: Path) -> str:
    """What a list's line is recorded as: the line itself unless it is a local path (absolute, ``~/``, ``../``:
    :mod:`sefcore.privacy`), then its path relative to the list's folder where it lies below it, else its file name
    (the key still comes from the full line)."""
    if not is_local_path(line):
        return line
    path = (listing.parent / Path(line).expanduser()).resolve()
    try:
        return path.relative_to(listing.parent.resolve()).as_posix()
    except ValueError:
        return path.name


def _iter_list(listing: Path) -> Iterator[SourceItem]:
    for line in listing.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        path = (listing.parent / line).expanduser()
        item = _file_item(path, _list_entry_id(line, listing))
        item.key = make_key(line)
        yield item


# --- WebDataset tars -----------------------------------------------------------------------------------------------


def _read_range(url: str, offset: int, size: int) -> bytes:
    with open_url(url) as f:
        f.seek(offset)
        return f.read(size)


def _pick_image_field(fields: list[str], image_field: str | None) -> str | None:
    if image_field is not None:  # a field is "EXT" or "NAME.EXT", lowercased as webdataset reads it
        return image_field.lower() if image_field.lower() in fields else None
    for k in fields:
        if field_name(k) == "real" and is_image_key(k):
            return k
    return next((k for k in fields if is_image_key(k)), None)


def _tar_name(url: str) -> str:
    return PurePosixPath(url.split("://", 1)[-1]).name


def _iter_tars(urls: list[str], image_field: str | None) -> Iterator[SourceItem]:
    for url in urls:
        local = "://" not in url
        name = _tar_name(url)
        try:
            with open_url(url) as f:  # the listing reads the tar headers alone
                samples = list(index_samples(f))
        except READ_ERRORS as e:
            raise SefError(f"cannot read tar source {url!r} ({type(e).__name__}: {e})") from None
        for key, fields in samples:
            source_id = f"{name.removesuffix('.tar')}/{key}"
            field = _pick_image_field(list(fields), image_field)
            offset, size = fields[field] if field else (0, 0)
            # a sample with no image field is kept (and counted as not_an_image), never silently dropped
            yield SourceItem(
                key=make_key(source_id),
                source=f"{name if local else url}#{key}",  # a URL is public; a local tar is named, not located
                read=lambda u=url, o=offset, s=size: _read_range(u, o, s) if s else b"",
                peek=lambda n, u=url, o=offset, s=size: _read_range(u, o, min(n, s)) if s else b"",
            )


def _expand_pattern(pattern: str) -> list[str]:
    from braceexpand import braceexpand

    out: list[str] = []
    for p in braceexpand(pattern):
        local = not p.startswith(("hf://", "http://", "https://"))
        out.extend(sorted(glob.glob(p)) if local and any(c in p for c in "*?[") else [p])
    return out


# --- Hugging Face datasets -----------------------------------------------------------------------------------------


def _image_bytes(value: object) -> bytes:
    """The encoded image in a dataset cell: ``{"bytes", "path"}`` (datasets' Image storage) or raw bytes.
    Anything else reads as empty, which the build skips as ``empty``."""
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, dict):
        if value.get("bytes") is not None:
            return value["bytes"]
        if value.get("path"):
            return Path(value["path"]).read_bytes()
    return b""


class _Stream:
    """Reads rows of a dataset that can only be streamed, in one pass per run of requests: rows are fetched in
    order, the ones a rank builds (``wanted``) are kept from when they pass until they are read, all others are
    dropped as they pass. A request behind the stream's position restarts it. Thread-safe."""

    def __init__(self, open_rows: Callable[[], Iterator[dict]], column: str, ref: str) -> None:
        self._open_rows, self._column, self._ref = open_rows, column, ref
        self._rows: Iterator[dict] | None = None
        self._position = 0
        self._kept: dict[int, object] = {}
        self.wanted: set[int] = set()
        self._lock = threading.Lock()

    def cell(self, row: dict) -> object:
        if self._column not in row:
            raise SefError(f"dataset {self._ref!r} has no column {self._column!r}; columns: {', '.join(row)}")
        return row[self._column]

    def rows(self) -> Iterator[object]:
        """Every row's image cell, in order (the listing pass)."""
        for row in self._open_rows():
            yield self.cell(row)

    def read(self, index: int) -> bytes:
        with self._lock:
            if index in self._kept:
                return _image_bytes(self._kept.pop(index))
            if self._rows is None or index < self._position:
                self._rows, self._position = iter(self._open_rows()), 0
            for row in self._rows:
                i = self._position
                self._position += 1
                if i == index:
                    return _image_bytes(self.cell(row))
                if i in self.wanted:
                    self._kept[i] = self.cell(row)
        raise OSError(f"row {index} of {self._ref!r} is no longer in the dataset")


def _open_hf_dataset(ref: str, split: str):
    import datasets

    path = Path(ref)
    try:
        if (path / "state.json").is_file() or (path / "dataset_dict.json").is_file():
            ds = datasets.load_from_disk(str(path))
            return ds[split] if isinstance(ds, datasets.DatasetDict) else ds
        return datasets.load_dataset(ref, split=split, streaming=True)
    except Exception as e:
        hint = "" if path.exists() else " It is not a local path either."
        raise SefError(
            f"source {ref!r} could not be opened as a Hugging Face dataset "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}).{hint}"
        ) from None


def _iter_hf_dataset(ref: str, image_field: str | None, split: str) -> Iterator[SourceItem]:
    import datasets

    ds = _open_hf_dataset(ref, split)
    features = ds.features
    if features is None and image_field:  # a streamed dataset whose features are only known once read
        column, rows = image_field, ds  # (select_columns would fail on a missing column only mid-iteration)
    else:
        features = features or {}
        columns = [image_field] if image_field else [k for k, f in features.items() if isinstance(f, datasets.Image)]
        if not columns or columns[0] not in features:
            raise SefError(
                f"dataset {ref!r} has no image column{f' named {image_field!r}' if image_field else ''}; "
                f"columns: {', '.join(features) or 'unknown until read'} (name one with --image-field)"
            )
        column = columns[0]
        rows = ds.cast_column(column, datasets.Image(decode=False)).select_columns([column])
    path = Path(ref)
    name = path.name if path.exists() else ref

    def item(index: int, read: Callable[[], bytes], peek: Callable[[int], bytes]) -> SourceItem:
        source_id = f"{name}/{split}/{index:09d}"
        return SourceItem(key=make_key(source_id), source=source_id, read=read, peek=peek)

    if isinstance(rows, datasets.Dataset):  # on disk, memory-mapped: any row is read by its number
        for index in range(len(rows)):

            def read(i: int = index) -> bytes:
                return _image_bytes(rows[i][column])

            yield item(index, read, lambda n, r=read: r()[:n])
        return
    stream = _Stream(lambda: iter(rows), column, ref)
    for index, cell in enumerate(stream.rows()):
        try:  # the listing pass has the row anyway: keep its magic only
            head = _image_bytes(cell)[:SNIFF_BYTES]
        except OSError:  # a cell pointing at a vanished file: reading it later skips it as missing
            head = b""
        yield item(index, _StreamRow(stream, index), lambda n, h=head: h[:n])


@dataclass(frozen=True)
class _StreamRow:
    """``SourceItem.read`` of a streamed dataset's row."""

    stream: _Stream
    index: int

    def __call__(self) -> bytes:
        return self.stream.read(self.index)


def want(items: list[SourceItem]) -> None:
    """Tell the streamed datasets among ``items``' sources which rows this rank reads next, so that their
    streams keep exactly those rows as they pass (other sources read any item directly and ignore this)."""
    rows = [item.read for item in items if isinstance(item.read, _StreamRow)]
    wanted: dict[int, tuple[_Stream, set[int]]] = {}
    for r in rows:
        wanted.setdefault(id(r.stream), (r.stream, set()))[1].add(r.index)
    for stream, indices in wanted.values():  # swapped whole: reads in other threads see the old set or the new one
        stream.wanted = indices


# --- all sources ---------------------------------------------------------------------------------------------------


def iter_sources(sources: list[str], *, image_field: str | None = None, split: str = "train") -> Iterator[SourceItem]:
    """All items of all sources, in order: sources as given, items deterministically within each."""
    seen: dict[str, int] = {}
    for ref in sources:
        for item in _iter_one(ref, image_field, split):
            if item.key in seen:  # the same source listed twice: both are kept, under distinct keys
                seen[item.key] += 1
                item.key = make_key(f"{item.source}#{seen[item.key]}")
            seen.setdefault(item.key, 0)
            yield item


def _iter_one(ref: str, image_field: str | None, split: str) -> Iterator[SourceItem]:
    path = Path(ref).expanduser()
    if path.is_dir():
        if (path / "state.json").is_file() or (path / "dataset_dict.json").is_file() or any(path.glob("*.parquet")):
            yield from _iter_hf_dataset(str(path), image_field, split)
        else:
            yield from _iter_folder(path)
    elif path.is_file():
        if path.suffix.lower() in LIST_EXTENSIONS:
            yield from _iter_list(path)
        elif path.suffix.lower() == ".tar":
            yield from _iter_tars([str(path)], image_field)
        elif is_image_name(path.name):
            yield _file_item(path, path.name)
        else:
            raise SefError(f"source {ref!r} is a file but not an image, a .tar or a list of paths (.txt)")
    elif ref.startswith(("hf://", "http://", "https://")) or any(c in ref for c in "{*?["):
        urls = _expand_pattern(ref)
        if not urls:
            raise SefError(f"source pattern {ref!r} matches no file")
        yield from _iter_tars(urls, image_field)
    elif ref.count("/") == 1 and not ref.startswith((".", "/", "~")):
        yield from _iter_hf_dataset(ref, image_field, split)
    else:
        raise SefError(
            f"source {ref!r} not found: not a folder, file, tar pattern or Hugging Face dataset id (owner/name)"
        )


def read_item(item: SourceItem) -> bytes:
    """The item's bytes; a source that vanished or cannot be read raises SkipSample('missing')."""
    try:
        return item.read()
    except OSError as e:
        raise SkipSample("missing", f"{type(e).__name__}: {e}") from None


def peek_item(item: SourceItem, n: int = SNIFF_BYTES) -> bytes:
    """The item's first ``n`` bytes, or b"" if it cannot be read (reading it later then skips it as missing)."""
    try:
        return item.peek(n)
    except OSError:
        return b""
