"""Perturbations change the pixels as specified: measurable JPEG quality, sizes, blur, noise level."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import photo_like
from PIL import Image, ImageFilter

from sefcore.errors import SefError
from sefcore.imageio import estimate_jpeg_quality
from sefmodel.evaluation.perturb import (
    PRESETS,
    PerturbSpec,
    format_bias_jpeg,
    parse_perturbations,
    register_preset,
    resolve_presets,
)


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    return Image.fromarray(photo_like(96, 64, seed=3))


@pytest.mark.parametrize("quality", [95, 75, 50])
def test_jpeg_quality_is_measurable(photo, quality):
    out = PerturbSpec("jpeg", quality).apply(photo)
    assert out.format == "JPEG" and out.size == photo.size
    assert estimate_jpeg_quality(out.quantization[0]) == quality
    assert estimate_jpeg_quality(format_bias_jpeg(photo, 96).quantization[0]) == 96


def test_lower_quality_means_larger_error(photo):
    ref = np.asarray(photo, dtype=np.float64)

    def err(spec):
        return np.abs(np.asarray(spec.apply(photo).convert("RGB"), dtype=np.float64) - ref).mean()

    assert err(PerturbSpec("jpeg", 95)) < err(PerturbSpec("jpeg", 50))
    webp = PerturbSpec("webp", 50).apply(photo)
    assert webp.format == "WEBP" and 0 < err(PerturbSpec("webp", 90)) < err(PerturbSpec("webp", 30))


def test_resize_blur_noise_social(photo):
    assert PerturbSpec("resize", 0.5).apply(photo).size == (48, 32)
    assert PerturbSpec("resize", 2).apply(photo).size == (192, 128)
    blurred = PerturbSpec("blur", 1.5).apply(photo)
    assert np.array_equal(np.asarray(blurred), np.asarray(photo.filter(ImageFilter.GaussianBlur(1.5))))
    flat = Image.new("RGB", (200, 200), (128, 128, 128))
    noisy = np.asarray(PerturbSpec("noise", 5).apply(flat, key="a"), dtype=np.float64) - 128
    assert abs(noisy.std() - 5) < 0.2 and abs(noisy.mean()) < 0.2
    again = PerturbSpec("noise", 5).apply(flat, key="a")
    other = PerturbSpec("noise", 5).apply(flat, key="b")
    assert np.array_equal(np.asarray(again), noisy.astype(np.int64) + 128)  # seeded by the key: reproducible
    assert not np.array_equal(np.asarray(again), np.asarray(other))
    social = PerturbSpec("social", 48).apply(photo)
    assert social.size == (48, 32) and social.format == "JPEG"
    assert estimate_jpeg_quality(social.quantization[0]) == 75
    assert PerturbSpec("social", 1000).apply(photo).size == photo.size  # small images are not upscaled


def test_parse_specs():
    specs = parse_perturbations(["jpeg:95,jpeg:75", "blur:1", "jpeg:95"])
    assert [s.label for s in specs] == ["jpeg:95", "jpeg:75", "blur:1"]
    assert {s.name for s in parse_perturbations("default")} == {"jpeg", "webp", "resize", "blur", "noise", "social"}
    for bad, message in [
        ("sharpen:1", "unknown perturbation"),
        ("jpeg:high", "expected jpeg:VALUE"),
        ("jpeg:101", "<= 100"),
        ("jpeg:75.5", "integer"),
        ("blur", "expected blur:VALUE"),
    ]:
        with pytest.raises(SefError, match=message):
            parse_perturbations(bad)


def test_perturbed_images_are_converted_like_unperturbed_ones():
    """EXIF rotation and alpha follow the scoring rule before any perturbation, so a sweep compares like with like."""
    import io

    from sefcore.imageio import to_rgb

    image = Image.new("RGB", (30, 10), (10, 200, 30))
    exif = image.getexif()
    exif[0x0112] = 6  # shown rotated by 90 degrees
    buf = io.BytesIO()
    image.save(buf, "JPEG", exif=exif.tobytes())
    rotated = Image.open(io.BytesIO(buf.getvalue()))
    assert to_rgb(rotated).size == (10, 30)
    assert PerturbSpec("blur", 0.5).apply(rotated).size == (10, 30)
    assert format_bias_jpeg(rotated, 96).size == (10, 30)
    clear = Image.new("RGBA", (16, 16), (200, 0, 0, 0))  # fully transparent: white when scored
    assert PerturbSpec("blur", 0.5).apply(clear).getpixel((8, 8)) == (255, 255, 255)


def test_robustness_presets_resolve_to_their_documented_perturbations(photo):
    assert [p.name for p in resolve_presets(["dda", "social", "dda"])] == ["dda", "social"]
    assert PRESETS["dda"].specs == [PerturbSpec("jpeg", 96)]  # DDA's evaluation: JPEG QF96, both classes
    assert PRESETS["social"].specs == [PerturbSpec("socialchain", 1080)]
    assert estimate_jpeg_quality(PRESETS["dda"].specs[0].apply(photo).quantization[0]) == 96
    with pytest.raises(SefError, match="unknown robustness preset 'twitter'; known: dda, social"):
        resolve_presets(["twitter"])
    with pytest.raises(ValueError, match="already registered"):
        register_preset("dda", "jpeg:90", "another")
    with pytest.raises(SefError, match="unknown perturbation"):
        register_preset("bad", "sharpen:1", "a typo is caught when the preset is registered")
    assert "bad" not in PRESETS


def test_social_chain_is_the_documented_chain_drawn_per_image_key(photo):
    """Downscale by U[0.5, 1] (then long side <= N), JPEG at an integer quality in U{75..95}, WebP 80: recomputed
    here from the key's sha256 with Pillow directly."""
    import hashlib
    import io

    def expected(image, max_side, key):
        seed = int.from_bytes(hashlib.sha256(f"socialchain:{max_side}:{key}".encode()).digest()[:8], "little")
        rng = np.random.default_rng(seed)
        factor = min(rng.uniform(0.5, 1.0), max_side / max(image.size))
        quality = int(rng.integers(75, 96))
        w, h = image.size
        image = image.resize((max(1, round(w * factor)), max(1, round(h * factor))), Image.Resampling.BICUBIC)
        buf = io.BytesIO()
        image.save(buf, "JPEG", quality=quality, subsampling=2)
        buf2 = io.BytesIO()
        Image.open(buf).convert("RGB").save(buf2, "WEBP", quality=80, method=4)
        return np.asarray(Image.open(buf2).convert("RGB")), quality

    chain = parse_perturbations("socialchain:1080")[0]  # parsed as 1080.0: draws as 1080
    outputs, qualities = {}, set()
    for key in ("a/1.png", "b/2.png", "c/3.png"):
        out = chain.apply(photo, key)
        assert out.format == "WEBP" and 48 <= out.width <= 96
        want, quality = expected(photo, 1080, key)
        assert np.array_equal(np.asarray(out.convert("RGB")), want)
        assert np.array_equal(np.asarray(chain.apply(photo, key).convert("RGB")), want)  # deterministic
        outputs[key], qualities = out.size, qualities | {quality}
    assert len(set(outputs.values())) > 1 and len(qualities) > 1  # drawn per image, not once
    capped = PerturbSpec("socialchain", 40).apply(photo, "a/1.png")
    assert max(capped.size) <= 40
    assert np.array_equal(np.asarray(capped.convert("RGB")), expected(photo, 40, "a/1.png")[0])
    assert "socialchain" not in {s.name for s in parse_perturbations("default")}  # the sweep is unchanged
