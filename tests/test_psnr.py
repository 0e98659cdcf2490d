"""The one PSNR, behind a build's ``psnr_db`` and the preview's labels."""

from __future__ import annotations

import math

import numpy as np
from conftest import photo_like

from sefdata.psnr import psnr


def test_identical_images_give_infinity():
    real = photo_like(32, 24, 0)
    assert psnr(real, real.copy()) == math.inf


def test_a_known_mse_gives_its_psnr():
    a = np.zeros((4, 4, 3), np.uint8)
    b = np.full((4, 4, 3), 5, np.uint8)  # MSE 25: 10 log10(255^2 / 25) = 10 log10(2601)
    assert math.isclose(psnr(a, b), 34.15140352195873, rel_tol=1e-12)
    assert psnr(b, a) == psnr(a, b)
    real = photo_like(32, 32, 0)
    fake = real.copy()
    fake[0, 0, 0] ^= 16  # one channel of one pixel off by 16: MSE = 256 / (32 * 32 * 3)
    assert math.isclose(psnr(real, fake), 10 * math.log10(255**2 * 32 * 32 * 3 / 256), rel_tol=1e-12)


def test_uint8_images_do_not_wrap_around():
    a = np.zeros((2, 2, 3), np.uint8)
    b = np.full((2, 2, 3), 255, np.uint8)  # 0 - 255 in uint8 would wrap to 1; the MSE is 255^2: 0 dB
    assert psnr(a, b) == 0.0 and isinstance(psnr(a, b), float)


def test_matches_the_float64_definition_where_int32_sums_would_overflow():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (600, 600, 3), dtype=np.uint8)
    b = np.where(rng.random(a.shape) < 0.5, 255 - a, a).astype(np.uint8)  # squared differences sum far past 2^31
    reference = 10 * math.log10(255**2 / np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    assert math.isclose(psnr(a, b), reference, rel_tol=1e-12)
    worst = np.full((600, 600, 3), 255, np.uint8)
    assert psnr(np.zeros_like(worst), worst) == 0.0  # sum of squares 255^2 * 1.08e6, beyond int32
