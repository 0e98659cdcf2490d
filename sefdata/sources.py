"""Listing real images from the sources a user names, in a deterministic order, with stable keys.

A source is one of:

* a folder: every file with an image extension below it, recursively, sorted by relative path (other files are
  ignored; a file with an image extension that is not an image is counted as ``not_an_image``);
* an image file;
* a text file (``.txt``, ``.lst``, ``.list``): one path per line, relative to the text file; blank lines and lines
  starting with ``#`` are ignored;
* WebDataset tars: a ``.tar`` path, a glob or brace pattern (``shards/train-{000..009}.tar``), an http(s) URL or an
  ``hf://datasets/OWNER/NAME/...`` path; the image is the sample's ``real.*`` field if it has one, else its first
  field with an image extension (or the one named by ``image_field``);
* a Hugging Face dataset: a local folder written by ``Dataset.save_to_disk`` or holding data files, or a Hub id
  (streamed); the image column is the first ``Image`` feature (or ``image_field``).

Keys are derived from where the image came from, made of ``[A-Za-z0-9_-]`` only (WebDataset splits keys at the
first dot) and made unique by a short hash of the full source id, so dotted, unicode and same-stem names never
collide.
"""

from __future__ import annotations

import glob
import hashlib
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from sefdata.errors import SefError, SkipSample

IMAGE_EXTENSIONS = frozenset({"jpg", "jpeg", "jpe", "png", "webp", "bmp", "tif", "tiff", "gif"})
LIST_EXTENSIONS = frozenset({".txt", ".lst", ".list"})


@dataclass
class SourceItem:
    key: str  # stable, unique, dot-free
    source: str  # human-readable id of where it came from (path, tar member, dataset row)
    read: Callable[[], bytes]  # lazy: bytes are only read for samples this rank builds


def make_key(source_id: str) -> str:
    """A readable, dot-free, unique key for a source id."""
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", source_id).strip("_")[-64:] or "item"
    return f"{stem}-{hashlib.sha1(source_id.encode()).hexdigest()[:10]}"


def _ext(name: str) -> str:
    return name.rsplit(".", 1)[-1].lower() if "." in name else ""


def _file_item(path: Path, source_id: str) -> SourceItem:
    return SourceItem(key=make_key(source_id), source=str(path), read=path.read_bytes)


def _iter_folder(folder: Path) -> Iterator[SourceItem]:
    files = sorted(
        (p for p in folder.rglob("*") if p.is_file() and _ext(p.name) in IMAGE_EXTENSIONS),
        key=lambda p: p.relative_to(folder).as_posix(),
    )
    for p in files:
        yield _file_item(p, p.relative_to(folder).as_posix())


def _iter_list(listing: Path) -> Iterator[SourceItem]:
    for line in listing.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        path = (listing.parent / line).expanduser()
        yield SourceItem(key=make_key(line), source=str(path), read=path.read_bytes)


def _open_url(url: str):
    if url.startswith("hf://"):
        from huggingface_hub import HfFileSystem

        return HfFileSystem().open(url, "rb")
    if url.startswith(("http://", "https://")):
        from urllib.request import urlopen

        return urlopen(url)
    return open(url, "rb")


def _pick_image_field(sample: dict, image_field: str | None) -> str | None:
    if image_field is not None:
        return image_field if image_field in sample else None
    fields = [k for k in sample if not k.startswith("__")]
    for k in fields:
        if k.split(".")[0] == "real" and _ext(k) in IMAGE_EXTENSIONS:
            return k
    return next((k for k in fields if _ext(k) in IMAGE_EXTENSIONS), None)


def _iter_tars(urls: list[str], image_field: str | None) -> Iterator[SourceItem]:
    from webdataset.tariterators import group_by_keys, tar_file_expander

    for url in urls:
        name = url.rsplit("/", 1)[-1].removesuffix(".tar")
        try:
            stream = _open_url(url)
        except Exception as e:
            raise SefError(f"cannot open tar source {url!r} ({type(e).__name__}: {e})") from None
        with stream:
            for sample in group_by_keys(tar_file_expander([{"url": url, "stream": stream}])):
                field = _pick_image_field(sample, image_field)
                source_id = f"{name}/{sample['__key__']}"
                data: bytes = sample[field] if field else b""
                # a sample with no image field is kept (and counted as not_an_image), never silently dropped
                yield SourceItem(key=make_key(source_id), source=f"{url}#{sample['__key__']}", read=lambda d=data: d)


def _expand_pattern(pattern: str) -> list[str]:
    from braceexpand import braceexpand

    out: list[str] = []
    for p in braceexpand(pattern):
        local = not p.startswith(("hf://", "http://", "https://"))
        out.extend(sorted(glob.glob(p)) if local and any(c in p for c in "*?[") else [p])
    return out


def _iter_hf_dataset(ref: str, image_field: str | None, split: str) -> Iterator[SourceItem]:
    import datasets

    path = Path(ref)
    try:
        if (path / "state.json").is_file() or (path / "dataset_dict.json").is_file():
            ds = datasets.load_from_disk(str(path))
            if isinstance(ds, datasets.DatasetDict):
                ds = ds[split]
        else:
            ds = datasets.load_dataset(ref, split=split, streaming=True)
    except Exception as e:
        hint = "" if path.exists() else " It is not a local path either."
        raise SefError(
            f"source {ref!r} could not be opened as a Hugging Face dataset "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}).{hint}"
        ) from None
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
    name = path.name if path.exists() else ref
    for index, row in enumerate(rows):
        if column not in row:
            raise SefError(f"dataset {ref!r} has no column {column!r}; columns: {', '.join(row)}")
        source_id = f"{name}/{split}/{index:09d}"
        yield SourceItem(key=make_key(source_id), source=source_id, read=lambda v=row[column]: _image_bytes(v))


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
        elif _ext(path.name) in IMAGE_EXTENSIONS:
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
