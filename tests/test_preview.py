"""The preview: columns in the recipe's generator order, each fake labelled with its PSNR and encoding."""

from __future__ import annotations

import io

import numpy as np
from conftest import jpeg_bytes, photo_like
from PIL import Image
from train_helpers import build_shards, write_photos

from sefdata.preview import encoding_label, fake_fields, make_preview


def test_columns_follow_the_generator_order_not_the_alphabet(tmp_path, tiny_sr_file, tiny_taesd_files):
    enc, dec = tiny_taesd_files
    gens = [f"sr:weights={tiny_sr_file},scale=2,as=zeta", f"taesd:encoder={enc},decoder={dec},as=alpha"]
    out = build_shards(tmp_path / "build", write_photos(tmp_path / "photos", 1, 0), gens, 2)
    assert fake_fields(out, {}) == ["zeta", "alpha"]
    (out / "manifest.json").unlink()  # without a manifest: the order the sample holds its fields in
    assert fake_fields(out, {"__key__": "k", "real.png": b"", "zeta.png": b"", "alpha.png": b"", "json": b""}) == [
        "zeta", "alpha"
    ]  # fmt: skip
    grid = Image.open(make_preview(out, tmp_path / "p.png", samples=1, tile=32))
    assert grid.size == (32 * 7, 22 + 32 + 22)


def test_encoding_labels():
    real = photo_like(32, 32, 0)
    png = io.BytesIO()
    Image.fromarray(real).save(png, format="PNG")
    assert encoding_label(png.getvalue()) == "PNG"
    assert encoding_label(jpeg_bytes(np.asarray(real), quality=90, subsampling=2)) == "JPEG q90 4:2:0"
