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
``socialchain:N``     the social-media chain of the format-bias experiment, drawn per image from a generator
                      seeded by the image's key: downscale by a factor in [0.5, 1] (uniform) and further if the
                      long side still exceeds N pixels, then JPEG at a quality in 75-95 (uniform integer),
                      then lossy WebP at quality 80
====================  ========================================================================================

``--perturb default`` expands to :data:`DEFAULT_SWEEP`. A **robustness preset** (``--robustness NAME``) is a named
list of perturbations, so two papers' numbers under one name are computed alike: :data:`PRESETS`, extended with
:func:`register_preset`. A new perturbation is one function ``(image, value,
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

from sefcore.errors import SefError
from sefcore.imageio import to_rgb

SOCIAL_JPEG_QUALITY = 75
CHAIN_SCALE = (0.5, 1.0)  # socialchain: per-image downscale factor, uniform
CHAIN_JPEG_QUALITY = (75, 95)  # socialchain: per-image JPEG quality, uniform integer, both ends included
CHAIN_WEBP_QUALITY = 80  # socialchain: the WebP a platform serves the upload as
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


def _rng(tag: str, key: str) -> np.random.Generator:
    """A generator that depends only on ``tag`` (the perturbation) and the image's key, never on batch-mates."""
    return np.random.default_rng(int.from_bytes(hashlib.sha256(f"{tag}:{key}".encode()).digest()[:8], "little"))


def noise(image: Image.Image, sigma: float, key: str = "") -> Image.Image:
    rng = _rng(f"noise:{sigma}", key)  # str(float): kept as it was, so earlier noise results reproduce
    pixels = np.asarray(image, dtype=np.float32)
    noisy = pixels + rng.normal(0.0, sigma, pixels.shape).astype(np.float32)
    return Image.fromarray(np.clip(np.rint(noisy), 0, 255).astype(np.uint8), "RGB")


def social(image: Image.Image, max_side: float, key: str = "") -> Image.Image:
    width, height = image.size
    scale = max_side / max(width, height)
    if scale < 1:
        image = resize(image, scale)
    return jpeg(image, SOCIAL_JPEG_QUALITY)


def social_chain(image: Image.Image, max_side: float, key: str = "") -> Image.Image:
    """Downscale (random factor, then long side <= ``max_side``), JPEG at a random quality, WebP: an upload's fate
    on a social network, drawn per image from its key (the issue #24 chain; see the module docstring)."""
    rng = _rng(f"socialchain:{_fmt(max_side)}", key)  # the label, so 1080 and 1080.0 draw alike
    factor = rng.uniform(*CHAIN_SCALE)
    quality = int(rng.integers(CHAIN_JPEG_QUALITY[0], CHAIN_JPEG_QUALITY[1] + 1))
    factor = min(factor, max_side / max(image.size))
    if factor < 1:
        image = resize(image, factor)
    return webp(jpeg(image, quality).convert("RGB"), CHAIN_WEBP_QUALITY)


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

register_perturbation(
    "socialchain", social_chain,
    f"downscale x{CHAIN_SCALE[0]:g}-{CHAIN_SCALE[1]:g} and long side <= N px, JPEG {CHAIN_JPEG_QUALITY[0]}-"
    f"{CHAIN_JPEG_QUALITY[1]}, WebP {CHAIN_WEBP_QUALITY} (per image, seeded by its key)", integer=True, minimum=16,
    x_label="max side (px) of the social-media chain", higher_is_milder=True,
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


@dataclass(frozen=True)
class Preset:
    """A named robustness protocol: ``perturbations`` (``--perturb`` syntax), each applied to reals and fakes alike."""

    name: str
    perturbations: str
    help: str

    @property
    def specs(self) -> list[PerturbSpec]:
        return parse_perturbations(self.perturbations)


PRESETS: dict[str, Preset] = {}


def register_preset(name: str, perturbations: str, help: str) -> None:
    """Register a preset; a duplicate name raises ``ValueError``, a bad perturbation list :class:`SefError`."""
    if name in PRESETS:
        raise ValueError(f"robustness preset {name!r} is already registered")
    parse_perturbations(perturbations)  # validated now, not at the first eval that names it
    PRESETS[name] = Preset(name, perturbations, help)


def resolve_presets(names: list[str] | None) -> list[Preset]:
    """``["dda", "social"]`` -> presets, in order, duplicates dropped; an unknown name raises :class:`SefError`."""
    out: list[Preset] = []
    for name in names or []:
        if name not in PRESETS:
            raise SefError(f"unknown robustness preset {name!r}; known: {', '.join(PRESETS)}")
        if PRESETS[name] not in out:
            out.append(PRESETS[name])
    return out


register_preset("dda", "jpeg:96", "JPEG at quality 96 on reals and fakes alike, as DDA's evaluation does")
register_preset(
    "social", "socialchain:1080",
    "The social-media chain: downscale x0.5-1 and long side <= 1080 px, JPEG 75-95, WebP 80 (per image)",
)  # fmt: skip


def format_bias_jpeg(image: Image.Image, quality: int) -> Image.Image:
    """The format-bias protocol: a generated image re-encoded as JPEG at ``quality`` before scoring (e.g. 96, the
    quality most ImageNet reals carry; Grommelt et al., "Fake or JPEG?", 2024)."""
    return jpeg(to_rgb(image), quality)
