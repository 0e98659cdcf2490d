"""The detector's image processor: images of any size and mode -> the normalised crops the backbone sees.

One object, :class:`ImageProcessor`, saved beside the detector as ``preprocessor_config.json`` (the pattern of
transformers' image processors and diffusers' ``VaeImageProcessor``). Training, validation, scoring and Grad-CAM
all go through it, so a detector is trained, validated and scored on the same kind of pixels.

No resizing by default: generator artifacts live in the high frequencies that resampling smears, so the
detector looks at native-resolution crops. Rules, in order:

1. Mode: everything becomes upright 8-bit RGB by the rule the training data was built with
   (:func:`sefcore.imageio.to_rgb`): EXIF orientation applied, alpha composited onto white, palette and grayscale
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
augmentation (:mod:`sefmodel.train.augment`: random scale, random crop position, flip, degradations) between the two:
``normalize(augment.apply(resample(image), params, size))``.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sefcore.errors import SefError
from sefcore.fields import doc
from sefmodel.model.dictconfig import from_versioned_dict

if TYPE_CHECKING:
    import numpy as np
    import torch
    from PIL import Image

    from sefmodel.model.backbones import Backbone

# numpy, torch and Pillow load where images are processed, not at import: `sefmodel train --help` reads this
# module's settings (its --image-size) without them.

CROP_MODES = ("center", "multi")
SMALL_MODES = ("pad", "upscale")
PROCESSOR_NAME = "preprocessor_config.json"
PROCESSOR_FORMAT_VERSION = 1
_META_KEYS = ("format_version", "library", "processor_class")


def check_crop(mode: Any) -> str:
    """``mode`` if it is a crop mode (:data:`CROP_MODES`), else a :class:`SefError` naming the known ones: the one
    check of a crop mode, for the processor's default and every ``crop`` override (score, predict, eval, serve)."""
    if mode not in CROP_MODES:
        raise SefError(f"unknown crop mode {mode!r}; known: {', '.join(CROP_MODES)}")
    return mode


def crop_boxes(width: int, height: int, size: int, mode: str = "center", crops_per_side: int = 3) -> list[tuple]:
    """Crop boxes (left, top, right, bottom) of side ``size`` inside a ``width`` x ``height`` image.

    Requires ``width, height >= size``. ``"multi"`` places ``min(crops_per_side, ceil(side / size))`` crops
    evenly along each axis, first and last flush with the borders.
    """
    check_crop(mode)
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

    The one owner of the preprocessing settings: defined, defaulted and validated here. A detector's config holds
    its processor (``DetectorConfig.processor``); the detector fills what is left unset from its backbone
    (:meth:`for_backbone`) and saves the result as ``preprocessor_config.json`` in its folder.
    """

    size: int | None = field(
        default=None,
        metadata=doc("crop side in pixels fed to the backbone; unset: the backbone's (336 DINOv2, 224 CLIP and the "
                     "CNNs); a multiple of the patch size (a CNN's total stride, 32 for the released ones)"),
    )  # fmt: skip
    image_mean: tuple[float, float, float] | None = field(
        default=None, metadata=doc("per-channel mean of RGB in [0, 1]; unset: the backbone's")
    )
    image_std: tuple[float, float, float] | None = field(
        default=None, metadata=doc("per-channel standard deviation of RGB in [0, 1]; unset: the backbone's")
    )
    resize: int | None = field(
        default=None,
        metadata=doc("resize the short side to this many pixels before cropping; unset: native resolution "
                     "(recommended: resampling blurs generator artifacts)"),
    )  # fmt: skip
    small: str = field(
        default="pad", metadata=doc("images smaller than the crop: pad (with the mean colour) or upscale (bicubic)")
    )
    crop: str = field(
        default="center",
        metadata=doc("crops per image when scoring: center (one) or multi (a grid; probabilities are averaged)"),
    )
    crops_per_side: int = field(default=3, metadata=doc("maximum crops along each side for crop=multi"))

    def __post_init__(self) -> None:
        for name in ("size", "crops_per_side", "resize"):
            value = getattr(self, name)
            if value is None and name != "crops_per_side":
                continue
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise SefError(f"image processor {name} must be an integer >= 1, got {value!r}")
        for name in ("image_mean", "image_std"):
            value = getattr(self, name)
            if value is None:
                continue
            if not isinstance(value, (list, tuple)) or len(value) != 3:
                raise SefError(f"image processor {name} must be three numbers (R, G, B), got {value!r}")
            setattr(self, name, tuple(float(v) for v in value))
        if self.image_std is not None and min(self.image_std) <= 0:
            raise SefError(f"image processor image_std must be positive, got {self.image_std}")
        check_crop(self.crop)
        if self.small not in SMALL_MODES:
            raise SefError(f"unknown small-image rule {self.small!r}; known: {', '.join(SMALL_MODES)}")

    def for_backbone(self, backbone: Backbone) -> ImageProcessor:
        """A copy with what this processor leaves unset taken from ``backbone``: the crop side
        (``backbone.input_size``) and the normalisation (``backbone.image_mean`` / ``image_std``)."""
        return dataclasses.replace(
            self,
            size=self.size or backbone.input_size,
            image_mean=self.image_mean or tuple(backbone.image_mean),
            image_std=self.image_std or tuple(backbone.image_std),
        )

    def _check_complete(self) -> None:
        unset = [name for name in ("size", "image_mean", "image_std") if getattr(self, name) is None]
        if unset:
            raise SefError(f"the image processor leaves {', '.join(unset)} unset: fill them from the backbone "
                           "(ImageProcessor.for_backbone) before processing images")  # fmt: skip

    # ---- the steps -----------------------------------------------------------------------------------------

    def resample(self, image: Image.Image) -> Image.Image:
        """Steps 1-3 before any crop: upright RGB, then the ``resize`` and small-image ``upscale`` rules (the
        only resampling the processor does)."""
        from sefcore.imageio import to_rgb  # step 1: the rule the training data was built with

        self._check_complete()
        image = to_rgb(image)
        if self.resize is not None:
            image = _resize_short_side(image, self.resize)
        if self.small == "upscale" and min(image.size) < self.size:
            image = _resize_short_side(image, self.size)
        return image

    def normalize(self, pixels: np.ndarray | Image.Image) -> torch.Tensor:
        """uint8 RGB (h, w, 3) with h, w <= size (or an RGB image) -> float32 (3, size, size): ``(x / 255 - mean)
        / std``, then padded symmetrically with zeros (the mean colour) to ``size`` x ``size``."""
        import numpy as np
        import torch

        self._check_complete()
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
        import numpy as np
        import torch

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
        import torch
        from PIL import Image

        self._check_complete()
        mean = torch.tensor(self.image_mean).view(3, 1, 1)
        std = torch.tensor(self.image_std).view(3, 1, 1)
        x = (pixels.detach().float().cpu() * std + mean).mul_(255.0).round_().clamp_(0, 255)
        return Image.fromarray(x.to(torch.uint8).permute(1, 2, 0).numpy(), "RGB")

    # ---- save / load ---------------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict, as written to ``preprocessor_config.json``."""
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        for name in ("image_mean", "image_std"):
            data[name] = list(data[name]) if data[name] is not None else None
        meta = {"processor_class": type(self).__name__, "library": "sef-toolkit"}
        return {**meta, "format_version": PROCESSOR_FORMAT_VERSION, **data}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ImageProcessor:
        """Inverse of :meth:`to_dict`; an unknown key is an error (a typo must not be silently ignored)."""
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


def _resize_short_side(image: Image.Image, short: int) -> Image.Image:
    from PIL import Image

    width, height = image.size
    scale = short / min(width, height)
    new = (max(short, round(width * scale)), max(short, round(height * scale)))
    return image.resize(new, Image.Resampling.BICUBIC, reducing_gap=None)


__all__ = ["CROP_MODES", "PROCESSOR_NAME", "SMALL_MODES", "ImageProcessor", "check_crop", "crop_boxes"]
