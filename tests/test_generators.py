"""Generators on tiny random models built from config: interface, registry, parameters, loading rules."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from conftest import modules_loaded_by

from sefcore.errors import SefError
from sefdata.generators import (
    Generator,
    GenSpec,
    Runtime,
    available_generators,
    create_generator,
    register_generator,
)
from sefdata.generators.sr import downsample, run_tiled

CPU = Runtime(torch.device("cpu"), torch.float32)


def _gen(spec: str) -> Generator:
    return create_generator(GenSpec.parse(spec), CPU)


def test_the_registry_and_the_build_load_no_model_library():
    """Every build imports the registry; diffusers (~3 s) and spandrel load with the generator that needs them, so a
    build of TAESD or identity fakes, or a command that only parses --gen, does not wait for them."""
    code = (
        "import sefdata.build\n"
        "from sefdata.generators import GenSpec; GenSpec.parse('vae:model=x').config(); GenSpec.parse('ddim:model=x')"
    )
    assert modules_loaded_by(code, ("diffusers", "spandrel", "transformers")) == []


def test_registry_refuses_duplicates_and_lists_known_names():
    assert {"vae", "sr", "taesd"} <= set(available_generators())

    @dataclass
    class Cfg:
        pass

    with pytest.raises(ValueError, match="already registered"):
        register_generator("vae", Cfg)(type("Dup", (Generator,), {"generate": lambda self, x, s: x}))
    with pytest.raises(SefError, match="known: ddim, identity, sr, taesd, vae"):
        GenSpec.parse("nope:x=1")


def test_spec_parsing_and_parameter_errors(tiny_vae_dir):
    spec = GenSpec.parse(f"vae:model={tiny_vae_dir},sample=false,as=vae_tiny")
    assert spec.field == "vae_tiny" and spec.params == {"model": str(tiny_vae_dir), "sample": "false"}
    assert spec.config().sample is False
    with pytest.raises(SefError, match="unknown parameter.*colour.*known: model"):
        GenSpec.parse("vae:colour=red").config()
    with pytest.raises(SefError, match="not a valid int"):
        GenSpec.parse("sr:scale=four").config()
    with pytest.raises(SefError, match="not key=value"):
        GenSpec.parse("sr:scale")
    with pytest.raises(SefError, match="field name"):
        GenSpec.parse("sr:as=real")
    with pytest.raises(SefError, match="needs weights"):
        GenSpec.parse("taesd").config()


def test_vae_shapes_ranges_and_seeding(tiny_vae_dir):
    gen = _gen(f"vae:model={tiny_vae_dir}")
    assert gen.multiple == 2 and gen.subfolder == "vae"
    x = torch.rand(3, 3, 16, 24)
    y = gen.generate(x, [1, 2, 3])
    assert y.shape == x.shape and y.dtype == torch.float32 and y.min() >= 0 and y.max() <= 1
    # a sample's output depends on its own seed only, not on its batch-mates
    alone = gen.generate(x[1:2], [2])
    assert torch.allclose(alone, y[1:2], atol=1e-5)
    assert not torch.allclose(gen.generate(x[1:2], [99]), alone, atol=1e-4)
    # the posterior mean is seed-independent
    mean_gen = _gen(f"vae:model={tiny_vae_dir},sample=false")
    assert torch.equal(mean_gen.generate(x, [1, 2, 3]), mean_gen.generate(x, [7, 8, 9]))
    info = gen.info()
    assert info["model"]["scaling_factor"] == pytest.approx(0.18215) and info["model"]["latent_channels"] == 4


def test_vae_latents_follow_the_scaling_convention(tiny_vae_dir):
    from sefdata.generators.vae import encode_latents

    gen = _gen(f"vae:model={tiny_vae_dir},sample=false")
    x = torch.rand(1, 3, 16, 16)
    z = encode_latents(gen.vae, x, None)
    raw = gen.vae.encode(x * 2 - 1).latent_dist.mean
    assert torch.allclose(z, raw * gen.vae.config.scaling_factor)


def test_vae_missing_model_is_a_clear_error(tmp_path):
    with pytest.raises(SefError, match="no config.json"):
        _gen(f"vae:model={tmp_path}")
    with pytest.raises(SefError, match="neither a local folder nor a Hub repo id"):
        _gen("vae:model=./does/not/exist")


def test_sr_downsamples_then_upsamples_to_the_same_size(tiny_sr_file):
    gen = _gen(f"sr:weights={tiny_sr_file},scale=2")
    assert gen.multiple == 2 and gen.info()["model"]["architecture"] == "RealESRGAN Compact"
    x = torch.rand(2, 3, 20, 28)
    y = gen.generate(x, [0, 1])
    assert y.shape == x.shape and y.min() >= 0 and y.max() <= 1
    small = downsample(x, 2)
    assert small.shape == (2, 3, 10, 14)
    with pytest.raises(SefError, match="upsamples x2, but scale=4"):
        _gen(f"sr:weights={tiny_sr_file},scale=4")


def test_sr_tiling_matches_whole_image(tiny_sr_file):
    gen = _gen(f"sr:weights={tiny_sr_file},scale=2")
    x = torch.rand(1, 3, 37, 53)
    whole = run_tiled(gen.model, x, 2, tile=0, pad=0)
    tiled = run_tiled(gen.model, x, 2, tile=16, pad=4)  # the receptive field (4 convs) fits in the margin
    assert tiled.shape == (1, 3, 74, 106)
    assert torch.allclose(whole, tiled, atol=1e-5)


def test_taesd_builds_from_state_dict_layout(tiny_taesd_files):
    enc, dec = tiny_taesd_files
    gen = _gen(f"taesd:encoder={enc},decoder={dec}")
    assert gen.latent_channels == 8 and gen.multiple == 8
    assert gen.encoder[11].pool is not None and gen.encoder[10 - 7].pool is None
    y = gen.generate(torch.rand(2, 3, 24, 32), [0, 0])
    assert y.shape == (2, 3, 24, 32)
    # weights=DIR finds the one pair in a folder
    assert _gen(f"taesd:weights={enc.parent}").latent_channels == 8


def test_taesd_mismatched_pair_and_wrong_layout(tiny_taesd_files, tiny_sr_file, tmp_path):
    from safetensors.torch import save_file

    from sefdata.generators.taesd import make_decoder

    enc, _ = tiny_taesd_files
    save_file(make_decoder(4).state_dict(), tmp_path / "other_decoder.safetensors")
    with pytest.raises(SefError, match="not a pair"):
        _gen(f"taesd:encoder={enc},decoder={tmp_path / 'other_decoder.safetensors'}")
    with pytest.raises(SefError, match="TAESD layout"):
        _gen(f"taesd:encoder={tiny_sr_file},decoder={tiny_sr_file}")


def test_pickled_code_is_never_loaded(tmp_path: Path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pth"
    torch.save({"params": Evil()}, path)
    with pytest.raises(SefError, match="full pickles can run arbitrary code"):
        _gen(f"sr:weights={path}")


def test_missing_weights_say_what_was_tried():
    with pytest.raises(SefError, match="not a local file, an http"):
        _gen("sr:weights=nothing-here.pth")


def test_autoencoders_travel_into_a_folder_and_load_back_identical(
    tiny_taesd_files, tiny_vae_dir, tiny_sr_file, tmp_path
):
    """save_weights writes safetensors (and JSON) only, with paths relative to the folder; restore_generator loads
    them from there: the same output, bit for bit. A generator that cannot travel says so."""
    import json

    from sefdata.generators import restore_generator

    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    for spec in (f"taesd:encoder={tiny_taesd_files[0]},decoder={tiny_taesd_files[1]}",
                 f"vae:model={tiny_vae_dir},sample=false"):  # fmt: skip
        gen = _gen(spec)
        folder = tmp_path / gen.name
        params = gen.save_weights(folder)
        assert all(not Path(params[k]).is_absolute() for k in gen.saved_paths if params.get(k))
        assert {p.suffix for p in folder.rglob("*") if p.is_file()} <= {".safetensors", ".json"}
        again = restore_generator(gen.name, params, folder, CPU)
        assert torch.equal(again.generate(images, [0, 0]), gen.generate(images, [0, 0]))
    assert "_name_or_path" not in json.loads((tmp_path / "vae" / "config.json").read_text())
    with pytest.raises(SefError, match="generator 'sr' cannot store its weights in another folder"):
        _gen(f"sr:weights={tiny_sr_file},scale=2").save_weights(tmp_path / "sr")
