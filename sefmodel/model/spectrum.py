"""Hand-made frequency evidence of generator artifacts, and the high-pass input filter.

Decoders that upsample a latent by 8 (VAE, TAESD) and x4 GAN upsamplers leave energy at the periods of their
upsampling grid: 8, 4 and 2 px. :func:`periodic_spectrum` reads the power spectrum of a high-passed grey crop at
those frequencies (and their harmonics) along x, y and the diagonal, each as log power and as log ratio to its 8
neighbouring frequencies. The ratios cancel most of the image content (a smooth photo has little high-frequency
energy everywhere, not just at the grid's frequencies), which is why this small feature carries from one photo
source to another where a learned texture feature drifts with the content (bench/learning.py measures both).

A detector reads it beside its backbone feature with ``DetectorConfig.spectrum`` and can feed its backbone the
normalised high-pass residual instead of the image with ``DetectorConfig.input_filter = "highpass"``
(:func:`highpass`). The periodic-spectrum control of the learning bench calls the same function.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

PERIODS = (8, 4, 2)
"""Grid periods in pixels whose frequencies (and harmonics) the spectrum feature reads."""


def _box_blur(x: torch.Tensor) -> torch.Tensor:
    """3x3 mean of each channel of (B, C, H, W), reflect-padded."""
    return F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), 3, stride=1)


def spectrum_frequencies(size: int, periods: tuple[int, ...] = PERIODS) -> list[int]:
    """The frequency indices k = m * size / p (m = 1 .. p/2) read on a ``size`` px crop, ascending."""
    return sorted({m * size // p for p in periods for m in range(1, p // 2 + 1)})


def spectrum_dim(size: int, periods: tuple[int, ...] = PERIODS) -> int:
    """Length of :func:`periodic_spectrum`'s feature for a ``size`` px crop: 2 values per frequency and direction,
    plus the log mean power (25 at the usual sizes)."""
    return 6 * len(spectrum_frequencies(size, periods)) + 1


def periodic_spectrum(images: torch.Tensor, periods: tuple[int, ...] = PERIODS) -> torch.Tensor:
    """(B, 3, n, n) RGB crops in [0, 1] -> (B, F) spectrum features (F = :func:`spectrum_dim`), float32.

    The grey crop minus its 3x3 mean; the power of its 2-D FFT (+1e-10) at each frequency k of
    :func:`spectrum_frequencies` along x (0, k), y (k, 0) and the diagonal (k, k): log power and log ratio to
    the mean of its 8 neighbours; last, the log mean power of the whole spectrum.
    """
    if images.ndim != 4 or images.shape[1] != 3 or images.shape[-1] != images.shape[-2]:
        raise ValueError(f"periodic_spectrum takes (B, 3, n, n) square crops, got {tuple(images.shape)}")
    grey = images.float().mean(dim=1, keepdim=True)
    n = grey.shape[-1]
    power = torch.fft.fft2((grey - _box_blur(grey))[:, 0]).abs().square() + 1e-10
    feats = []
    for k in spectrum_frequencies(n, periods):
        for ky, kx in ((k, 0), (0, k), (k, k)):
            peak = power[:, ky % n, kx % n]
            ring = torch.stack(
                [power[:, (ky + a) % n, (kx + b) % n] for a in (-1, 0, 1) for b in (-1, 0, 1) if a or b]
            ).mean(0)
            feats += [peak.log(), (peak / ring).log()]
    feats.append(power.mean(dim=(1, 2)).log())
    return torch.stack(feats, dim=1)


def highpass(pixels: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    """The high-pass residual of (B, C, H, W) images (each channel minus its 3x3 mean), scaled per image to unit
    standard deviation: what is left is the fine structure an artifact lives in, without the image's colours and
    without its overall amount of detail (which varies from photo to photo far more than between a photo and its
    reconstruction). ``eps`` keeps a flat image from being amplified into noise."""
    residual = pixels - _box_blur(pixels)
    scale = residual.flatten(1).std(dim=1, correction=0).clamp_min(eps)
    return residual / scale.view(-1, *([1] * (pixels.ndim - 1)))
