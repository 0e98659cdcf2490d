"""Encoding policies for the stored images (DESIGN.md §4).

The real and every fake of a sample are encoded by the *same* rule, so the only difference a detector can learn is
the generator's artifact, not the file format:

* ``match`` (default): a JPEG source gives JPEG output with the source's quantisation tables and chroma
  subsampling; any other source (PNG, WebP, TIFF, BMP, GIF, ...) gives lossless PNG.
* ``png``: lossless PNG for everything.
* ``jpeg:Q`` / ``webp:Q``: JPEG (IJG tables for quality Q, 4:2:0) or lossy WebP at quality Q for everything.

An sRGB-or-other RGB ICC profile on the source is embedded in the real and all fakes alike.
The real is re-encoded too (after the shared crop), so real and fakes have the same encoding history.

PNG is written by :func:`encode_png`: rows filtered with PNG's Up filter in numpy, deflated by libdeflate (through
``imagecodecs``) at level 1. Per core on 512-px photo crops that is several times the images/s of Pillow at zlib
level 1, in fewer bytes (``bench/results/encoding.json``); on a GPU build, encoding and not the models limits
throughput. JPEG and WebP are written by Pillow (libjpeg-turbo, libwebp), which writes a JPEG with given
quantisation tables. Pillow encodes into a Python buffer with the GIL held and into a file descriptor with it released,
so on Linux :func:`encode` hands Pillow a per-thread in-memory file (``memfd``): the build's encoder threads then
write JPEGs side by side instead of one at a time (same bytes; ``bench/results/encoding.json``, ``on_all_cores``).
"""

from __future__ import annotations

import io
import os
import struct
import threading
import zlib
from dataclasses import dataclass

import imagecodecs
import numpy as np
from PIL import Image

from sefcore.errors import SefError
from sefcore.imageio import SUBSAMPLING_NAMES, DecodedImage

POLICIES = ("match", "png", "jpeg:Q", "webp:Q")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@dataclass(frozen=True)
class EncodingPolicy:
    kind: str  # "match" | "png" | "jpeg" | "webp"
    quality: int | None = None

    @classmethod
    def parse(cls, text: str) -> EncodingPolicy:
        kind, _, q = text.strip().lower().partition(":")
        if kind in ("match", "png") and not q:
            return cls(kind)
        if kind in ("jpeg", "jpg", "webp") and q:
            try:
                quality = int(q)
            except ValueError:
                quality = -1
            if not 1 <= quality <= 100:
                raise SefError(f"--format {text!r}: the quality must be an integer from 1 to 100")
            return cls("jpeg" if kind == "jpg" else kind, quality)
        raise SefError(f"--format {text!r} is not a known policy; use one of {', '.join(POLICIES)}")

    def __str__(self) -> str:
        return self.kind if self.quality is None else f"{self.kind}:{self.quality}"


@dataclass(frozen=True)
class Encoding:
    """A concrete way to write one sample's images: the file extension and Pillow's save arguments."""

    ext: str  # field extension in the shard: "jpg", "png" or "webp"
    pil_format: str
    options: tuple[tuple[str, object], ...]  # Pillow save kwargs, hashable

    def describe(self) -> dict:
        """The sample record's ``encoding``: the same keys and types for every encoding (``datasets`` infers one
        schema from a shard's first samples): ``quality`` 0 where JPEG tables are the source's or the format is
        lossless, ``subsampling`` "" where the format has none, ``icc_profile_bytes`` 0 without a profile."""
        options = dict(self.options)
        sampling = options.get("subsampling")
        return {
            "format": self.pil_format,
            "quality": int(options.get("quality", 0)) if self.pil_format != "PNG" else 0,
            "subsampling": SUBSAMPLING_NAMES.get(sampling, "") if sampling is not None else "",
            "icc_profile_bytes": len(options.get("icc_profile") or b""),
        }


def encoding_for(policy: EncodingPolicy, source: DecodedImage) -> Encoding:
    """The encoding a sample gets under ``policy``, given its decoded source."""
    icc = (("icc_profile", source.icc_profile),) if source.icc_profile else ()
    if policy.kind == "match" and source.jpeg is not None:
        opts = (("qtables", source.jpeg.qtables), ("subsampling", source.jpeg.subsampling), *icc)
        return Encoding("jpg", "JPEG", opts)
    if policy.kind in ("match", "png"):
        return Encoding("png", "PNG", icc)
    if policy.kind == "jpeg":
        return Encoding("jpg", "JPEG", (("quality", policy.quality), ("subsampling", 2), *icc))
    return Encoding("webp", "WEBP", (("quality", policy.quality), ("method", 4), *icc))


def _chunk(kind: bytes, body: bytes) -> list[bytes]:
    """A PNG chunk as its parts (length, type, body, CRC), for one join: no copy of the body until then."""
    return [struct.pack(">I", len(body)), kind, body, struct.pack(">I", zlib.crc32(body, zlib.crc32(kind)))]


def encode_png(pixels: np.ndarray, icc_profile: bytes | None = None) -> bytes:
    """Lossless 8-bit RGB PNG of H x W x 3 uint8 pixels, optionally with an ICC profile (iCCP chunk).

    The file is the plainest a PNG can be (IHDR, iCCP, one IDAT, IEND; no interlacing), its rows filtered with PNG's
    Up filter (each byte minus the byte above it, mod 256; the first row unfiltered) and deflated by libdeflate at
    level 1, the fastest well-kept deflate. Speed and size against Pillow: see the module docstring."""
    h, w, _ = pixels.shape
    rows = np.ascontiguousarray(pixels, dtype=np.uint8).reshape(h, w * 3)
    filtered = np.empty((h, w * 3 + 1), dtype=np.uint8)
    filtered[:, 0] = 2  # filter type Up
    filtered[0, 0] = 0  # the first row has no row above: None
    filtered[0, 1:] = rows[0]
    np.subtract(rows[1:], rows[:-1], out=filtered[1:, 1:])  # uint8 arithmetic wraps mod 256, as PNG defines
    header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)  # 8 bits, truecolour, deflate, adaptive filters, no interlace
    icc = _chunk(b"iCCP", b"ICC Profile\0\0" + zlib.compress(icc_profile)) if icc_profile else []
    idat = imagecodecs.deflate_encode(filtered, level=1)  # a zlib stream (header and Adler-32), as PNG wants
    return b"".join([PNG_SIGNATURE, *_chunk(b"IHDR", header), *icc, *_chunk(b"IDAT", idat), *_chunk(b"IEND", b"")])


class _MemFile:
    """An in-memory file (Linux ``memfd``), one per thread and process (:func:`_memfile`), closed when its thread
    ends."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.fd = os.memfd_create("sef-encode", os.MFD_CLOEXEC)

    def __del__(self) -> None:
        if hasattr(self, "fd"):
            os.close(self.fd)


_local = threading.local()


def _memfile() -> _MemFile | None:
    """This thread's in-memory file, or ``None`` where the platform has none."""
    memfile = getattr(_local, "memfile", None)
    if memfile is not None and memfile.pid != os.getpid():  # a forked child shares its parent's file offset
        memfile = None
    if memfile is None and hasattr(os, "memfd_create"):
        try:
            memfile = _local.memfile = _MemFile()
        except OSError:  # a sandbox that forbids memfd_create: Pillow to a buffer, GIL held
            return None
    return memfile


def encode(pixels: np.ndarray, encoding: Encoding) -> bytes:
    """Encode H x W x 3 uint8 RGB pixels. Deterministic: no timestamps or other varying metadata."""
    if encoding.pil_format == "PNG":
        return encode_png(pixels, dict(encoding.options).get("icc_profile"))
    image, options = Image.fromarray(pixels, "RGB"), dict(encoding.options)
    memfile = _memfile()
    if memfile is None:
        buf = io.BytesIO()
        image.save(buf, format=encoding.pil_format, **options)
        return buf.getvalue()
    # a real file: Pillow's encode-to-file releases the GIL (to a BytesIO it keeps it, so encoders run one at a time);
    # the file is rewritten from its start each time and only the bytes written are read back
    with open(memfile.fd, "w+b", buffering=0, closefd=False) as file:
        file.seek(0)
        image.save(file, format=encoding.pil_format, **options)
        return os.pread(memfile.fd, file.tell(), 0)
