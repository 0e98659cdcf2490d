"""``sefdata preview``: the picture a researcher wants before training on a dataset.

One row per sample: the real image, then for every fake field, in the build's generator order, the fake (labelled
with its PSNR against the real and its encoding), its amplified residual (``128 + gain * (fake - real)``) and the
log-amplitude spectrum of that residual (centred, grayscale). Generator
artifacts that the eye misses in the fake show up as structure in the residual and as peaks or grids in the
spectrum (e.g. the periodic peaks of GAN upsampling). Tiles are centre crops, not resizes: resizing would blur the
very artifacts the picture is for.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from sefcore.errors import SefError
from sefdata.psnr import psnr
from sefdata.shards import Manifest, field_keys, iter_samples, sample_fields

LABEL_HEIGHT = 22


def _load(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def encoding_label(data: bytes) -> str:
    """How a stored image is encoded, as the preview shows it: ``PNG``, ``WEBP`` or ``JPEG q90 4:2:0``."""
    from sefcore.imageio import SUBSAMPLING_NAMES, jpeg_encoding_of

    img = Image.open(io.BytesIO(data))
    if img.format == "JPEG":
        enc = jpeg_encoding_of(img)
        return f"JPEG q{enc.quality} {SUBSAMPLING_NAMES.get(enc.subsampling, enc.subsampling)}"
    return str(img.format)


def fake_fields(folder: Path, sample: dict) -> list[str]:
    """The fake fields in the build's generator order (manifest.json), else in the order the sample holds them."""
    try:
        manifest = Manifest.find(folder)
    except SefError:  # a damaged manifest does not stop a look at the shards
        manifest = None
    fields = (manifest and manifest.fields) or sample_fields(sample)
    return [f for f in fields if f not in ("real", "json")]


def _crop(img: np.ndarray, tile: int) -> np.ndarray:
    h, w = img.shape[:2]
    top, left = max(0, (h - tile) // 2), max(0, (w - tile) // 2)
    out = img[top : top + tile, left : left + tile]
    pad = ((0, tile - out.shape[0]), (0, tile - out.shape[1])) + ((0, 0),) * (img.ndim - 2)
    return np.pad(out, pad, constant_values=255)


def residual_image(real: np.ndarray, fake: np.ndarray, gain: float) -> np.ndarray:
    diff = fake.astype(np.float32) - real.astype(np.float32)
    return np.clip(128 + gain * diff, 0, 255).astype(np.uint8)


def residual_spectrum(real: np.ndarray, fake: np.ndarray, patch: int = 64) -> np.ndarray:
    """Log-amplitude spectrum of the grayscale residual, centred, as uint8 (patch x patch x 3).

    Amplitudes are averaged over non-overlapping ``patch``-sized windows (Welch's method): image content averages
    out and periodic generator artifacts stand out as peaks."""
    diff = (fake.astype(np.float32) - real.astype(np.float32)).mean(axis=2)
    h, w = diff.shape
    patch = min(patch, h, w)
    windows = [
        diff[y : y + patch, x : x + patch]
        for y in range(0, h - patch + 1, patch)
        for x in range(0, w - patch + 1, patch)
    ]
    amp = np.mean([np.abs(np.fft.fft2(win - win.mean())) for win in windows], axis=0)
    amp = np.log1p(np.fft.fftshift(amp))
    lo, hi = np.percentile(amp, 1), np.percentile(amp, 99.9)
    gray = np.clip((amp - lo) / max(hi - lo, 1e-6), 0, 1)
    return np.repeat((gray * 255).astype(np.uint8)[:, :, None], 3, axis=2)


def _samples(folder: Path, n: int) -> list[dict]:
    tars = sorted(str(p) for p in folder.glob("shard-*.tar"))
    if not tars:
        raise SefError(f"no shards (shard-*.tar) in {str(folder)!r}; run `sefdata build` first")
    out = []
    for tar in tars:
        for sample in iter_samples(tar):
            out.append(sample)
            if len(out) == n:
                return out
    if not out:
        raise SefError(f"the shards in {str(folder)!r} hold no samples")
    return out


def make_preview(folder: str | Path, out: str | Path, *, samples: int = 4, tile: int = 256, gain: float = 8.0) -> Path:
    """Write the preview grid of the first ``samples`` samples of the shards in ``folder`` to ``out`` (PNG)."""
    folder, out = Path(folder), Path(out)
    rows = _samples(folder, samples)
    fields = fake_fields(folder, rows[0])
    titles = ["real"] + [t for f in fields for t in (f, f"{f} residual x{gain:g}", f"{f} spectrum")]
    font = ImageFont.load_default(size=13)
    grid = Image.new("RGB", (tile * len(titles), LABEL_HEIGHT + len(rows) * (tile + LABEL_HEIGHT)), "white")
    draw = ImageDraw.Draw(grid)
    for c, title in enumerate(titles):
        draw.text((c * tile + 4, 4), title, fill="black", font=font)
    for r, sample in enumerate(rows):
        y = LABEL_HEIGHT + r * (tile + LABEL_HEIGHT)
        ext = field_keys(sample)
        real = _load(sample[ext["real"]])
        label = f"{sample['__key__']}  {real.shape[1]}x{real.shape[0]}"
        while len(label) > 4 and draw.textlength(label, font=font) > tile - 8:  # keep to the real's column
            label = label[:-5] + "..."
        draw.text((4, y + 4), label, fill="black", font=font)
        tiles = [real]
        for i, f in enumerate(fields):
            fake = _load(sample[ext[f]])
            label = f"PSNR {psnr(real, fake):.1f} dB, {encoding_label(sample[ext[f]])}"
            draw.text((tile * (1 + 3 * i) + 4, y + 4), label, fill="black", font=font)
            spectrum = Image.fromarray(residual_spectrum(real, fake)).resize((tile, tile), Image.Resampling.NEAREST)
            tiles += [fake, residual_image(real, fake, gain), np.asarray(spectrum)]
        for c, img in enumerate(tiles):
            grid.paste(Image.fromarray(_crop(img, tile)), (c * tile, y + LABEL_HEIGHT))
    out.parent.mkdir(parents=True, exist_ok=True)
    grid.save(out)
    return out
