"""The ddim generator on a tiny random latent diffusion pipeline built from config (no downloads): the real
loading code, inversion and regeneration loops run in seconds and are checked by properties, not stored values."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sefcore.errors import SefError
from sefdata.generators import GenSpec, Runtime, create_generator
from sefdata.generators.ddim import DdimGenerator, split_prediction
from sefdata.generators.vae import encode_latents

CPU = Runtime(torch.device("cpu"), torch.float32)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny models are faster on one thread than on a shared, busy CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _ddim(root: Path, **params) -> DdimGenerator:
    spec = f"ddim:model={root}" + "".join(f",{k}={v}" for k, v in params.items())
    return create_generator(GenSpec.parse(spec), CPU)


def _images(n: int, h: int = 8, w: int = 8) -> torch.Tensor:
    return torch.rand(n, 3, h, w, generator=torch.Generator().manual_seed(42))


def test_loads_a_pipeline_folder_and_records_the_schedule(tiny_ldm_dir):
    gen = _ddim(tiny_ldm_dir, steps=10, strength=0.5)
    assert gen.multiple == 4  # VAE x2, UNet x2
    assert type(gen.scheduler).__name__ == "DDIMScheduler"  # converted from the saved PNDM config
    assert gen.timesteps() == [499, 399, 299, 199, 99]  # the last int(10 * 0.5) of the trailing schedule
    info = gen.info()
    assert info["generator"] == "ddim"
    params = info["params"]
    assert params["steps"] == 10 and params["strength"] == 0.5 and params["guidance"] == 1.0 and params["eta"] == 0
    assert params["timesteps"] == gen.timesteps()
    assert params["scheduler"]["class"] == "DDIMScheduler" and params["scheduler"]["beta_schedule"] == "scaled_linear"
    assert info["model"]["scheduler"]["timestep_spacing"] == "trailing" and info["model"]["revision"] is None
    assert gen.embeddings.shape == (1, 8, 16)  # one (empty) prompt, no guidance


def test_strength_zero_is_exactly_the_plain_vae_reconstruction(tiny_ldm_dir):
    x = _images(2, 8, 12)
    ddim = _ddim(tiny_ldm_dir, strength=0.0)
    vae = create_generator(GenSpec.parse(f"vae:model={tiny_ldm_dir},subfolder=vae"), CPU)
    assert ddim.timesteps() == []
    assert torch.equal(ddim.generate(x, [3, 4]), vae.generate(x, [3, 4]))  # same posterior sample, same seed
    assert ddim.last_latent_rmse == [0.0, 0.0]


def test_round_trip_error_shrinks_as_steps_grow(tiny_ldm_dir):
    """Inversion uses the noise predicted at the next timestep as the noise at the current one; the error this
    makes vanishes as the steps get finer. Measured on latents and, through the decoder, on pixels."""
    x = _images(2)
    latent_err, pixel_err = {}, {}
    for steps in (2, 8, 32):
        gen = _ddim(tiny_ldm_dir, steps=steps, strength=1.0, sample="false")
        z = encode_latents(gen.vae, x, None)
        z_back = gen.regenerate(gen.invert(z))
        latent_err[steps] = (z_back - z).pow(2).mean().item()
        # the same round trip through generate(): its pixels against the plain VAE reconstruction
        reference = _ddim(tiny_ldm_dir, strength=0.0, sample="false").generate(x, [0, 1])
        out = gen.generate(x, [0, 1])
        pixel_err[steps] = (out - reference).pow(2).mean().item()
        assert gen.last_latent_rmse == pytest.approx((z_back - z).pow(2).mean(dim=(1, 2, 3)).sqrt().tolist(), rel=1e-4)
    assert latent_err[8] < latent_err[2] / 3 and latent_err[32] < latent_err[8] / 3, latent_err
    assert pixel_err[8] < pixel_err[2] and pixel_err[32] < pixel_err[8], pixel_err


def test_inversion_reads_model_outputs_as_the_scheduler_does():
    """split_prediction (inversion) and DDIMScheduler.step (regeneration) agree for every prediction type."""
    from diffusers import DDIMScheduler

    z, out = torch.randn(2, 4, 4, 4), torch.randn(2, 4, 4, 4)
    for kind in ("epsilon", "v_prediction", "sample"):
        scheduler = DDIMScheduler(beta_schedule="scaled_linear", prediction_type=kind, clip_sample=False)
        scheduler.set_timesteps(10)
        t = int(scheduler.timesteps[3])
        x0, eps = split_prediction(out, z, scheduler.alphas_cumprod[t], kind)
        step = scheduler.step(out, t, z)
        assert torch.allclose(x0, step.pred_original_sample, atol=1e-5)
        a_prev = scheduler.alphas_cumprod[t - 100]
        assert torch.allclose(a_prev**0.5 * x0 + (1 - a_prev) ** 0.5 * eps, step.prev_sample, atol=1e-5)
    with pytest.raises(SefError, match="prediction_type"):
        split_prediction(out, z, torch.tensor(0.5), "flow")


def test_batched_equals_per_image_and_seeds_matter(tiny_ldm_dir):
    x = _images(3)
    for params in ({"steps": 4, "strength": 0.5}, {"steps": 4, "strength": 0.5, "eta": 0.5}):
        gen = _ddim(tiny_ldm_dir, **params)
        batched = gen.generate(x, [5, 6, 7])
        alone = torch.cat([gen.generate(x[i : i + 1], [s]) for i, s in enumerate([5, 6, 7])])
        assert torch.allclose(batched, alone, atol=1e-5), params
        assert not torch.allclose(gen.generate(x[:1], [99]), alone[:1], atol=1e-4), params


def test_shapes_and_ranges(tiny_ldm_dir):
    gen = _ddim(tiny_ldm_dir, steps=3)
    x = _images(2, 12, 16)
    y = gen.generate(x, [0, 1])
    assert y.shape == x.shape and y.dtype == torch.float32 and y.device.type == "cpu"
    assert y.min() >= 0 and y.max() <= 1
    assert len(gen.last_latent_rmse) == 2 and all(np.isfinite(gen.last_latent_rmse))


def test_guidance_with_an_empty_prompt_changes_nothing(tiny_ldm_dir):
    """CFG mixes the empty-prompt and prompt predictions; with an empty prompt both are the same."""
    x = _images(1)
    plain = _ddim(tiny_ldm_dir, steps=3).generate(x, [1])
    guided = _ddim(tiny_ldm_dir, steps=3, guidance=3.0)
    assert guided.embeddings.shape == (2, 8, 16)
    assert torch.allclose(guided.generate(x, [1]), plain, atol=1e-5)
    prompted = _ddim(tiny_ldm_dir, steps=3, guidance=3.0, prompt="ab a")
    assert not torch.allclose(prompted.generate(x, [1]), plain, atol=1e-4)


@pytest.mark.parametrize(
    ("params", "message"),
    [("strength=1.5", "strength must be in"), ("strength=-0.1", "strength must be in"), ("steps=0", "steps must be"),
     ("guidance=0.5", "guidance must be"), ("eta=2", "eta must be"), ("steps=2.5", "not a valid int"),
     ("stepz=3", "unknown parameter.*stepz")],
)  # fmt: skip
def test_bad_parameters_are_clear_errors(params, message):
    with pytest.raises(SefError, match=message):
        GenSpec.parse(f"ddim:{params}").config()


def test_incomplete_model_folder_and_impossible_steps_are_clear_errors(tiny_ldm_dir, tmp_path):
    (tmp_path / "vae").symlink_to(tiny_ldm_dir / "vae")
    with pytest.raises(SefError, match="lacks unet/config.json, text_encoder/config.json, tokenizer, scheduler"):
        _ddim(tmp_path)
    with pytest.raises(SefError, match="steps=1001 exceeds the 1000 timesteps"):
        _ddim(tiny_ldm_dir, steps=1001)


def test_build_records_parameters_and_error_per_sample(tiny_ldm_dir, tmp_path):
    from sefdata.build import build
    from sefdata.config import BuildConfig

    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 255, (34, 42, 3), dtype=np.uint8)).save(photos / f"p{i}.png")
    out = tmp_path / "out"
    config = BuildConfig(
        sources=[str(photos)], out=str(out), gen=[f"ddim:model={tiny_ldm_dir},steps=4,strength=0.5"], format="png"
    )
    summary = build(config, progress=False)
    assert summary.written == 2
    stats = json.loads(next(out.glob("shard-*.stats.json")).read_text())
    assert stats["generators"]["ddim"]["multiple"] == 4
    import webdataset as wds

    for sample in wds.WebDataset([str(p) for p in out.glob("shard-*.tar")], shardshuffle=False, empty_check=False):
        meta = json.loads(sample["json"])
        assert meta["size"] == [40, 32]  # cropped to multiples of 4
        rec = meta["generators"]["ddim"]
        assert rec["params"]["steps"] == 4 and rec["params"]["timesteps"] == [499, 249]
        assert rec["params"]["scheduler"]["class"] == "DDIMScheduler" and np.isfinite(rec["psnr_db"])
        assert rec["latent_rmse"] >= 0 and np.isfinite(rec["latent_rmse"])  # the round trip's drift, per sample
