"""PSNR of a generated image against its real: the figure every build records per fake (``psnr_db``) and the
preview prints above each fake."""

from __future__ import annotations

import numpy as np


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB between two uint8 images of one shape (peak 255): ``10 log10(255^2 / MSE)``; inf if identical.
    Symmetric in ``a`` and ``b``."""
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))
