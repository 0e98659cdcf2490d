"""Post-processing perturbations for robustness curves, and the JPEG format-bias protocol.

Every perturbation is ``NAME:VALUE``; several values of one name form one curve (x axis = VALUE):

====================  ========================================================================================
``jpeg:Q``            JPEG at quality Q (Pillow/libjpeg, 4:2:0 chroma subsampling), decoded again
``webp:Q``            lossy WebP at quality Q, decoded again
``resize:F``          scale both sides by F (F < 1 downscales, F > 1 upscales; bicubic, antialiased)
``blur:S``            Gaussian blur with standard deviation S pixels
``noise:S``           additive Gaussian noise, standard deviation S in 8-bit levels, clipped to [0, 255];
                      seeded by the image's key, so a re-run is identical
``social:N``          the chain a social network applies: downscale so the long side is at most N pixels
                      (bicubic, antialiased; smaller images are kept), then JPEG at quality 75
====================  ========================================================================================

``--perturb default`` expands to :data:`DEFAULT_SWEEP`. A new perturbation is one function ``(image, value,
key) -> image`` plus one :func:`register_perturbation` line. Images go in and come out as 8-bit RGB PIL
images; a JPEG or WebP result is returned as the decoded file, so its format and quantisation tables can be
inspected (tests measure the JPEG quality of the output).
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter

from sefdata.errors import SefError
from sefdata.imageio import to_rgb

SOCIAL_JPEG_QUALITY = 75
PerturbFn = Callable[[Image.Image, float, str], Image.Image]


@dataclass(frozen=True)
class PerturbSpec:
    """One perturbation: ``name`` (a registered kind) at ``value``."""

    name: str
    value: float

    @property
    def label(self) -> str:
        return f"{self.name}:{_fmt(self.value)}"

    def apply(self, image: Image.Image, key: str = "") -> Image.Image:
        # the scoring rule first (EXIF rotation, alpha on white...), so a perturbed image differs from the
        # unperturbed one only by the perturbation
        return _REGISTRY[self.name].fn(to_rgb(image), self.value, key)


@dataclass(frozen=True)
class _Kind:
    fn: PerturbFn
    help: str
    integer: bool
    minimum: float
    maximum: float | None
    x_label: str
    higher_is_milder: bool


_REGISTRY: dict[str, _Kind] = {}


def register_perturbation(
    name: str,
    fn: PerturbFn,
    help: str,
    *,
    integer: bool = False,
    minimum: float = 0.0,
    maximum: float | None = None,
    x_label: str = "",
    higher_is_milder: bool = False,
) -> None:
    """Register ``fn(image, value, key) -> image`` as ``name``; a duplicate name raises ``ValueError``."""
    if name in _REGISTRY:
        raise ValueError(f"perturbation {name!r} is already registered")
    _REGISTRY[name] = _Kind(fn, help, integer, minimum, maximum, x_label or name, higher_is_milder)


def known_perturbations() -> dict[str, str]:
    """name -> one-line help."""
    return {name: kind.help for name, kind in sorted(_REGISTRY.items())}


def x_label(name: str) -> str:
    return _REGISTRY[name].x_label


def higher_is_milder(name: str) -> bool:
    return _REGISTRY[name].higher_is_milder


def _fmt(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


# ---- the perturbations ---------------------------------------------------------------------------------------


def _encode_decode(image: Image.Image, fmt: str, **save) -> Image.Image:
    buf = io.BytesIO()
    image.save(buf, fmt, **save)
    out = Image.open(io.BytesIO(buf.getvalue()))
    out.load()
    return out


def jpeg(image: Image.Image, quality: float, key: str = "") -> Image.Image:
    return _encode_decode(image, "JPEG", quality=int(quality), subsampling=2)


def webp(image: Image.Image, quality: float, key: str = "") -> Image.Image:
    return _encode_decode(image, "WEBP", quality=int(quality), method=4)


def resize(image: Image.Image, factor: float, key: str = "") -> Image.Image:
    width, height = image.size
    size = (max(1, round(width * factor)), max(1, round(height * factor)))
    return image.resize(size, Image.Resampling.BICUBIC, reducing_gap=None)


def blur(image: Image.Image, sigma: float, key: str = "") -> Image.Image:
    return image.filter(ImageFilter.GaussianBlur(radius=sigma)) if sigma > 0 else image.copy()


def noise(image: Image.Image, sigma: float, key: str = "") -> Image.Image:
    seed = int.from_bytes(hashlib.sha256(f"noise:{sigma}:{key}".encode()).digest()[:8], "little")
    rng = np.random.default_rng(seed)
    pixels = np.asarray(image, dtype=np.float32)
    noisy = pixels + rng.normal(0.0, sigma, pixels.shape).astype(np.float32)
    return Image.fromarray(np.clip(np.rint(noisy), 0, 255).astype(np.uint8), "RGB")


def social(image: Image.Image, max_side: float, key: str = "") -> Image.Image:
    width, height = image.size
    scale = max_side / max(width, height)
    if scale < 1:
        image = resize(image, scale)
    return jpeg(image, SOCIAL_JPEG_QUALITY)


register_perturbation(
    "jpeg", jpeg, "JPEG at quality Q (1-100)", integer=True, minimum=1, maximum=100,
    x_label="JPEG quality", higher_is_milder=True,
)  # fmt: skip
register_perturbation(
    "webp", webp, "lossy WebP at quality Q (1-100)", integer=True, minimum=1, maximum=100,
    x_label="WebP quality", higher_is_milder=True,
)  # fmt: skip
register_perturbation("resize", resize, "scale by F (<1 down, >1 up), bicubic", minimum=0.01, maximum=8,
                      x_label="scale factor")  # fmt: skip
register_perturbation("blur", blur, "Gaussian blur, sigma S pixels", maximum=50, x_label="blur sigma (px)")
register_perturbation("noise", noise, "Gaussian noise, sigma S (8-bit levels)", maximum=255,
                      x_label="noise sigma (8-bit levels)")  # fmt: skip
register_perturbation(
    "social", social, f"long side <= N px, then JPEG {SOCIAL_JPEG_QUALITY}", integer=True, minimum=16,
    x_label=f"max side (px), then JPEG {SOCIAL_JPEG_QUALITY}", higher_is_milder=True,
)  # fmt: skip

DEFAULT_SWEEP = (
    "jpeg:95,jpeg:85,jpeg:75,jpeg:60,jpeg:50,webp:90,webp:75,webp:50,resize:0.5,resize:0.75,resize:1.5,resize:2,"
    "blur:0.5,blur:1,blur:2,noise:2,noise:5,noise:10,social:2048,social:1080,social:720"
)


def parse_perturbations(specs: list[str] | str | None) -> list[PerturbSpec]:
    """``["jpeg:95,jpeg:75", "blur:1"]`` or ``"default"`` -> specs, in order, duplicates dropped.

    Raises :class:`SefError` naming the bad item and the known kinds."""
    if specs is None:
        return []
    if isinstance(specs, str):
        specs = [specs]
    out: list[PerturbSpec] = []
    for spec in specs:
        for item in (p.strip() for p in spec.split(",")):
            if not item:
                continue
            if item == "default":
                out.extend(parse_perturbations(DEFAULT_SWEEP))
                continue
            name, sep, raw = item.partition(":")
            if name not in _REGISTRY:
                raise SefError(f"unknown perturbation {name!r} in {item!r}; known: {', '.join(_REGISTRY)} or 'default'")
            kind = _REGISTRY[name]
            try:
                value = float(raw) if sep else float("nan")
            except ValueError:
                value = float("nan")
            if not np.isfinite(value) or (kind.integer and not value.is_integer()):
                kind_word = "an integer" if kind.integer else "a number"
                raise SefError(f"perturbation {item!r}: expected {name}:VALUE with {kind_word} VALUE ({kind.help})")
            if value < kind.minimum or (kind.maximum is not None and value > kind.maximum):
                high = "" if kind.maximum is None else f" and <= {_fmt(kind.maximum)}"
                raise SefError(f"perturbation {item!r}: value must be >= {_fmt(kind.minimum)}{high}")
            out.append(PerturbSpec(name, value))
    seen: set[PerturbSpec] = set()
    return [p for p in out if not (p in seen or seen.add(p))]


def format_bias_jpeg(image: Image.Image, quality: int) -> Image.Image:
    """The format-bias protocol: a generated image re-encoded as JPEG at ``quality`` before scoring (e.g. 96, the
    quality most ImageNet reals carry; Grommelt et al., "Fake or JPEG?", 2024)."""
    return jpeg(to_rgb(image), quality)
