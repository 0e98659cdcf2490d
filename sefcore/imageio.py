"""Decoding real images by documented rules, and reading their JPEG encoding.

Every input goes through :func:`decode`, which either returns RGB pixels or raises
:class:`~sefcore.errors.SkipSample` with a reason. The conversion rules (each recorded in the sample's
metadata under ``conversions`` when applied):

* EXIF orientation is applied (``exif_transpose``), so real and fakes are stored upright.
* CMYK (including Adobe-inverted CMYK JPEGs, which Pillow handles) is converted to RGB (``cmyk_to_rgb``).
* Any alpha (RGBA, LA, PA, or a palette with a transparent index) is composited onto white (``alpha_on_white``).
* Palette images without transparency are expanded to RGB (``palette_to_rgb``).
* 16-bit and 32-bit integer grayscale is scaled to 8 bits by value / 257, rounded (``16bit_to_8bit``).
* Grayscale and bilevel images are replicated to three channels (``gray_to_rgb``).
* Animated images (more than one frame) are skipped, not reduced to a frame.

Speed: given ``max_side`` (the build's downscale), a JPEG whose longer side is over twice that is decoded at a
reduced DCT scale (libjpeg's 1/2, 1/4, 1/8) that still leaves at least twice ``max_side``: the rule of Pillow's
``Image.thumbnail`` (``reducing_gap=2``). Its Lanczos downscale then matches a full decode's to 46.6 dB PSNR or
better (the shared photos to 384 px, 2026-12-04; 54 dB on a 2560 x 1600 one), and decode plus resize of the shared
photos take 28 ms instead of 62 ms each.
"""

from __future__ import annotations

import functools
import io
import math
import warnings
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageOps, JpegImagePlugin, UnidentifiedImageError

from sefcore.errors import SkipSample

# IJG standard luminance table (natural order), the reference for quality estimates.
_IJG_LUMA = np.array(
    [16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55,
     14, 13, 16, 24, 40, 57, 69, 56, 14, 17, 22, 29, 51, 87, 80, 62,
     18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
     49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99],
    dtype=np.float64,
)  # fmt: skip

SUBSAMPLING_NAMES = {0: "4:4:4", 1: "4:2:2", 2: "4:2:0"}


@dataclass(frozen=True)
class JpegEncoding:
    """How a JPEG was encoded: enough to encode another image the same way."""

    qtables: tuple[tuple[int, ...], ...]  # natural (row-major) order, as Pillow reads and writes them
    subsampling: int  # Pillow's code: 0 = 4:4:4, 1 = 4:2:2, 2 = 4:2:0
    quality: int  # IJG quality whose luminance table is closest (an estimate, for reporting)

    def describe(self) -> dict:
        """The sample record's ``jpeg``; tables as ``"v,v,...;v,v,..."`` (natural order), so that the record of a
        PNG source, :data:`NOT_A_JPEG`, has the same keys and types."""
        return {
            "subsampling": SUBSAMPLING_NAMES.get(self.subsampling, str(self.subsampling)),
            "quality_estimate": self.quality,
            "qtables": ";".join(",".join(map(str, t)) for t in self.qtables),
        }


NOT_A_JPEG = {"subsampling": "", "quality_estimate": 0, "qtables": ""}


def ijg_table(quality: int) -> np.ndarray:
    """The IJG luminance table libjpeg uses for ``quality`` (1..100)."""
    scale = 5000 / quality if quality < 50 else 200 - 2 * quality
    return np.clip(np.floor((_IJG_LUMA * scale + 50) / 100), 1, 255)


def estimate_jpeg_quality(luma_table: tuple[int, ...] | list[int]) -> int:
    """The IJG quality (1..100) whose luminance table is closest to ``luma_table`` (L1 distance)."""
    table = np.asarray(luma_table, dtype=np.float64)
    return int(np.argmin(np.abs(_ijg_tables() - table).sum(axis=1))) + 1


@functools.cache
def _ijg_tables() -> np.ndarray:
    """The 100 tables of :func:`ijg_table`, qualities 1..100 by row: made once (every JPEG decoded is compared with
    all of them)."""
    return np.stack([ijg_table(q) for q in range(1, 101)])


def jpeg_encoding_of(img: Image.Image) -> JpegEncoding:
    tables = tuple(tuple(int(v) for v in img.quantization[i]) for i in sorted(img.quantization))
    if len(tables) == 1:  # grayscale JPEG: its one table serves luma and chroma alike
        tables = (tables[0], tables[0])
    tables = tables[:2]  # CMYK JPEGs carry more; RGB output uses luma + chroma
    sampling = JpegImagePlugin.get_sampling(img) if img.mode in ("RGB", "YCbCr") else 0
    if sampling not in SUBSAMPLING_NAMES:  # e.g. 4:1:1, which Pillow cannot write: the nearest it can
        sampling = 2
    return JpegEncoding(qtables=tables, subsampling=sampling, quality=estimate_jpeg_quality(tables[0]))


@dataclass
class DecodedImage:
    """An input image decoded to RGB by the rules above.

    The pixels stay in Pillow's memory until asked for: a build resizes and crops them there
    (:func:`sefdata.align.align`) and copies out only the aligned box. Converting a whole decoded photo to numpy holds
    the GIL for its whole copy (3 ms of a 2560 x 1600 one, against 0.3 ms for a 512-px crop), which caps a
    many-threaded build below what its cores could decode."""

    image: Image.Image | None  # upright 8-bit RGB, loaded; None once the caller has dropped it (the build does)
    format: str  # Pillow's format name of the source file ("JPEG", "PNG", ...)
    mode: str  # Pillow's mode of the source before conversion ("RGB", "CMYK", "I;16", ...)
    size: tuple[int, int]  # (width, height) of the source as stored, before orientation
    jpeg: JpegEncoding | None = None
    icc_profile: bytes | None = None
    conversions: list[str] = field(default_factory=list)
    upright_size: tuple[int, int] | None = None  # (w, h) of the source upright at full scale; None: the image's size

    @property
    def pixels(self) -> np.ndarray:
        """H x W x 3 uint8 RGB, upright: a read-only copy of ``image``."""
        if self.image is None:
            raise ValueError("the decoded image was dropped")
        return np.asarray(self.image)

    @property
    def full_size(self) -> tuple[int, int]:
        """(w, h) of the source upright at full scale (``image`` may be smaller: a reduced-scale JPEG decode)."""
        if self.upright_size is None and self.image is None:
            raise ValueError("the decoded image was dropped")
        return self.upright_size or self.image.size


# EXIF orientations that swap width and height (transposes and 90-degree rotations)
_SWAPPING_ORIENTATIONS = (5, 6, 7, 8)
DRAFT_GAP = 2  # Pillow's thumbnail rule: decode at a DCT scale that leaves at least this many times the target


def _draft_for(img: Image.Image, max_side: int | None) -> bool:
    """Decode ``img`` (not yet loaded) at a reduced JPEG scale when it will be downscaled to ``max_side`` anyway."""
    width, height = img.size
    if max_side is None or img.format not in ("JPEG", "MPO") or max(width, height) <= DRAFT_GAP * max_side:
        return False
    scale = DRAFT_GAP * max_side / max(width, height)
    img.draft(None, (math.ceil(width * scale), math.ceil(height * scale)))
    return img.size != (width, height)


def _has_alpha(img: Image.Image) -> bool:
    return img.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (img.mode == "P" and "transparency" in img.info)


def _to_rgb(img: Image.Image, conversions: list[str]) -> Image.Image:
    if img.mode == "RGB":
        return img
    if img.mode == "CMYK":
        conversions.append("cmyk_to_rgb")
        return img.convert("RGB")
    if _has_alpha(img):
        conversions.append("alpha_on_white")
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if img.mode == "P":
        conversions.append("palette_to_rgb")
        return img.convert("RGB")
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        conversions.append("16bit_to_8bit")
        values = np.asarray(img, dtype=np.float64)
        gray = np.clip(np.rint(values / 257.0), 0, 255).astype(np.uint8)
        conversions.append("gray_to_rgb")
        return Image.fromarray(np.repeat(gray[:, :, None], 3, axis=2), "RGB")
    if img.mode in ("L", "1"):
        conversions.append("gray_to_rgb")
        return img.convert("RGB")
    conversions.append(f"{img.mode.lower()}_to_rgb")  # YCbCr, LAB, HSV, F: Pillow's own conversion
    return img.convert("RGB")


def to_rgb(img: Image.Image, conversions: list[str] | None = None) -> Image.Image:
    """Upright 8-bit RGB by the rules of this module; the conversions applied are appended to ``conversions``.

    The one rule for every image a detector sees: training data is built with it (:func:`decode`) and
    :mod:`sefmodel.model.preprocess` scores images with it, so a detector meets its inputs converted as its data was.
    """
    conversions = [] if conversions is None else conversions
    if img.getexif().get(0x0112, 1) not in (1, None):
        img = ImageOps.exif_transpose(img)
        conversions.append("exif_transpose")
    return _to_rgb(img, conversions)


def decode(data: bytes, *, max_pixels: int, max_side: int | None = None) -> DecodedImage:
    """Decode image bytes to upright RGB uint8, or raise SkipSample with the reason. ``max_side``: the longer side
    the caller downscales to; a large JPEG may then decode at a reduced scale (module docstring)."""
    if not data:
        raise SkipSample("empty")
    try:
        with warnings.catch_warnings():
            # our own pixel limit below replaces Pillow's warning; Pillow's hard error still maps to too_large
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            width, height = img.size
            if width * height > max_pixels:
                raise SkipSample("too_large", f"{width}x{height} > {max_pixels} pixels")
            if getattr(img, "n_frames", 1) > 1:
                raise SkipSample("animated", f"{img.n_frames} frames")
            drafted = _draft_for(img, max_side)
            img.load()
    except SkipSample:
        raise
    except Image.DecompressionBombError as e:
        raise SkipSample("too_large", str(e)) from None
    except UnidentifiedImageError:
        raise SkipSample("not_an_image") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise SkipSample("corrupt", str(e)) from None

    fmt = img.format or "unknown"
    jpeg = jpeg_encoding_of(img) if fmt in ("JPEG", "MPO") else None  # MPO: a camera JPEG with a second picture
    icc = img.info.get("icc_profile") or None
    if icc is not None and icc[16:20] != b"RGB ":  # a CMYK/gray profile would mis-describe RGB output
        icc = None
    conversions: list[str] = []
    mode = img.mode
    upright = None
    if drafted:
        swapped = img.getexif().get(0x0112, 1) in _SWAPPING_ORIENTATIONS
        upright = (height, width) if swapped else (width, height)
    rgb = to_rgb(img, conversions)
    return DecodedImage(
        image=rgb,
        format=fmt,
        mode=mode,
        size=(width, height),
        jpeg=jpeg,
        icc_profile=icc,
        conversions=conversions,
        upright_size=upright,
    )
