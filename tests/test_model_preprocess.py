"""Preprocessing: any PIL image -> normalised crops, by the documented rules."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from sefcore.errors import SefError
from sefcore.imageio import to_rgb
from sefmodel.model.preprocess import ImageProcessor, crop_boxes

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def _process(image: Image.Image, crop: str | None = None, **settings) -> torch.Tensor:
    """``image`` through a 32-px processor with MEAN/STD and ``settings``."""
    return ImageProcessor(size=32, image_mean=MEAN, image_std=STD, **settings)(image, crop)


@pytest.mark.parametrize("mode", ["L", "LA", "RGBA", "P", "CMYK", "I;16", "I", "F", "1"])
def test_every_mode_becomes_8bit_rgb(mode):
    image = Image.new(mode, (20, 10))
    out = to_rgb(image)
    assert out.mode == "RGB" and out.size == (20, 10)


def test_sixteen_bit_grayscale_is_scaled_not_clipped():
    arr = np.full((4, 4), 65535 // 2, dtype=np.uint16)
    out = np.asarray(to_rgb(Image.fromarray(arr)))
    assert 126 <= out[0, 0, 0] <= 128  # mid-grey stays mid-grey instead of saturating at 255


def test_alpha_is_composited_onto_white_as_in_the_training_data():
    assert to_rgb(Image.new("RGBA", (4, 4), (200, 100, 50, 0))).getpixel((0, 0)) == (255, 255, 255)
    assert to_rgb(Image.new("RGBA", (4, 4), (200, 100, 50, 255))).getpixel((0, 0)) == (200, 100, 50)


def _variants() -> dict[str, Image.Image]:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
    alpha = rng.integers(0, 256, (12, 16), dtype=np.uint8)
    palette = Image.fromarray(rgb).quantize(16)
    palette.info["transparency"] = 3
    return {
        "RGBA": Image.fromarray(np.dstack([rgb, alpha]), "RGBA"),
        "LA": Image.fromarray(np.dstack([rgb[..., 0], alpha]), "LA"),
        "P+transparency": palette,
        "I;16": Image.fromarray(rng.integers(0, 65536, (12, 16), dtype=np.uint16)),
        "CMYK": Image.fromarray(rgb).convert("CMYK"),
        "L": Image.fromarray(rgb[..., 1]),
    }


@pytest.mark.parametrize("name", list(_variants()))
def test_scoring_converts_images_exactly_as_the_build_does(name):
    """A detector must meet its inputs converted as its training data was (sefcore.imageio.decode)."""
    import io

    from sefcore.imageio import decode

    image = _variants()[name]
    buf = io.BytesIO()
    image.save(buf, "TIFF" if name == "CMYK" else "PNG", **({"transparency": 3} if name == "P+transparency" else {}))
    built = decode(buf.getvalue(), max_pixels=10**6).pixels
    scored = np.asarray(to_rgb(Image.open(io.BytesIO(buf.getvalue()))))
    assert built.shape == scored.shape and np.array_equal(built, scored)


def test_exif_orientation_is_applied():
    image = Image.new("RGB", (30, 10))
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    image.info["exif"] = exif.tobytes()
    image = Image.open(_roundtrip_jpeg(image, exif))
    assert to_rgb(image).size == (10, 30)


def _roundtrip_jpeg(image, exif):
    import io

    buf = io.BytesIO()
    image.save(buf, format="JPEG", exif=exif.tobytes())
    buf.seek(0)
    return buf


def test_center_crop_shape_and_normalisation():
    image = Image.new("RGB", (50, 40), (255, 128, 0))
    x = _process(image)
    assert x.shape == (1, 3, 32, 32) and x.dtype == torch.float32
    torch.testing.assert_close(x[0, :, 0, 0], torch.tensor([2.0, (128 / 255 - 0.5) / 0.25, -2.0]))


def test_small_images_are_padded_with_the_mean_or_upscaled():
    image = Image.new("RGB", (10, 40), (255, 255, 255))
    padded = _process(image, small="pad")
    assert padded.shape == (1, 3, 32, 32)
    assert torch.all(padded[0, :, :, 0] == 0)  # left border: padding, the mean colour -> 0
    assert torch.all(padded[0, :, :, 16] == 2.0)  # the image itself (white)
    upscaled = _process(image, small="upscale")
    assert upscaled.shape == (1, 3, 32, 32) and torch.all(upscaled == 2.0)


def test_multi_crop_grid_covers_the_image():
    boxes = crop_boxes(100, 40, 32, "multi", crops_per_side=3)
    assert len(boxes) == 3 * 2
    assert min(b[0] for b in boxes) == 0 and max(b[2] for b in boxes) == 100
    assert min(b[1] for b in boxes) == 0 and max(b[3] for b in boxes) == 40
    assert crop_boxes(32, 32, 32, "multi") == [(0, 0, 32, 32)]


def test_resize_short_side_before_cropping():
    image = Image.new("RGB", (400, 200))
    assert _process(image, crop="multi", resize=32, crops_per_side=9).shape == (
        2,
        3,
        32,
        32,
    )  # 64x32


def test_bad_modes_are_rejected():
    image = Image.new("RGB", (40, 40))
    with pytest.raises(SefError, match="unknown crop mode"):
        _process(image, crop="random")
    with pytest.raises(SefError, match="small-image rule"):
        _process(image, small="stretch")
