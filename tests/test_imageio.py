"""Decoding rules (DESIGN.md §9): every kind of bad or unusual input is converted by a rule or skipped by reason."""

from __future__ import annotations

import io

import numpy as np
import pytest
from conftest import jpeg_bytes, photo_like
from PIL import Image

from sefcore.errors import SkipSample
from sefcore.imageio import decode, estimate_jpeg_quality

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


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))


@pytest.mark.parametrize("orientation", [1, 6])
def test_a_large_jpeg_decodes_at_a_reduced_scale_when_it_will_be_downscaled(orientation):
    """With max_side, a JPEG over twice that decodes smaller (libjpeg's DCT scaling), yet align gives the geometry
    and records of a full decode (sizes of the full-scale upright source) and nearly its pixels."""
    from sefdata.align import align

    img = Image.fromarray(photo_like(1600, 1000))
    exif = Image.Exif()
    exif[0x0112] = orientation  # 6: shown rotated 90 degrees, so upright it is 1000 x 1600
    data = io.BytesIO()
    img.save(data, "JPEG", quality=95, exif=exif.tobytes())
    full, small = decode(data.getvalue(), max_pixels=LIMIT), decode(data.getvalue(), max_pixels=LIMIT, max_side=200)
    upright = (1600, 1000) if orientation == 1 else (1000, 1600)
    assert full.full_size == upright and small.full_size == upright and small.size == full.size == (1600, 1000)
    assert small.pixels.shape[0] * small.pixels.shape[1] <= full.pixels.shape[0] * full.pixels.shape[1] // 4
    assert max(small.pixels.shape[:2]) >= 2 * 200  # Pillow's thumbnail rule: at least twice the target remains
    a = align(full.pixels, multiple=8, max_side=200)
    b = align(small.pixels, multiple=8, max_side=200, full_size=small.full_size)
    assert (a.crop_box, a.resized_from, a.upright_size) == (b.crop_box, b.resized_from, b.upright_size)
    assert a.pixels.shape == b.pixels.shape and _psnr(a.pixels, b.pixels) > 40


def test_reduced_decoding_leaves_pngs_small_jpegs_and_plain_decodes_alone():
    pixels = photo_like(600, 400)
    jpeg = jpeg_bytes(pixels, quality=90)
    for data in (jpeg, _png(Image.fromarray(pixels))):
        assert decode(data, max_pixels=LIMIT, max_side=300).upright_size is None  # 600 is not over twice 300
    assert decode(_png(Image.fromarray(photo_like(1600, 800))), max_pixels=LIMIT, max_side=100).upright_size is None
    # 600 x 400 to 100: the largest DCT scale leaving at least 200 px on the longer side is 1/2 (1/4 leaves 150)
    assert decode(jpeg, max_pixels=LIMIT, max_side=100).pixels.shape == (200, 300, 3)
    plain = decode(jpeg, max_pixels=LIMIT).pixels
    np.testing.assert_array_equal(plain, decode(jpeg, max_pixels=LIMIT, max_side=300).pixels)


def test_align_refuses_reduced_pixels_without_the_downscale_they_were_decoded_for():
    from sefdata.align import align

    with pytest.raises(ValueError, match="need max_side"):
        align(photo_like(300, 200), multiple=8, full_size=(600, 400))
