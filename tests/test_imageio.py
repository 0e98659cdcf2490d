"""Decoding rules (DESIGN.md §9): every kind of bad or unusual input is converted by a rule or skipped by reason."""

from __future__ import annotations

import io

import numpy as np
import pytest
from conftest import jpeg_bytes, photo_like
from PIL import Image

from sefdata.errors import SkipSample
from sefdata.imageio import decode, estimate_jpeg_quality

LIMIT = 10_000_000


def _png(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG", **kw)
    return buf.getvalue()


def _reason(data: bytes, max_pixels: int = LIMIT) -> str:
    with pytest.raises(SkipSample) as err:
        decode(data, max_pixels=max_pixels)
    return err.value.reason


def test_skips_empty_non_image_and_truncated():
    assert _reason(b"") == "empty"
    assert _reason(b"GIF89a? no, just text pretending") == "not_an_image"
    good = jpeg_bytes(photo_like(64, 64), quality=90)
    assert _reason(good[: len(good) // 2]) == "corrupt"


def test_skips_animated_and_decompression_bombs():
    frames = [Image.fromarray(photo_like(32, 32, s)) for s in (1, 2)]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    assert _reason(buf.getvalue()) == "animated"
    # a 20000 x 20000 PNG of one colour is tiny on disk; the pixel limit refuses it before decoding
    bomb = _png(Image.new("L", (20000, 20000)), optimize=True)
    assert len(bomb) < 1_000_000
    assert _reason(bomb, max_pixels=100_000_000) == "too_large"


def test_cmyk_converted_to_rgb():
    rgb = photo_like(48, 32)
    data = jpeg_bytes(rgb, quality=95)
    cmyk = io.BytesIO()
    Image.open(io.BytesIO(data)).convert("CMYK").save(cmyk, "JPEG", quality=95)
    out = decode(cmyk.getvalue(), max_pixels=LIMIT)
    assert out.mode == "CMYK" and "cmyk_to_rgb" in out.conversions
    assert out.pixels.shape == (32, 48, 3) and out.pixels.dtype == np.uint8
    assert np.abs(out.pixels.astype(int) - rgb.astype(int)).mean() < 12  # same picture, not garbage


def test_16bit_scaled_not_clipped():
    values = np.linspace(0, 65535, 64 * 16).reshape(16, 64).astype(np.uint16)
    out = decode(_png(Image.fromarray(values)), max_pixels=LIMIT)
    assert out.conversions == ["16bit_to_8bit", "gray_to_rgb"]
    expected = np.rint(values / 257).astype(np.uint8)
    assert np.array_equal(out.pixels[:, :, 0], expected) and np.array_equal(out.pixels[:, :, 2], expected)
    assert out.pixels.max() == 255 and out.pixels.min() == 0


def test_palette_with_transparency_composited_on_white():
    pal = Image.new("P", (8, 8), 0)
    pal.putpalette([0, 0, 0] + [200, 10, 10] * 255)
    pal.paste(1, (4, 0, 8, 8))
    out = decode(_png(pal, transparency=0), max_pixels=LIMIT)
    assert "alpha_on_white" in out.conversions
    assert (out.pixels[:, :4] == 255).all()  # transparent black became white
    assert (out.pixels[:, 4:] == [200, 10, 10]).all()


def test_grayscale_replicated_and_exif_orientation_applied():
    gray = photo_like(40, 20)[:, :, 0]
    out = decode(_png(Image.fromarray(gray)), max_pixels=LIMIT)
    assert out.conversions == ["gray_to_rgb"] and np.array_equal(out.pixels[:, :, 1], gray)

    img = Image.fromarray(photo_like(40, 20))
    exif = img.getexif()
    exif[0x0112] = 6  # stored sideways: viewers rotate 90 degrees clockwise
    buf = io.BytesIO()
    img.save(buf, "PNG", exif=exif)
    out = decode(buf.getvalue(), max_pixels=LIMIT)
    assert "exif_transpose" in out.conversions and out.pixels.shape == (40, 20, 3)


@pytest.mark.parametrize("quality", [30, 50, 75, 90, 95])
def test_jpeg_encoding_read_back(quality):
    data = jpeg_bytes(photo_like(64, 64), quality=quality, subsampling=1)
    out = decode(data, max_pixels=LIMIT)
    assert out.format == "JPEG" and out.jpeg is not None
    assert out.jpeg.quality == quality
    assert out.jpeg.subsampling == 1
    assert estimate_jpeg_quality(out.jpeg.qtables[0]) == quality
