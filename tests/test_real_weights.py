"""Numerical correctness with real checkpoints on real photos, through the whole build pipeline.

Random weights cannot reveal a wrong value range, a missing scaling factor, a channel swap or an off-by-one crop;
real weights on real photos can: each of those bugs costs many dB of PSNR against the aligned real.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image

from sefdata.build import build
from sefdata.config import BuildConfig, native_bf16
from sefdata.psnr import psnr

pytestmark = pytest.mark.slow

# A CPU without bf16 in hardware emulates it, 7x slower than fp32 (the 27 photos took 230 s on 2 AVX2 cores): there
# the bf16 build takes the first 9 photos (sorted: PNG and JPEG, 451x300 to 2560x1600), compared with their fp32 twins
BF16_PHOTOS = None if native_bf16(torch.device("cpu")) else 9


def _build(out, assets, taef2, realesr, dtype: str, limit: int | None = None) -> dict:
    enc, dec = taef2
    config = BuildConfig(
        sources=[str(assets / "photos")], out=str(out), format="png", max_side=384, shard_size=100, batch_size=4,
        gen=[f"taesd:encoder={enc},decoder={dec},as=taef2", f"sr:weights={realesr},scale=4"], dtype=dtype,
        limit=limit,
    )  # fmt: skip
    build(config, progress=False)
    samples = list(wds.WebDataset(str(out / "shard-000000.tar"), shardshuffle=False))
    photos = len([p for p in (assets / "photos").iterdir() if p.suffix in (".png", ".jpg")])
    assert len(samples) == min(photos, limit or photos)
    load = lambda data: np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))  # noqa: E731
    return {s["__key__"]: {k.split(".")[0]: load(v) for k, v in s.items() if k.endswith(".png")} for s in samples}


@pytest.fixture(scope="module")
def real_build(tmp_path_factory, assets, taef2, realesr, all_threads):
    return _build(tmp_path_factory.mktemp("real_build"), assets, taef2, realesr, "fp32")


@pytest.fixture(scope="module")
def real_build_bf16(tmp_path_factory, assets, taef2, realesr, all_threads):
    return _build(tmp_path_factory.mktemp("real_build_bf16"), assets, taef2, realesr, "bf16", limit=BF16_PHOTOS)


def _mean_psnr(samples: dict, field: str, transform=lambda a: a) -> float:
    return float(np.mean([psnr(transform(s[field]), s["real"]) for s in samples.values()]))


def test_taef2_reconstructions_are_faithful(real_build):
    mean = _mean_psnr(real_build, "taef2")
    assert mean >= 28.0, f"TAEF2 mean PSNR {mean:.2f} dB"
    # the check is sensitive: a channel swap or a one-pixel misalignment would fail it
    assert _mean_psnr(real_build, "taef2", lambda a: a[..., ::-1]) < mean - 5
    assert _mean_psnr(real_build, "taef2", lambda a: np.roll(a, 1, axis=1)) < mean - 3


def test_x4_gan_upsampling_of_downsampled_photos(real_build):
    mean = _mean_psnr(real_build, "sr")
    assert mean >= 25.0, f"x4 SR mean PSNR {mean:.2f} dB"
    chelsea = next(s for k, s in real_build.items() if k.startswith("chelsea"))
    assert psnr(chelsea["sr"], chelsea["real"]) >= 25.0
    # sensitive to an off-by-one-low-resolution-pixel (4 px) misalignment and to a channel swap
    assert _mean_psnr(real_build, "sr", lambda a: np.roll(a, 4, axis=0)) < mean - 3
    assert _mean_psnr(real_build, "sr", lambda a: a[..., ::-1]) < mean - 3


def test_bf16_fakes_are_as_faithful_as_fp32(real_build, real_build_bf16):
    """--dtype auto picks bf16 on hardware that computes it natively: that must not change what the fakes are."""
    twins = {k: real_build[k] for k in real_build_bf16}  # the fp32 fakes of the photos the bf16 build made
    for field in ("taef2", "sr"):
        fp32, bf16 = _mean_psnr(twins, field), _mean_psnr(real_build_bf16, field)
        assert abs(bf16 - fp32) <= 0.3, f"{field}: bf16 {bf16:.2f} dB vs fp32 {fp32:.2f} dB against the real"
        closeness = min(psnr(real_build_bf16[k][field], s[field]) for k, s in twins.items())
        assert closeness >= 40.0, f"{field}: a bf16 fake is only {closeness:.1f} dB from its fp32 twin"
