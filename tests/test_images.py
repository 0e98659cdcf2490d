"""One image opener on the detector side: every path that decodes a file applies its rules."""

from __future__ import annotations

import io

import pytest
from conftest import photo_like
from PIL import Image

from sefmodel.evaluation.benchmarks import BenchItem
from sefmodel.images import ImageRejected, describe_error, open_image_file
from sefmodel.pipeline import open_image
from sefmodel.train.data import decode_image


def _png(size=(24, 16), mode="RGB") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(photo_like(*size)).convert(mode).save(buffer, "PNG")
    return buffer.getvalue()


def test_score_eval_and_training_decode_through_the_one_opener(tmp_path):
    """The zero-byte rule lives only in open_image_file: each path that meets it opens through it."""
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    openers = {
        "score / predict": lambda: open_image(str(empty)).__enter__(),
        "eval": lambda: BenchItem(key="empty.png", label=0, subset="s", path=empty).open(),
        "training": lambda: decode_image(b""),
    }
    for name, opener in openers.items():
        with pytest.raises(ImageRejected, match="empty") as caught:
            opener()
        assert describe_error(caught.value) == "empty (zero-byte) file", name


def test_opened_images_are_loaded_and_training_images_are_rgb(tmp_path):
    path = tmp_path / "grey.png"
    path.write_bytes(_png(mode="L"))
    image = open_image_file(path)
    assert image.mode == "L" and image.size == (24, 16) and image.getpixel((0, 0)) is not None
    assert decode_image(path.read_bytes()).mode == "RGB"
    with open_image(path) as opened:
        assert opened.tobytes() == image.tobytes()
    assert BenchItem(key="grey.png", label=0, subset="s", path=path).open().tobytes() == image.tobytes()
