"""Shared fixtures: real assets (read-only, from ../shared/assets or $SEF_ASSETS) and tiny random models built
from config. Nothing here downloads anything."""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path
from typing import NoReturn

import numpy as np
import pytest
import torch
from PIL import Image

from sefdata.assets import find_assets

REPO = Path(__file__).resolve().parents[1]


def modules_loaded_by(code: str, names: tuple[str, ...]) -> list[str]:
    """Which of ``names`` are imported after running ``code`` in a fresh interpreter on this checkout: how the tests
    check that a command or a module stays light (nothing else in the test session has imported anything there)."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted(n for n in {names!r} if n in sys.modules)))"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, cwd=REPO)
    assert result.returncode == 0, result.stderr
    return eval(result.stdout.strip().splitlines()[-1])


DEFAULT_THREADS = torch.get_num_threads()


def pytest_configure(config) -> None:
    # Tiny tensors gain nothing from intra-op threads, and on small CPU runners OpenMP workers spinning beside
    # numpy's BLAS threads made tiny-model tests many times slower. Real-weight tests opt back in (all_threads).
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def all_threads():
    """Use every core for real-size work inside this fixture's scope."""
    torch.set_num_threads(DEFAULT_THREADS)
    yield
    torch.set_num_threads(1)


def missing_asset(reason: str) -> NoReturn:
    """Skip a test whose real asset is not here: a fresh clone has only the demo kit in examples/, which lacks some
    shared photos and the MobileNetV2's ImageNet head. With SEF_REQUIRE_ASSETS=1 (set by .ci/run) fail instead, so
    CI cannot pass without having run the tests on the shared assets."""
    if os.environ.get("SEF_REQUIRE_ASSETS") == "1":
        pytest.fail(f"{reason} (SEF_REQUIRE_ASSETS=1: the tests on the shared assets must run here)")
    pytest.skip(reason)


def asset(assets: Path, relative: str) -> Path:
    """``assets / relative``, or a skip (a failure under SEF_REQUIRE_ASSETS=1) saying which file is missing."""
    path = assets / relative
    if not path.exists():
        missing_asset(f"{relative} is not in {assets} (the demo kit lacks it; set SEF_ASSETS to the shared assets)")
    return path


@pytest.fixture(scope="session")
def assets() -> Path:
    """Real photos and checkpoints: $SEF_ASSETS, ../shared/assets, or the demo kit in examples/."""
    found = find_assets()
    if found is None:
        missing_asset("no real assets: set SEF_ASSETS to a folder with photos/ and weights/")
    return found


@pytest.fixture(scope="session")
def taef2(assets: Path) -> tuple[Path, Path]:
    return asset(assets, "weights/taef2_encoder.pth"), asset(assets, "weights/taef2_decoder.pth")


@pytest.fixture(scope="session")
def realesr(assets: Path) -> Path:
    return asset(assets, "weights/realesr-animevideov3.pth")


@pytest.fixture(scope="session")
def tiny_vae_dir(tmp_path_factory) -> Path:
    """A pipeline-style folder (model/vae/) holding a tiny random AutoencoderKL: 2 blocks, so a multiple of 2."""
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(
        block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=4, layers_per_block=1,
    )  # fmt: skip
    root = tmp_path_factory.mktemp("tiny_vae")
    vae.save_pretrained(root / "vae")
    return root


@pytest.fixture(scope="session")
def tiny_sr_file(tmp_path_factory) -> Path:
    """A tiny random x2 SRVGGNetCompact (Real-ESRGAN compact) checkpoint in basicsr layout ({'params': ...})."""
    from spandrel.architectures.Compact.__arch.SRVGG import SRVGGNetCompact

    torch.manual_seed(0)
    net = SRVGGNetCompact(num_feat=8, num_conv=2, upscale=2)
    path = tmp_path_factory.mktemp("tiny_sr") / "tiny_x2.pth"
    torch.save({"params": net.state_dict()}, path)
    return path


@pytest.fixture(scope="session")
def tiny_taesd_files(tmp_path_factory) -> tuple[Path, Path]:
    """A random TAESD-layout pair with TAEF2-style pool branches, saved as safetensors."""
    from safetensors.torch import save_file

    from sefdata.generators.taesd import make_decoder, make_encoder

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny_taesd")
    save_file(make_encoder(8, {11, 12, 13}).state_dict(), folder / "tiny_encoder.safetensors")
    save_file(make_decoder(8, {3, 4, 5}).state_dict(), folder / "tiny_decoder.safetensors")
    return folder / "tiny_encoder.safetensors", folder / "tiny_decoder.safetensors"


@pytest.fixture(scope="session")
def tiny_ldm_dir(tmp_path_factory) -> Path:
    """A diffusers pipeline folder (unet/, vae/, text_encoder/, tokenizer/, scheduler/) of tiny random models.

    The scheduler is saved as SD 2.1 base saves it (a PNDMScheduler config, scaled-linear betas), so the
    generator's conversion to DDIM is exercised; its spacing is "trailing" so that every step count spans the same
    noise interval [clean, t=999] and round-trip errors at different step counts are comparable."""
    from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    root = tmp_path_factory.mktemp("tiny_ldm")
    torch.manual_seed(0)
    AutoencoderKL(
        block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=4, layers_per_block=1,
    ).save_pretrained(root / "vae")  # fmt: skip
    UNet2DConditionModel(
        block_out_channels=(8, 16), layers_per_block=1, cross_attention_dim=16, sample_size=8, in_channels=4,
        out_channels=4, norm_num_groups=4, attention_head_dim=2,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    ).save_pretrained(root / "unet")  # fmt: skip
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, "a</w>": 2, "b</w>": 3, "a": 4, "b": 5, "ab</w>": 6}
    CLIPTokenizer(vocab=vocab, merges=[("a", "b</w>")], model_max_length=8).save_pretrained(root / "tokenizer")
    text_config = CLIPTextConfig(
        hidden_size=16, intermediate_size=32, num_attention_heads=2, num_hidden_layers=2, projection_dim=16,
        vocab_size=len(vocab), max_position_embeddings=8, bos_token_id=0, eos_token_id=1, pad_token_id=1,
    )  # fmt: skip
    CLIPTextModel(text_config).save_pretrained(root / "text_encoder")
    PNDMScheduler(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, steps_offset=1, set_alpha_to_one=False,
        skip_prk_steps=True, timestep_spacing="trailing",
    ).save_pretrained(root / "scheduler")  # fmt: skip
    return root


def photo_like(width: int, height: int, seed: int = 0) -> np.ndarray:
    """A smooth, textured RGB image (uint8) so that codecs and models see photo-like statistics."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(width, height)
    base = np.stack([np.sin(6 * x + 1), np.cos(5 * y + 2), np.sin(4 * (x + y))], axis=2)
    img = 127 + 90 * base + rng.normal(0, 12, (height, width, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def huge_png(path: Path, width: int, height: int) -> Path:
    """A valid all-black RGB PNG of width x height written in bands: 15000 x 15000 (225 megapixels, 675 MB
    decoded) costs a 3 MB file, about a second, and 5 MB of memory."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    band = 100
    z = zlib.compressobj(1)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)))
        parts = [z.compress(bytes((1 + 3 * width) * min(band, height - y))) for y in range(0, height, band)]
        f.write(chunk(b"IDAT", b"".join(parts) + z.flush()) + chunk(b"IEND", b""))
    return path


def jpeg_bytes(pixels: np.ndarray, **save) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", **save)
    return buf.getvalue()


@pytest.fixture
def corpus(tmp_path: Path, assets: Path) -> Path:
    """A small mixed corpus: real camera JPEGs and PNGs (downscaled), plus every kind of bad input."""
    from PIL import JpegImagePlugin

    root = tmp_path / "corpus"
    (root / "sub dir").mkdir(parents=True)
    for name in (
        "rocket.jpg",
        "hubble_deep_field.jpg",
    ):  # real camera quantisation tables, different subsampling
        src = Image.open(assets / "photos" / name)
        small = src.convert("RGB").resize((96, 72), Image.LANCZOS)
        small.save(root / name, "JPEG", qtables=src.quantization, subsampling=JpegImagePlugin.get_sampling(src))
    Image.open(assets / "photos" / "chelsea.png").convert("RGB").resize((90, 60)).save(root / "chelsea.png")
    Image.fromarray(photo_like(64, 64, 1)).save(root / "sub dir" / "ünïcode.name.with.dots.png")
    # bad or unusual inputs
    (root / "empty.jpg").write_bytes(b"")
    (root / "text.png").write_text("this is not an image")
    good = jpeg_bytes(photo_like(64, 64, 2), quality=90)
    (root / "truncated.jpg").write_bytes(good[: len(good) // 2])
    Image.fromarray(photo_like(64, 48, 3)).convert("CMYK").save(root / "cmyk.jpg", quality=90)
    Image.fromarray(photo_like(64, 48, 4)[:, :, 0].astype(np.uint16) * 257).save(root / "sixteen.png")
    pal = Image.fromarray(photo_like(48, 48, 5)).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    pal.info["transparency"] = 0
    pal.save(root / "palette.png", transparency=0)
    Image.fromarray(photo_like(64, 64, 6)[:, :, 1]).save(root / "gray.png")
    Image.fromarray(photo_like(12, 9, 7)).save(root / "tiny.png")
    frames = [Image.fromarray(photo_like(40, 40, s)) for s in (8, 9)]
    frames[0].save(root / "anim.gif", save_all=True, append_images=frames[1:])
    (root / "notes.txt").write_text("not listed: no image extension")
    return root


def scoring_inputs(root: Path) -> Path:
    """The inputs every scoring front end (predict, serve) must take or refuse one by one: a plain PNG, a CMYK
    JPEG, a 16-bit greyscale PNG and a JPEG cut off after 200 bytes."""
    Image.fromarray(photo_like(50, 40, 1)).save(root / "good.png")
    Image.fromarray(photo_like(64, 48, 2)).convert("CMYK").save(root / "cmyk.jpg", quality=90)
    Image.fromarray(photo_like(48, 40, 3)[:, :, 0].astype(np.uint16) * 257).save(root / "sixteen.png")
    (root / "corrupt.jpg").write_bytes(jpeg_bytes(photo_like(64, 64, 6))[:200])
    return root


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """A trainer-style run folder holding a tiny random SEF detector in RUN/detector/ (RUN/config.json is the
    trainer's); one per test module, since commands such as eval write into it."""

    from conftest_model import randomize_trained, tiny_detector

    run = tmp_path_factory.mktemp("run")
    randomize_trained(tiny_detector()).save_pretrained(run / "detector")
    (run / "config.json").write_text(json.dumps({"stage": "fusion", "lr": 1e-4}))
    return run


class FakeHubApi:
    """Stands in for HfApi at the network boundary; records what would have been sent."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict]] = []

    def create_repo(self, repo_id, **kw):
        self.calls.append(("create_repo", {"repo_id": repo_id, **kw}))

    def create_branch(self, repo_id, **kw):
        self.calls.append(("create_branch", {"repo_id": repo_id, **kw}))

    def upload_folder(self, **kw):
        self.calls.append(
            ("upload_folder", {**kw, "files": sorted(p.name for p in Path(kw["folder_path"]).rglob("*"))})
        )
