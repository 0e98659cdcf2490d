"""bench/learning.py's AEROBLADE control (the full bench trains for half an hour; its controls are plain functions):
built from the real TAEF2 and MobileNetV2, it scores tiles the way the bench scores every detector, and finds the
TAEF2 fakes among the held-out tiles without any training."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
from conftest import REPO, asset
from PIL import Image

from sefmodel import AerobladeDetector

TILE = 64


def _learning():
    spec = importlib.util.spec_from_file_location("bench_learning", REPO / "bench" / "learning.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_the_aeroblade_control_scores_tiles_like_a_detector(assets, taef2, all_threads):
    learning = _learning()
    backbone = asset(assets, "weights/mobilenet_v2_1.0_224")
    control = learning.aeroblade_control(taef2[0].parent, str(backbone), TILE)
    assert isinstance(control, AerobladeDetector) and control.config.distance == "features"
    taesd = control.autoencoders["taesd"]
    images = {}
    for name in ("kodim03.png", "mate-Wood.jpg"):
        photo = Image.open(asset(assets, f"photos/{name}")).convert("RGB").resize((2 * TILE, TILE), Image.LANCZOS)
        tiles = [photo.crop((x, 0, x + TILE, TILE)) for x in (0, TILE)]
        pixels = torch.stack([torch.from_numpy(np.asarray(t, dtype=np.float32) / 255).permute(2, 0, 1) for t in tiles])
        recon = (taesd.generate(pixels, [0, 0]) * 255).round().byte().permute(0, 2, 3, 1).numpy()
        images[name] = {
            "real": tiles,
            "taesd": [Image.fromarray(r) for r in recon],  # what the bench's build writes for the recon family
            "sr": [t.resize((TILE // 4, TILE // 4), Image.BICUBIC).resize((TILE, TILE), Image.BICUBIC) for t in tiles],
        }
    scores = learning.score_detector(control, images)
    assert {f: len(s) for f, s in scores["kodim03.png"].items()} == {"real": 2, "taesd": 2, "sr": 2}
    result = learning.analyse(scores)
    assert result["recon_per_photo"] == 1.0  # within each photo, every TAEF2 fake above every real tile
    assert result["recon"] >= 0.75 and set(result) >= {"recon", "sr", "map", "drift"}
