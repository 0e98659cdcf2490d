"""Each optimised path of a generator makes the same images as its plain path, within a stated tolerance (issue #22
item 2): channels-last (NHWC) against NCHW memory format, and torch.compile against eager, on tiny random models
of every generator and on the real TAEF2.

Tolerance, on the uint8 images the build stores: no pixel differs by more than one level, and at most 1% of them by
one (a float32 result that lands on the other side of a rounding boundary). Measured here on the CPU in float32;
the GPU paths (cuDNN, Triton kernels, bf16) are the owed GPU run's to check.

torch.compile: the ``aot_eager`` backend traces each model through Dynamo and AOTAutograd and runs the traced graph
eagerly, so it checks the wiring (the compiled modules are those the generator calls, every call goes through them)
in seconds; ``inductor``, which generates kernels, is what ``--compile`` uses on a GPU: on the CPU it needs a C
compiler and about a minute per model, so those tests are marked slow.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from sefdata.build import Builder
from sefdata.config import BuildConfig
from sefdata.generators import GenSpec, Runtime, create_generator

CPU = torch.device("cpu")


def _specs(tiny_vae_dir, tiny_sr_file, tiny_taesd_files, tiny_ldm_dir) -> dict[str, str]:
    enc, dec = tiny_taesd_files
    return {
        "vae": f"vae:model={tiny_vae_dir}",
        "sr": f"sr:weights={tiny_sr_file},scale=2,tile=8",  # tiles of two sizes: the compiled model sees both
        "taesd": f"taesd:encoder={enc},decoder={dec}",
        "ddim": f"ddim:model={tiny_ldm_dir},steps=3,strength=0.7",
    }


def _images(n: int = 2, side: int = 24) -> torch.Tensor:
    return torch.rand(n, 3, side, side, generator=torch.Generator().manual_seed(7))


def _run(spec: str, runtime: Runtime, x: torch.Tensor) -> torch.Tensor:
    """The build's uint8 images (quantised as sefdata.build does) of one generator on ``x``."""
    y = create_generator(GenSpec.parse(spec), runtime).generate(x, list(range(len(x))))
    return y.float().mul(255).round_().clamp_(0, 255).to(torch.uint8)


def _assert_same_within_a_level(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    diff = (a.int() - b.int()).abs()
    assert diff.max() <= 1, f"{what}: a pixel differs by {int(diff.max())} levels"
    assert (diff > 0).float().mean() <= 0.01, f"{what}: {(diff > 0).float().mean():.2%} of the values differ"


@pytest.fixture
def specs(tiny_vae_dir, tiny_sr_file, tiny_taesd_files, tiny_ldm_dir) -> dict[str, str]:
    return _specs(tiny_vae_dir, tiny_sr_file, tiny_taesd_files, tiny_ldm_dir)


@pytest.mark.parametrize("name", ["vae", "sr", "taesd", "ddim"])
def test_channels_last_gives_the_images_of_nchw(specs, name):
    x = _images()
    nchw = _run(specs[name], Runtime(CPU, torch.float32, channels_last=False), x)
    nhwc = _run(specs[name], Runtime(CPU, torch.float32), x)
    _assert_same_within_a_level(nhwc, nchw, f"{name} channels_last")


@pytest.mark.parametrize("name", ["vae", "sr", "taesd", "ddim"])
def test_compiled_models_are_the_ones_called_and_give_the_eager_images(specs, name):
    x = _images()
    eager = _run(specs[name], Runtime(CPU, torch.float32), x)
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    compiled = _run(specs[name], Runtime(CPU, torch.float32, compile="aot_eager"), x)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > 0, f"{name}: nothing went through Dynamo"
    _assert_same_within_a_level(compiled, eager, f"{name} compiled (aot_eager)")


def test_real_taef2_channels_last_and_nchw_agree(taef2, assets):
    enc, dec = taef2
    spec = f"taesd:encoder={enc},decoder={dec}"
    photo = Image.open(assets / "photos" / "chelsea.png").convert("RGB").crop((0, 0, 128, 128))
    x = torch.from_numpy(np.asarray(photo).copy()).permute(2, 0, 1)[None].float().div(255)
    nchw = _run(spec, Runtime(CPU, torch.float32, channels_last=False), x)
    nhwc = _run(spec, Runtime(CPU, torch.float32), x)
    _assert_same_within_a_level(nhwc, nchw, "TAEF2 channels_last")


needs_compiler = pytest.mark.skipif(
    shutil.which("cc") is None and shutil.which("gcc") is None, reason="inductor on the CPU needs a C compiler"
)


@pytest.mark.slow
@needs_compiler
@pytest.mark.parametrize("name", ["vae", "taesd"])
def test_inductor_gives_the_eager_images(specs, name):
    x = _images()
    eager = _run(specs[name], Runtime(CPU, torch.float32), x)
    torch._dynamo.reset()
    _assert_same_within_a_level(_run(specs[name], Runtime(CPU, torch.float32, compile="inductor"), x), eager, name)


@pytest.mark.slow
@needs_compiler
def test_inductor_gives_the_eager_images_on_the_real_taef2(taef2, all_threads):
    enc, dec = taef2
    spec = f"taesd:encoder={enc},decoder={dec}"
    x = _images(2, 96)
    eager = _run(spec, Runtime(CPU, torch.float32), x)
    torch._dynamo.reset()
    _assert_same_within_a_level(_run(spec, Runtime(CPU, torch.float32, compile="inductor"), x), eager, "TAEF2")


def test_the_build_records_its_kernels_and_leaves_compile_off_on_the_cpu(tmp_path, tiny_vae_dir):
    """--compile on a CPU: a note, eager models, the same settings hash as without it (the bytes are those of an
    eager build). --no-channels-last is recorded, so a resume with the other memory format is refused."""
    base = {"sources": [str(tmp_path)], "out": str(tmp_path / "o"), "gen": [f"vae:model={tiny_vae_dir}"],
            "device": "cpu"}  # fmt: skip
    plain, compiled = Builder(BuildConfig(**base)), Builder(BuildConfig(**base, compile=True))
    nchw = Builder(BuildConfig(**base, channels_last=False))
    try:
        assert compiled.notes and "--compile is ignored on cpu" in compiled.notes[0] and not plain.notes
        assert compiled.runtime.compile is None and compiled.config_hash == plain.config_hash
        assert nchw.settings["runtime"]["channels_last"] is False and "channels_last" not in plain.settings["runtime"]
        assert nchw.config_hash != plain.config_hash and nchw.recipe_hash == plain.recipe_hash
    finally:
        for b in (plain, compiled, nchw):
            b.close()
