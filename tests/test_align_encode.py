"""Alignment geometry and encoding policies."""

from __future__ import annotations

import io
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from conftest import asset, jpeg_bytes, photo_like
from PIL import Image, JpegImagePlugin

import sefdata.encode
from sefcore.errors import SefError, SkipSample
from sefcore.imageio import decode
from sefdata.align import align, common_multiple
from sefdata.encode import EncodingPolicy, encode, encode_png, encoding_for


def test_crop_to_common_multiple_keeps_top_left_grid():
    px = photo_like(101, 75)
    a = align(px, multiple=common_multiple([8, 4]))
    assert a.crop_box == (0, 0, 96, 72) and a.pixels.shape == (72, 96, 3)
    assert np.array_equal(a.pixels, px[:72, :96])


def test_fixed_crop_is_centred_on_the_jpeg_grid_and_max_side_downscales():
    px = photo_like(300, 200)
    a = align(px, multiple=8, crop=128)
    left, top, right, bottom = a.crop_box
    assert (right - left, bottom - top) == (128, 128)
    assert left % 16 == 0 and top % 16 == 0 and abs(left - 86) < 16 and abs(top - 36) < 16
    b = align(px, multiple=8, max_side=150)
    assert b.resized_from == (300, 200) and b.pixels.shape == (96, 144, 3)  # 150x100 cut to multiples of 8


@pytest.mark.parametrize("geometry", [{"crop": 128}, {"max_side": 200}, {"max_side": 200, "crop": 96}, {}])
def test_a_decoded_image_is_aligned_in_pillow_and_only_the_box_copied_out(monkeypatch, geometry):
    """The build aligns the decoded image where Pillow holds it: the same pixels as aligning its numpy copy, and
    the only Pillow-to-numpy copy (made with the GIL held) is the aligned box, not the whole photo."""
    decoded = decode(jpeg_bytes(photo_like(640, 480), quality=90), max_pixels=10**7)
    expected = align(decoded.pixels, multiple=8, **geometry)
    copied: list[tuple[int, int]] = []
    tobytes = Image.Image.tobytes
    monkeypatch.setattr(Image.Image, "tobytes", lambda im, *a, **k: copied.append(im.size) or tobytes(im, *a, **k))
    got = align(decoded.image, multiple=8, **geometry)
    assert np.array_equal(got.pixels, expected.pixels) and got.crop_box == expected.crop_box
    assert (got.resized_from, got.upright_size) == (expected.resized_from, expected.upright_size)
    assert copied == [got.pixels.shape[1::-1]]


def test_too_small_is_skipped_with_reason():
    with pytest.raises(SkipSample) as e:
        align(photo_like(7, 30), multiple=8)
    assert e.value.reason == "too_small"
    with pytest.raises(SkipSample):
        align(photo_like(64, 40), multiple=8, min_side=48)
    with pytest.raises(SkipSample):
        align(photo_like(64, 40), multiple=8, crop=48)


@pytest.mark.parametrize("bad", ["jpeg", "jpeg:0", "jpeg:101", "webp:x", "gif", "png:3"])
def test_bad_policies_are_clear_errors(bad):
    with pytest.raises(SefError, match="--format"):
        EncodingPolicy.parse(bad)


@pytest.mark.parametrize("subsampling", [0, 1, 2])
def test_match_reuses_source_tables_and_subsampling(subsampling):
    # a non-standard table, as a camera would write it
    tables = [[(i % 7) + 2 for i in range(64)], [(i % 5) + 3 for i in range(64)]]
    source = decode(jpeg_bytes(photo_like(64, 48), qtables=tables, subsampling=subsampling), max_pixels=10**7)
    enc = encoding_for(EncodingPolicy.parse("match"), source)
    fake = photo_like(64, 48, seed=5)
    out = Image.open(io.BytesIO(encode(fake, enc)))
    assert out.format == "JPEG" and enc.ext == "jpg"
    assert [list(out.quantization[i]) for i in (0, 1)] == tables
    assert JpegImagePlugin.get_sampling(out) == subsampling


def test_policies_png_jpeg_webp_and_png_sources():
    png_source = decode(_png(photo_like(32, 32)), max_pixels=10**7)
    assert encoding_for(EncodingPolicy.parse("match"), png_source).ext == "png"
    px = photo_like(32, 32)
    lossless = encode(px, encoding_for(EncodingPolicy.parse("png"), png_source))
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(lossless))), px)
    jpg = Image.open(io.BytesIO(encode(px, encoding_for(EncodingPolicy.parse("jpeg:80"), png_source))))
    assert jpg.format == "JPEG"
    from sefcore.imageio import estimate_jpeg_quality

    assert estimate_jpeg_quality(jpg.quantization[0]) == 80
    webp = Image.open(io.BytesIO(encode(px, encoding_for(EncodingPolicy.parse("webp:70"), png_source))))
    assert webp.format == "WEBP"


def test_encoding_is_deterministic():
    px = photo_like(40, 40)
    source = decode(jpeg_bytes(px, quality=85), max_pixels=10**7)
    enc = encoding_for(EncodingPolicy.parse("match"), source)
    assert encode(px, enc) == encode(px.copy(), enc)


def _pillow_to_buffer(px: np.ndarray, encoding) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(px, "RGB").save(buf, format=encoding.pil_format, **dict(encoding.options))
    return buf.getvalue()


def _lossy_encodings() -> list:
    from PIL import ImageCms

    profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    tables = [[(i % 7) + 2 for i in range(64)], [(i % 5) + 3 for i in range(64)]]
    camera_jpeg = jpeg_bytes(photo_like(64, 48), qtables=tables, subsampling=1, icc_profile=profile)
    camera = decode(camera_jpeg, max_pixels=10**7)
    png = decode(_png(photo_like(16, 16)), max_pixels=10**7)
    return [encoding_for(EncodingPolicy.parse(policy), source)
            for policy, source in [("match", camera), ("jpeg:80", png), ("webp:70", png)]]  # fmt: skip


def test_jpeg_and_webp_bytes_are_pillows_however_they_are_written(monkeypatch):
    # encode() has Pillow write into a per-thread in-memory file (the GIL released), rewritten for every image: a
    # small image after a large one must not carry the large one's tail, and the fallback (no memfd) must agree
    large, small = photo_like(640, 480, seed=1), photo_like(40, 24, seed=2)
    for encoding in _lossy_encodings():
        expected = [_pillow_to_buffer(px, encoding) for px in (large, small, large)]
        if "qtables" in dict(encoding.options):  # the camera's fine tables: more than one write of Pillow's 64 KiB
            assert len(expected[0]) > 2**16
        assert [encode(px, encoding) for px in (large, small, large)] == expected, encoding.pil_format
        with monkeypatch.context() as m:
            m.setattr(sefdata.encode, "_memfile", lambda: None)
            assert [encode(px, encoding) for px in (large, small, large)] == expected, encoding.pil_format


def test_a_sandbox_that_refuses_memfd_still_encodes(monkeypatch):
    # memfd_create can be forbidden (seccomp, a file-descriptor limit): encode() falls back to Pillow's buffer
    def refuse(*args):
        raise PermissionError("memfd_create: operation not permitted")

    monkeypatch.setattr(os, "memfd_create", refuse)
    encoding, px = _lossy_encodings()[0], photo_like(64, 48)
    with ThreadPoolExecutor(1) as pool:  # a fresh thread: it has no file of its own yet
        assert pool.submit(encode, px, encoding).result() == _pillow_to_buffer(px, encoding)


def test_encoder_threads_each_get_their_own_bytes():
    # the build's pool encodes from many threads at once: each thread has its own file, so no image's bytes mix
    encoding = _lossy_encodings()[0]
    images = [photo_like(96 + 8 * i, 64, seed=i) for i in range(8)]
    expected = [_pillow_to_buffer(px, encoding) for px in images]
    with ThreadPoolExecutor(4) as pool:
        for _ in range(5):
            assert list(pool.map(lambda px: encode(px, encoding), images)) == expected


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_encodes_into_a_file_of_its_own():
    # a child forked after the parent encoded inherits the parent's memfd and its shared file offset: it must not
    # write there, or two processes encoding at once would interleave their bytes
    encoding = _lossy_encodings()[0]
    px = photo_like(64, 48)
    encode(px, encoding)
    parent_file = sefdata.encode._memfile()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report and leave at once, whatever happens
        ok = b"0"
        try:
            ok = (
                b"1"
                if encode(px, encoding) == _pillow_to_buffer(px, encoding)
                and (sefdata.encode._memfile() is not parent_file)
                else b"0"
            )
        finally:
            os.write(write, ok)
            os._exit(0)
    os.close(write)
    assert os.read(read, 1) == b"1"
    os.waitpid(pid, 0)
    os.close(read)
    assert sefdata.encode._memfile() is parent_file and encode(px, encoding) == _pillow_to_buffer(px, encoding)


def _png(px: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(px).save(buf, "PNG")
    return buf.getvalue()


@pytest.mark.parametrize("size", [(512, 512), (53, 37), (1, 1)])
def test_png_decodes_to_the_exact_pixels_in_every_reader(assets, size):
    import imagecodecs

    w, h = size
    photo = np.asarray(Image.open(asset(assets, "photos/astronaut.png")).convert("RGB"))[:h, :w]
    noise = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
    for px in (np.ascontiguousarray(photo), noise):
        data = encode_png(px)
        with Image.open(io.BytesIO(data)) as img:
            assert img.format == "PNG" and img.mode == "RGB" and np.array_equal(np.asarray(img), px)
        assert np.array_equal(imagecodecs.png_decode(data), px)


def test_png_carries_the_sources_icc_profile(assets):
    from PIL import ImageCms

    profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    px = photo_like(40, 24)
    data = encode_png(px, profile)
    with Image.open(io.BytesIO(data)) as img:
        img.verify()  # every chunk's CRC is right
    with Image.open(io.BytesIO(data)) as img:
        assert img.info["icc_profile"] == profile and np.array_equal(np.asarray(img), px)
    source = io.BytesIO()
    Image.fromarray(px).save(source, "PNG", icc_profile=profile)
    encoding = encoding_for(EncodingPolicy.parse("match"), decode(source.getvalue(), max_pixels=10**8))
    assert encode(px, encoding) == data


def test_jpeg_quality_estimate_is_the_nearest_ijg_table():
    from sefcore.imageio import estimate_jpeg_quality, ijg_table

    rng = np.random.default_rng(0)
    tables = [ijg_table(q) for q in (1, 10, 50, 75, 90, 100)] + list(rng.integers(1, 256, (20, 64)))
    for table in tables:  # the definition: the first quality with the least L1 distance
        distances = [np.abs(ijg_table(q) - table).sum() for q in range(1, 101)]
        assert estimate_jpeg_quality(list(table)) == distances.index(min(distances)) + 1
