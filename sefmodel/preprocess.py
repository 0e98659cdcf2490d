"""The detector's image processor: images of any size and mode -> the normalised crops the backbone sees.

One object, :class:`ImageProcessor`, saved beside the detector as ``preprocessor_config.json`` (the pattern of
transformers' image processors and diffusers' ``VaeImageProcessor``). Training, validation, scoring and Grad-CAM
all go through it, so a detector is trained, validated and scored on the same kind of pixels.

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

Steps 1-2 (and the upscale of 3) are :meth:`ImageProcessor.resample`; padding and normalising are
:meth:`ImageProcessor.normalize`; :meth:`ImageProcessor.__call__` runs all of them. Training runs the paired
augmentation (:mod:`sefmodel.augment`: random scale, random crop position, flip, degradations) between the two:
``normalize(augment.apply(resample(image), params, size))``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image

from sefdata.fields import doc
from sefdata.imageio import to_rgb  # step 1: the rule the training data was built with

if TYPE_CHECKING:
    from .backbones import Backbone
    from .config import DetectorConfig

CROP_MODES = ("center", "multi")
SMALL_MODES = ("pad", "upscale")
PROCESSOR_NAME = "preprocessor_config.json"
PROCESSOR_FORMAT_VERSION = 1
_META_KEYS = ("format_version", "library", "processor_class")


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


@dataclass
class ImageProcessor:
    """Turns images into detector inputs: float32 (N, 3, size, size), normalised with the backbone's mean/std.

    Built from the detector's config and backbone (:meth:`from_detector_config`), saved as
    ``preprocessor_config.json`` in the detector folder, read back with it.
    """

    size: int = field(default=224, metadata=doc("crop side in pixels (the detector's image_size)"))
    image_mean: tuple[float, float, float] = field(
        default=(0.485, 0.456, 0.406), metadata=doc("per-channel mean of RGB in [0, 1] (the backbone's)")
    )
    image_std: tuple[float, float, float] = field(
        default=(0.229, 0.224, 0.225), metadata=doc("per-channel std of RGB in [0, 1] (the backbone's)")
    )
    resize: int | None = field(
        default=None, metadata=doc("resize the short side to this many pixels first; None keeps native pixels")
    )
    small: str = field(default="pad", metadata=doc("images smaller than the crop: pad (mean colour) or upscale"))
    crop: str = field(default="center", metadata=doc("default crops when scoring: center (one) or multi (grid)"))
    crops_per_side: int = field(default=3, metadata=doc("maximum crops along each side for crop=multi"))

    def __post_init__(self) -> None:
        for name in ("size", "crops_per_side") + (("resize",) if self.resize is not None else ()):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"image processor {name} must be an integer >= 1, got {value!r}")
        for name in ("image_mean", "image_std"):
            value = getattr(self, name)
            if not isinstance(value, (list, tuple)) or len(value) != 3:
                raise ValueError(f"image processor {name} must be three numbers (R, G, B), got {value!r}")
            setattr(self, name, tuple(float(v) for v in value))
        if min(self.image_std) <= 0:
            raise ValueError(f"image processor image_std must be positive, got {self.image_std}")
        if self.crop not in CROP_MODES:
            raise ValueError(f"unknown crop mode {self.crop!r}; known: {list(CROP_MODES)}")
        if self.small not in SMALL_MODES:
            raise ValueError(f"unknown small-image rule {self.small!r}; known: {list(SMALL_MODES)}")

    @classmethod
    def from_detector_config(cls, config: DetectorConfig, backbone: Backbone) -> ImageProcessor:
        """The processor a detector config implies: crop side ``config.image_size`` (default: the backbone's input
        size), the backbone family's normalisation (ImageNet, CLIP or [-1, 1] statistics), the config's resize,
        small-image and crop rules. How detector folders saved without ``preprocessor_config.json`` are read."""
        return cls(
            size=config.image_size or backbone.input_size,
            image_mean=tuple(backbone.image_mean),
            image_std=tuple(backbone.image_std),
            resize=config.resize,
            small=config.small,
            crop=config.crop,
            crops_per_side=config.crops_per_side,
        )

    # ---- the steps -----------------------------------------------------------------------------------------

    def resample(self, image: Image.Image) -> Image.Image:
        """Steps 1-3 before any crop: upright RGB, then the ``resize`` and small-image ``upscale`` rules (the
        only resampling the processor does)."""
        image = to_rgb(image)
        if self.resize is not None:
            image = _resize_short_side(image, self.resize)
        if self.small == "upscale" and min(image.size) < self.size:
            image = _resize_short_side(image, self.size)
        return image

    def normalize(self, pixels: np.ndarray | Image.Image) -> torch.Tensor:
        """uint8 RGB (h, w, 3) with h, w <= size (or an RGB image) -> float32 (3, size, size): ``(x / 255 - mean)
        / std``, then padded symmetrically with zeros (the mean colour) to ``size`` x ``size``."""
        array = np.asarray(pixels, dtype=np.uint8)
        height, width = array.shape[:2]
        if array.ndim != 3 or array.shape[2] != 3 or height > self.size or width > self.size:
            raise ValueError(f"normalize takes RGB pixels of at most {self.size} a side, got shape {array.shape}")
        x = torch.from_numpy(array.astype(np.float32)).permute(2, 0, 1).div_(255.0)  # a fresh, writable copy
        x = (x - torch.tensor(self.image_mean).view(3, 1, 1)) / torch.tensor(self.image_std).view(3, 1, 1)
        pad_w, pad_h = self.size - width, self.size - height
        if pad_w or pad_h:  # zero after normalisation == the mean colour before it
            x = torch.nn.functional.pad(x, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))
        return x

    def __call__(self, image: Image.Image, crop: str | None = None) -> torch.Tensor:
        """One PIL image (any size/mode) -> normalised crops, float32 (N, 3, size, size); N = 1 for center.

        ``crop`` overrides the processor's default crop mode."""
        image = self.resample(image)
        width, height = image.size
        # crop boxes on the image padded to at least size x size; the image sits centred in that canvas
        canvas_w, canvas_h = max(width, self.size), max(height, self.size)
        off_x, off_y = (canvas_w - width) // 2, (canvas_h - height) // 2
        pixels = np.asarray(image)
        crops = []
        for left, top, right, bottom in crop_boxes(canvas_w, canvas_h, self.size, crop or self.crop,
                                                   self.crops_per_side):  # fmt: skip
            # the part of the box that lies on the image; normalize pads the rest exactly as the canvas would
            rows = slice(max(0, top - off_y), min(height, bottom - off_y))
            cols = slice(max(0, left - off_x), min(width, right - off_x))
            crops.append(self.normalize(pixels[rows, cols]))
        return torch.stack(crops)

    def to_image(self, pixels: torch.Tensor) -> Image.Image:
        """Inverse of :meth:`normalize` for display: (3, S, S) normalised -> an RGB image (padding shows as the
        mean colour)."""
        mean = torch.tensor(self.image_mean).view(3, 1, 1)
        std = torch.tensor(self.image_std).view(3, 1, 1)
        x = (pixels.detach().float().cpu() * std + mean).mul_(255.0).round_().clamp_(0, 255)
        return Image.fromarray(x.to(torch.uint8).permute(1, 2, 0).numpy(), "RGB")

    # ---- save / load ---------------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict, as written to ``preprocessor_config.json``."""
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["image_mean"], data["image_std"] = list(self.image_mean), list(self.image_std)
        meta = {"processor_class": type(self).__name__, "library": "sef-toolkit"}
        return {**meta, "format_version": PROCESSOR_FORMAT_VERSION, **data}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ImageProcessor:
        """Inverse of :meth:`to_dict`; an unknown key is an error (a typo must not be silently ignored)."""
        from .fields import from_versioned_dict

        return from_versioned_dict(
            cls, data, version=PROCESSOR_FORMAT_VERSION, meta_keys=_META_KEYS, what="image processor"
        )

    def save_pretrained(self, folder: str | Path) -> None:
        """Write ``folder/preprocessor_config.json``."""
        path = Path(folder) / PROCESSOR_NAME
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> ImageProcessor:
        """Read ``folder/preprocessor_config.json`` (a local folder; detectors on the Hub are fetched by
        :meth:`SEFDetector.from_pretrained`, which reads this file with them)."""
        return cls.from_dict(json.loads((Path(folder) / PROCESSOR_NAME).read_text()))


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
    """One PIL image (any size/mode) -> normalised crops, float32 (N, 3, size, size): a one-off
    :class:`ImageProcessor` with these settings."""
    processor = ImageProcessor(
        size=size, image_mean=tuple(mean), image_std=tuple(std), resize=resize, small=small,
        crops_per_side=crops_per_side,
    )  # fmt: skip
    return processor(image, crop=crop)


def _resize_short_side(image: Image.Image, short: int) -> Image.Image:
    width, height = image.size
    scale = short / min(width, height)
    new = (max(short, round(width * scale)), max(short, round(height * scale)))
    return image.resize(new, Image.Resampling.BICUBIC, reducing_gap=None)


__all__ = ["CROP_MODES", "PROCESSOR_NAME", "SMALL_MODES", "ImageProcessor", "crop_boxes", "prepare", "to_rgb"]
