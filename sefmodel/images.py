"""The one way the detector side opens an image file: ``score()``, ``predict``, ``explain``, ``serve``, ``eval`` and
the training data all decode through :func:`open_image_file`, so a limit or a fix made here holds everywhere.
Their folder arguments are expanded by :func:`expand_inputs`, on the one listing of a folder's images
(:func:`sefcore.imagefiles.image_files`).

(The data side, ``sefdata``, decodes through :func:`sefcore.imageio.decode`, which also rights EXIF orientation and
sorts failures into the build's skip reasons.)
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import BinaryIO

from PIL import Image, UnidentifiedImageError

from sefcore.imagefiles import image_files


class ImageRejected(ValueError):
    """An image refused by a limit of :func:`open_image_file` before decoding; its message is the reason."""


def describe_error(e: BaseException) -> str:
    """One readable line for why an image could not be read."""
    if isinstance(e, ImageRejected):
        return str(e)
    if isinstance(e, FileNotFoundError):
        return "no such file"
    if isinstance(e, IsADirectoryError):
        return "is a directory"
    if isinstance(e, PermissionError):
        return "permission denied"
    if isinstance(e, Image.DecompressionBombError):
        return f"too many pixels (Pillow's decompression-bomb guard): {e}"
    if isinstance(e, UnidentifiedImageError):
        return "not an image Pillow can read (unknown format or damaged header)"
    if isinstance(e, (OSError, SyntaxError, EOFError, ValueError)):
        return f"corrupt or truncated image: {e}"
    return f"{type(e).__name__}: {e}"


def open_image_file(
    source: str | os.PathLike | BinaryIO, *, max_pixels: int | None = None, formats: Sequence[str] | None = None
) -> Image.Image:
    """Decode one image file (a path or a binary file object), fully loaded and with its file closed.

    Args:
        max_pixels: refuse images with more pixels (:class:`ImageRejected`), judged from the header before any pixel
            is decoded; None leaves only Pillow's own decompression-bomb guard.
        formats: Pillow format names to accept (e.g. ``("JPEG", "PNG")``); the format is sniffed from the bytes,
            never taken from a file name or content type. None accepts every format Pillow reads.
    Raises ``ImageRejected``, ``OSError``, ``UnidentifiedImageError`` ... (see :func:`describe_error`)."""
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if path.is_file() and path.stat().st_size == 0:
            raise ImageRejected("empty (zero-byte) file")
    else:
        source.seek(0)
        if not source.read(1):
            raise ImageRejected("empty (zero-byte) file")
        source.seek(0)
    try:
        image = Image.open(source, formats=formats)
    except UnidentifiedImageError:
        if formats is None:
            raise
        names = ", ".join(formats)
        raise ImageRejected(f"not an image in an accepted format ({names}), judged from its bytes, or its header "
                            "is damaged") from None  # fmt: skip
    except Image.DecompressionBombError as e:  # Pillow's own guard (2x its MAX_IMAGE_PIXELS) read the header first
        if max_pixels is None:
            raise
        found = re.search(r"\((\d+) pixels\)", str(e))
        raise ImageRejected(_too_many(f"{int(found.group(1)) / 1e6:.1f}" if found else "over", max_pixels)) from None
    with image:
        width, height = image.size
        if max_pixels is not None and width * height > max_pixels:
            raise ImageRejected(_too_many(f"{width}x{height} = {width * height / 1e6:.1f}", max_pixels))
        image.load()
        return image


def _too_many(megapixels: str, limit: int) -> str:
    return (f"too many pixels: {megapixels} megapixels, over the limit of {limit / 1e6:.1f} megapixels (read from "
            "the header, nothing decoded)")  # fmt: skip


def expand_inputs(inputs: Iterable[str | os.PathLike]) -> list[Path]:
    """Files as given (any extension) and, from folders, every image file below them
    (:func:`sefcore.imagefiles.image_files`: the files ``sefdata build`` takes from a folder, in its order)."""
    out: list[Path] = []
    for item in inputs:
        path = Path(item).expanduser()
        if path.is_dir():
            out.extend(image_files(path))
        else:
            out.append(path)  # a missing file is reported as that file's error
    return out
