"""Images of any size and mode -> normalised crops for the backbone.

No resizing by default: generator artifacts live in the high frequencies that resampling smears, so the
detector looks at native-resolution crops. Rules, in order:

1. Mode: everything becomes upright 8-bit RGB by the rule the training data was built with
   (:func:`sefdata.imageio.to_rgb`): EXIF orientation applied, alpha composited onto white, palette and grayscale
   expanded, 16-bit integer images scaled by value / 257, CMYK converted by Pillow's rule.
2. Optional ``resize``: the short side is resized to that many pixels (bicubic, antialiased) first.
3. Small images: a side shorter than the crop is padded symmetrically to the crop size with the normalisation
   mean, i.e. zeros after normalisation (``small="pad"``, default), or the image is upscaled so its short side
   equals the crop (``small="upscale"``).
4. Crops: ``"center"`` takes one center crop; ``"multi"`` takes an evenly spaced grid of up to
   ``crops_per_side`` x ``crops_per_side`` crops covering the image (fewer when the image is small); the
   detector averages their probabilities.
5. Normalise: float32 in [0, 1], then ``(x - mean) / std`` per channel. Output (3, S, S).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from sefdata.imageio import to_rgb  # step 1: the rule the training data was built with

CROP_MODES = ("center", "multi")
SMALL_MODES = ("pad", "upscale")


def crop_boxes(width: int, height: int, size: int, mode: str = "center", crops_per_side: int = 3) -> list[tuple]:
    """Crop boxes (left, top, right, bottom) of side ``size`` inside a ``width`` x ``height`` image.

    Requires ``width, height >= size``. ``"multi"`` places ``min(crops_per_side, ceil(side / size))`` crops
    evenly along each axis, first and last flush with the borders.
    """
    if mode not in CROP_MODES:
        raise ValueError(f"unknown crop mode {mode!r}; known: {list(CROP_MODES)}")
    if width < size or height < size:
        raise ValueError(f"image {width}x{height} is smaller than the crop {size}")
    if mode == "center":
        left, top = (width - size) // 2, (height - size) // 2
        return [(left, top, left + size, top + size)]

    def starts(length: int) -> list[int]:
        n = min(crops_per_side, math.ceil(length / size))
        if n <= 1:
            return [(length - size) // 2]
        return [round(i * (length - size) / (n - 1)) for i in range(n)]

    return [(x, y, x + size, y + size) for y in starts(height) for x in starts(width)]


def prepare(
    image: Image.Image,
    size: int,
    mean: Sequence[float],
    std: Sequence[float],
    crop: str = "center",
    crops_per_side: int = 3,
    resize: int | None = None,
    small: str = "pad",
) -> torch.Tensor:
    """One PIL image (any size/mode) -> normalised crops, float32 (N, 3, size, size); N = 1 for center."""
    if small not in SMALL_MODES:
        raise ValueError(f"unknown small-image rule {small!r}; known: {list(SMALL_MODES)}")
    image = to_rgb(image)
    if resize is not None:
        image = _resize_short_side(image, resize)
    if small == "upscale" and min(image.size) < size:
        image = _resize_short_side(image, size)
    x = torch.from_numpy(np.asarray(image, dtype=np.float32).copy()).permute(2, 0, 1).div_(255.0)
    mean_t = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    x = (x - mean_t) / std_t
    _, height, width = x.shape
    pad_w, pad_h = max(0, size - width), max(0, size - height)
    if pad_w or pad_h:  # zero after normalisation == the mean colour before it
        x = torch.nn.functional.pad(x, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))
        _, height, width = x.shape
    boxes = crop_boxes(width, height, size, crop, crops_per_side)
    return torch.stack([x[:, top:bottom, left:right] for left, top, right, bottom in boxes])


def _resize_short_side(image: Image.Image, short: int) -> Image.Image:
    width, height = image.size
    scale = short / min(width, height)
    new = (max(short, round(width * scale)), max(short, round(height * scale)))
    return image.resize(new, Image.Resampling.BICUBIC, reducing_gap=None)
