"""Alignment: one geometry shared by a real image and all its fakes (DESIGN.md §4).

Order of operations on the decoded, upright RGB source:

1. ``max_side``: if the longer side exceeds it, downscale (Lanczos, aspect kept) so it equals it.
2. crop: with ``crop=N`` a centred N x N square (offsets snapped to the 16-pixel JPEG MCU grid so a re-encoded
   JPEG keeps its block grid); otherwise each side is cut down to a multiple of ``multiple`` (what every generator
   needs) by removing the remainder at the right and bottom, again keeping the block grid.
3. an image whose aligned size is below ``min_side`` (or the crop) is skipped as ``too_small``.

The crop box is recorded in the sample's metadata in the coordinates of the (possibly resized) image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from sefcore.errors import SkipSample

MCU = 16  # largest JPEG MCU (4:2:0); crop offsets on this grid keep 8x8 blocks aligned


@dataclass(frozen=True)
class Aligned:
    pixels: np.ndarray  # H x W x 3 uint8 (read-only), H and W multiples of the build's multiple
    resized_from: tuple[int, int] | None  # (w, h) before max_side downscaling, if it happened
    crop_box: tuple[int, int, int, int]  # (left, top, right, bottom) in the resized image
    upright_size: tuple[int, int] = (0, 0)  # (w, h) of the upright source, before any resizing


def common_multiple(multiples: list[int]) -> int:
    """The size multiple that satisfies every generator at once."""
    return math.lcm(*multiples) if multiples else 1


def align(
    source: Image.Image | np.ndarray,
    *,
    multiple: int,
    max_side: int | None = None,
    crop: int | None = None,
    min_side: int = 1,
    full_size: tuple[int, int] | None = None,
) -> Aligned:
    """Resize/crop ``source`` (an RGB image, or H x W x 3 uint8 pixels) by the rules in the module docstring.
    ``full_size``: (w, h) of the source at full scale when it was decoded smaller (:func:`sefcore.imageio.decode`
    with ``max_side``): the geometry, and what is recorded, is that of the full-scale source.

    The resize and the crop run in Pillow and only the aligned box is copied out to numpy (with the GIL held, as
    every Pillow-to-numpy copy is): of a 2560 x 1600 photo cut to 512 x 512, a sixteenth of the whole."""
    image = source if isinstance(source, Image.Image) else Image.fromarray(np.ascontiguousarray(source, np.uint8))
    w, h = full_size or image.size
    upright_size = (w, h)
    resized_from = None
    if max_side is not None and max(w, h) > max_side:
        scale = max_side / max(w, h)
        nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
        image = image.resize((nw, nh), Image.Resampling.LANCZOS)
        resized_from, (w, h) = (w, h), (nw, nh)
    elif (w, h) != image.size:
        raise ValueError(f"pixels of {image.width}x{image.height} for a {w}x{h} source need max_side")

    if crop is not None:
        if crop % multiple:
            raise ValueError(f"crop {crop} is not a multiple of {multiple}")
        if w < crop or h < crop:
            raise SkipSample("too_small", f"{w}x{h} is smaller than the {crop}x{crop} crop")
        left = (w - crop) // 2 // MCU * MCU
        top = (h - crop) // 2 // MCU * MCU
        box = (left, top, left + crop, top + crop)
    else:
        box = (0, 0, w - w % multiple, h - h % multiple)
    cw, ch = box[2] - box[0], box[3] - box[1]
    if min(cw, ch) < max(min_side, multiple):
        raise SkipSample("too_small", f"{w}x{h} aligns to {cw}x{ch}, below the minimum side {max(min_side, multiple)}")
    if box != (0, 0, w, h):
        image = image.crop(box)
    return Aligned(pixels=np.asarray(image), resized_from=resized_from, crop_box=box, upright_size=upright_size)
