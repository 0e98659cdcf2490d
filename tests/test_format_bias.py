"""bench/format_bias.py (issue #24): its reals carry their photo's JPEG encoding, its conditions are what they say
(the reversed condition's real never went through JPEG, its fakes carry the real's tables; the named protocols
re-encode at their quality), and a tiny run writes a results file with the headline and no local path."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from conftest import asset, photo_like
from PIL import Image, JpegImagePlugin
from test_bench_commands import _load

from sefcore.imageio import estimate_jpeg_quality
from sefcore.privacy import json_local_paths


@pytest.fixture(scope="module")
def fb():
    return _load("format_bias")


def _decoded(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def test_a_jpeg_photos_tiles_keep_its_tables_and_subsampling(fb, assets):
    with Image.open(asset(assets, "photos/rocket.jpg")) as photo:
        photo.load()
        tile = photo.convert("RGB").crop((0, 0, 96, 96))
        out = _decoded(fb.jpeg_like(tile, photo))
        assert out.quantization == photo.quantization
        assert JpegImagePlugin.get_sampling(out) == JpegImagePlugin.get_sampling(photo)


def test_a_png_photos_tiles_get_the_stated_quality(fb):
    photo = Image.open(io.BytesIO(_png(photo_like(64, 64))))
    out = _decoded(fb.jpeg_like(photo.convert("RGB"), photo))
    assert out.format == "JPEG"
    assert estimate_jpeg_quality(out.quantization[0]) == 90


def _png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return buf.getvalue()


def _photo(fb) -> dict[str, list[Image.Image]]:
    """One photo's images as load_photo returns them: two tiles, JPEG reals at quality 80, lossless fakes."""
    lossless = [Image.fromarray(photo_like(48, 48, s)) for s in (1, 2)]
    jpeg = [_decoded(_jpeg(im, 80)) for im in lossless]
    fakes = [Image.fromarray(photo_like(48, 48, s)) for s in (3, 4)]
    out = {"real_jpeg": jpeg, "real_aligned": [_decoded(_jpeg(im, 80)) for im in jpeg], "real_lossless": lossless}
    for family in fb.FAMILIES:
        out[f"{family}_lossless"] = fakes
        out[f"{family}_jpeg"] = [_decoded(_jpeg(im, 80)) for im in fakes]
    return out


def _jpeg(image: Image.Image, quality: int) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def test_conditions_are_what_they_say(fb):
    photo = _photo(fb)
    conds = fb.conditions(photo, "p")
    assert set(conds) == {"misaligned_as_built", "aligned_as_built", "dda_jpeg96", "reversed", "social"}
    for family in fb.FAMILIES:
        # reversed: the real never went through JPEG, the fake carries the JPEG
        assert conds["reversed"]["real"] is photo["real_lossless"]
        assert all(im.format == "JPEG" for im in conds["reversed"][family])
        # as built: the misaligned build's lossless fake, the aligned build's JPEG fake
        assert conds["misaligned_as_built"][family] is photo[f"{family}_lossless"]
        assert conds["aligned_as_built"]["real"] is photo["real_aligned"]
        # DDA's protocol: both classes at JPEG 96
        for im in (*conds["dda_jpeg96"]["real"], *conds["dda_jpeg96"][family]):
            assert estimate_jpeg_quality(im.quantization[0]) == 96
        # the social chain ends in WebP and may downscale; it is drawn per image, the same on a rerun
        assert all(im.format == "WEBP" and im.width <= 48 for im in conds["social"][family])
    again = fb.conditions(photo, "p")["social"]["real"]
    assert [np.asarray(a).tobytes() for a in again] == [np.asarray(b).tobytes() for b in conds["social"]["real"]]


def _by_mean_brightness(detector, images, batch_size=64):
    """A stand-in for the scoring pipeline: P(generated) rises with the mean pixel, so a known AP and format AUROC
    follow."""

    class S:
        pass

    import torch

    s = S()
    s.probs = torch.tensor([float(np.asarray(im, dtype=np.float32).mean()) / 255 for im in images])
    return s


def test_the_format_control_is_an_auroc_of_lossless_against_jpeg(fb, monkeypatch):
    # Fakes brighter than reals: AP 1 in every condition that keeps brightness; the control compares the real tiles'
    # two encodings, whose mean brightness JPEG barely moves, so the AUROC is computed, not assumed: check it by hand.
    photo = _photo(fb)
    bright = [Image.fromarray(np.clip(np.asarray(im, dtype=np.int16) + 60, 0, 255).astype(np.uint8))
              for im in photo["sr_lossless"]]  # fmt: skip
    for family in fb.FAMILIES:
        photo[f"{family}_lossless"] = bright
        photo[f"{family}_jpeg"] = [_decoded(_jpeg(im, 80)) for im in bright]
    held = {"p": photo}
    monkeypatch.setattr(fb, "score_images", _by_mean_brightness)
    row = fb.score(None, held)
    assert row["misaligned_as_built"]["map"] == 1.0 and row["reversed"]["map"] == 1.0
    lossless = [np.asarray(im, dtype=np.float32).mean() for im in photo["real_lossless"]]
    jpeg = [np.asarray(im, dtype=np.float32).mean() for im in photo["real_jpeg"]]
    pairs = [(a > b) + 0.5 * (a == b) for a in lossless for b in jpeg]
    assert row["format_control"]["format_auroc"] == pytest.approx(np.mean(pairs), abs=1e-4)
    assert row["format_control"]["shortcut"] == pytest.approx(2 * abs(np.mean(pairs) - 0.5), abs=1e-4)


@pytest.mark.slow
def test_a_tiny_run_writes_its_results(fb, assets, taef2, realesr, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.open(asset(assets, "photos/rocket.jpg")).save(photos / "rocket.jpg", quality="keep")
    for seed in range(3):
        Image.fromarray(photo_like(200, 120, seed)).save(photos / f"p{seed}.png")
    out = tmp_path / "fb.json"
    fb.main(["--photos", str(photos), "--max-side", "192", "--steps", "2", "--settings", "chosen",
             "--data-dir", str(tmp_path / "data"), "--out", str(out)])  # fmt: skip
    result = json.loads(out.read_text())
    assert result["headline"]["metric"] == "aligned_minus_misaligned_ap_under_format_changes"
    assert set(result["detectors"]) == {"misaligned_chosen", "aligned_chosen"}
    assert result["heldout_tiles"] > 0
    assert json_local_paths(result) == []
    # the aligned build's fakes are JPEGs with their real's tables; the misaligned build's are PNG
    from sefmodel.train.data import iter_samples, resolve_shards

    for build, ext in (("aligned", "jpg"), ("misaligned", "png")):
        urls = resolve_shards([str(tmp_path / "data" / "rocket" / build)]).urls
        sample = next(iter_samples(urls[0]))
        assert {k.rsplit(".", 1)[-1] for k in sample if k.split(".")[0] in ("real", "taesd", "sr")} == {ext}


@pytest.mark.parametrize(
    ("args", "message"),
    [(["--settings", "mine"], "--settings: unknown ['mine']"), (["--photos", "FEW"], "at least 4 photos are needed")],
)
def test_bad_input_stops_in_one_line_before_any_work(fb, tmp_path, args, message):
    few = tmp_path / "few"
    few.mkdir()
    for seed in range(3):
        Image.fromarray(photo_like(200, 120, seed)).save(few / f"p{seed}.png")
    out = tmp_path / "fb.json"
    with pytest.raises(SystemExit) as stop:
        fb.main([a.replace("FEW", str(few)) for a in args] + ["--data-dir", str(tmp_path / "data"), "--out", str(out)])
    assert message in str(stop.value) and "\n" not in str(stop.value)
    assert not out.exists() and not (tmp_path / "data").exists()
