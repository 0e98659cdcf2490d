"""The inference API: PIL images of any size and mode in, probabilities (and gate weights) out."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest_model import randomize_trained, tiny_detector
from PIL import Image

from sefmodel.pipeline import score


def _noise(width, height, seed=0, mode="RGB"):
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4}.get(mode)
    shape = (height, width, channels) if channels else (height, width)
    image = Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8))
    return image if image.mode == mode else image.convert(mode)


@pytest.fixture(scope="module")
def detector():
    return randomize_trained(tiny_detector())


def test_images_of_odd_sizes_and_modes_are_scored(detector, tmp_path):
    rgb16 = Image.fromarray(np.random.default_rng(0).integers(0, 65535, (33, 45), dtype=np.uint16))
    images = [
        _noise(33, 47),  # odd size, larger than the 32-px crop
        _noise(7, 5),  # smaller than the crop: padded
        _noise(300, 40),  # extreme aspect ratio
        _noise(50, 50, mode="L"),  # grayscale
        _noise(50, 50, mode="RGBA"),  # alpha
        _noise(50, 50).convert("P"),  # palette
        rgb16,  # 16-bit grayscale
    ]
    path = tmp_path / "photo.png"
    images[0].save(path)
    scores = score(detector, [*images, path], batch_size=3)
    assert scores.probs.shape == (8,) and scores.gate_weights.shape == (8, 2)
    assert torch.all((scores.probs > 0) & (scores.probs < 1))
    torch.testing.assert_close(scores.gate_weights.sum(dim=1), torch.ones(8))
    assert scores.probs[7] == scores.probs[0]  # a path and the same image in memory score the same
    assert scores.experts == ["recon", "sr"] and scores.num_crops == [1] * 8


def test_grayscale_scores_like_its_rgb_expansion(detector):
    gray = _noise(40, 40, mode="L")
    a, b = score(detector, [gray, gray.convert("RGB")]).probs
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_batching_does_not_change_scores(detector):
    images = [_noise(40 + i, 36 + 2 * i, seed=i) for i in range(5)]
    one = score(detector, images, batch_size=1)
    many = score(detector, images, batch_size=16)
    torch.testing.assert_close(one.probs, many.probs, rtol=1e-5, atol=1e-6)


def test_multi_crop_averages_the_crops_probabilities(detector):
    image = _noise(80, 40, seed=3)
    scores = score(detector, image, crop="multi")
    crops = detector.preprocess(image, crop="multi")
    assert scores.num_crops == [len(crops)] == [3 * 2]
    with torch.no_grad():
        out = detector(crops)
    torch.testing.assert_close(scores.probs[0], out["logits"].sigmoid().mean())
    torch.testing.assert_close(scores.gate_weights[0], out["gate_weights"].mean(dim=0))
    assert scores.probs[0] != score(detector, image, crop="center").probs[0]


def test_single_expert_has_no_gate_weights_and_training_mode_is_restored():
    detector = randomize_trained(tiny_detector(experts=["recon"], fusion="single"))
    detector.set_stage("expert")
    detector.train()
    scores = score(detector, [_noise(40, 40)])
    assert scores.gate_weights is None and scores.probs.shape == (1,)
    assert detector.training and detector.heads.training


def test_bad_inputs_are_explained(detector):
    with pytest.raises(TypeError, match="expected a PIL image or a path"):
        score(detector, [np.zeros((4, 4, 3))])
    with pytest.raises(ValueError, match="batch_size"):
        score(detector, [_noise(40, 40)], batch_size=0)
    with pytest.raises(FileNotFoundError):
        score(detector, ["/nonexistent/image.png"])
