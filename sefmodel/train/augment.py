"""Paired training augmentation: one random draw per sample, applied identically to the real and its fakes.

Real and fake of a sample differ only by the generator's artifact (DESIGN.md §4); an augmentation that differed
between them (another crop, another JPEG quality) would add a difference the detector could learn instead. So
:func:`sample_params` draws the parameters once per sample and :func:`apply` replays them on every image.

Order of the operations, each with its own probability in :class:`AugmentConfig`:

1. resize by a random scale (bicubic), 2. crop a ``size`` x ``size`` window at a random position (smaller images
are kept whole and padded later), 3. horizontal flip, 4. colour jitter (brightness, contrast, saturation),
5. grayscale, 6. Gaussian blur, 7. Gaussian noise (the *same* noise image for real and fakes), 8. JPEG
re-compression at a random quality.

Augmentation runs on the image the detector's :class:`~sefmodel.model.preprocess.ImageProcessor` has resampled (its
``resize`` and small-image rules, the same as at scoring time) and hands back at most ``size`` x ``size`` pixels,
which the processor pads and normalises: ``processor.normalize(apply(processor.resample(image), params, size))``.
Apart from the processor's own rules, the random resize is the only resampling: with probability ``1 - resize_p``
the crop is cut from the processor's pixels as they are, so the artifacts the detector should learn are not
smeared.
"""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

from sefcore.fields import doc
from sefmodel.model.dictconfig import from_known_fields


@dataclass
class AugmentConfig:
    """Probabilities and ranges of the paired training augmentation (defaults after DESIGN.md §7: crops and flips
    always, degradations with small probabilities)."""

    flip_p: float = field(default=0.5, metadata=doc("probability of a horizontal flip"))
    resize_p: float = field(default=0.1, metadata=doc("probability of resizing by a random scale before cropping"))
    resize_scale: list[float] = field(
        default_factory=lambda: [0.5, 1.5], metadata=doc("[min, max] resize scale factor")
    )
    color_p: float = field(default=0.1, metadata=doc("probability of colour jitter"))
    color_strength: float = field(
        default=0.2, metadata=doc("colour jitter: brightness, contrast, saturation factors in [1-s, 1+s]")
    )
    grayscale_p: float = field(default=0.05, metadata=doc("probability of converting to grayscale"))
    blur_p: float = field(default=0.1, metadata=doc("probability of a Gaussian blur"))
    blur_sigma: list[float] = field(default_factory=lambda: [0.1, 1.5], metadata=doc("[min, max] blur sigma, px"))
    noise_p: float = field(default=0.05, metadata=doc("probability of additive Gaussian noise"))
    noise_std: list[float] = field(
        default_factory=lambda: [0.005, 0.03], metadata=doc("[min, max] noise std, in units of the 0-1 range")
    )
    jpeg_p: float = field(default=0.1, metadata=doc("probability of JPEG re-compression"))
    jpeg_quality: list[int] = field(default_factory=lambda: [65, 100], metadata=doc("[min, max] JPEG quality"))

    def __post_init__(self) -> None:
        for name in ("flip_p", "resize_p", "color_p", "grayscale_p", "blur_p", "noise_p", "jpeg_p"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value <= 1:
                raise ValueError(f"augment.{name} must be a probability in [0, 1], got {value!r}")
        for name, low in (("resize_scale", 1e-3), ("blur_sigma", 0.0), ("noise_std", 0.0), ("jpeg_quality", 1)):
            value = getattr(self, name)
            if not isinstance(value, (list, tuple)) or len(value) != 2 or not low <= value[0] <= value[1]:
                raise ValueError(f"augment.{name} must be [min, max] with {low} <= min <= max, got {value!r}")
            setattr(self, name, list(value))
        if self.jpeg_quality[1] > 100:
            raise ValueError(f"augment.jpeg_quality must lie in [1, 100], got {self.jpeg_quality}")
        if not 0 <= self.color_strength < 1:
            raise ValueError(f"augment.color_strength must be in [0, 1), got {self.color_strength!r}")

    @classmethod
    def off(cls) -> AugmentConfig:
        """Random crop position only: no flip, no degradation (tests, ablations)."""
        return cls(flip_p=0, resize_p=0, color_p=0, grayscale_p=0, blur_p=0, noise_p=0, jpeg_p=0)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AugmentConfig:
        return from_known_fields(cls, data, "augment settings")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class AugmentParams:
    """One draw of the augmentation; :func:`apply` turns it into the same operation on every image."""

    scale: float  # 1.0: no resampling
    crop_x: float  # crop position as a fraction of the free room, in [0, 1]
    crop_y: float
    flip: bool
    color: tuple[float, float, float] | None  # brightness, contrast, saturation factors
    grayscale: bool
    blur: float | None  # sigma in px
    noise: float | None  # std in 0-1 units
    noise_seed: int
    jpeg: int | None  # quality


def sample_params(config: AugmentConfig, rng: np.random.Generator) -> AugmentParams:
    """Draw one set of parameters. Every random number is drawn whether or not its operation fires, so the draw
    consumes the same amount of ``rng`` every time (stable streams when probabilities change)."""
    u = rng.random(7)
    scale = float(rng.uniform(*config.resize_scale))
    crop_x, crop_y = (float(v) for v in rng.random(2))
    s = config.color_strength
    color = tuple(float(v) for v in rng.uniform(1 - s, 1 + s, 3))
    blur = float(rng.uniform(*config.blur_sigma))
    noise = float(rng.uniform(*config.noise_std))
    noise_seed = int(rng.integers(2**31))
    quality = int(rng.integers(config.jpeg_quality[0], config.jpeg_quality[1] + 1))
    return AugmentParams(
        scale=scale if u[0] < config.resize_p else 1.0,
        crop_x=crop_x,
        crop_y=crop_y,
        flip=bool(u[1] < config.flip_p),
        color=color if u[2] < config.color_p else None,  # type: ignore[arg-type]
        grayscale=bool(u[3] < config.grayscale_p),
        blur=blur if u[4] < config.blur_p else None,
        noise=noise if u[5] < config.noise_p else None,
        noise_seed=noise_seed,
        jpeg=quality if u[6] < config.jpeg_p else None,
    )


def crop_box(width: int, height: int, size: int, params: AugmentParams) -> tuple[tuple[float, ...], tuple[int, int]]:
    """The crop window in source pixels and the output size (<= size per side), after scaling by ``params.scale``."""
    sw, sh = width * params.scale, height * params.scale
    out_w, out_h = min(size, round(sw)), min(size, round(sh))
    x0 = round(params.crop_x * max(0.0, sw - out_w))
    y0 = round(params.crop_y * max(0.0, sh - out_h))
    s = params.scale
    return (x0 / s, y0 / s, min(width, (x0 + out_w) / s), min(height, (y0 + out_h) / s)), (out_w, out_h)


def apply(image: Image.Image, params: AugmentParams, size: int) -> np.ndarray:
    """Augment one RGB image (the processor's resampled image); returns uint8 (h, w, 3) with h, w <= ``size``
    (smaller only if the image is), for :meth:`sefmodel.model.preprocess.ImageProcessor.normalize`."""
    if image.mode != "RGB":
        image = image.convert("RGB")
    box, out = crop_box(image.width, image.height, size, params)
    if params.scale == 1.0:
        image = image.crop(tuple(round(v) for v in box))  # native pixels: no resampling
    else:
        image = image.resize(out, Image.Resampling.BICUBIC, box=box, reducing_gap=None)
    if params.flip:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if params.color is not None:
        b, c, s = params.color
        image = ImageEnhance.Color(ImageEnhance.Contrast(ImageEnhance.Brightness(image).enhance(b)).enhance(c)).enhance(
            s
        )
    if params.grayscale:
        image = image.convert("L").convert("RGB")
    if params.blur is not None:
        image = image.filter(ImageFilter.GaussianBlur(params.blur))
    if params.noise is not None:
        noise = np.random.default_rng(params.noise_seed).normal(
            0.0, params.noise * 255.0, (image.height, image.width, 3)
        )
        image = Image.fromarray(np.clip(np.asarray(image, dtype=np.float32) + noise, 0, 255).round().astype(np.uint8))
    if params.jpeg is not None:
        buf = io.BytesIO()
        image.save(buf, "JPEG", quality=params.jpeg)
        buf.seek(0)
        image = Image.open(buf)
        image.load()
    return np.array(image, dtype=np.uint8)  # writable: torch.from_numpy shares it


__all__ = ["AugmentConfig", "AugmentParams", "apply", "crop_box", "sample_params"]
