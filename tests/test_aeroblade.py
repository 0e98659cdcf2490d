"""The training-free AEROBLADE detector (sefmodel.model.aeroblade): a folder like any detector's that loads back exactly
and names no local path, scores equal to a distance computed here independently, the smallest distance over several
autoencoders, a probability monotone in -distance, the fit, every bad-input rule as one line, and the commands
(aeroblade, predict, eval, calibrate, explain, serve, publish) on it. Tiny random models for structure; the real
TAEF2, MobileNetV2 and photos for the AEROBLADE premise."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import asset, photo_like
from conftest_model import CNN_TINY
from PIL import Image
from safetensors.torch import load_file
from sef_cli.sefmodel import app
from typer.testing import CliRunner

from sefcore.errors import SefError
from sefdata.upload import staged_local_paths
from sefmodel import AerobladeDetector, SEFDetector, load_detector, score
from sefmodel.aeroblade_build import build_aeroblade
from sefmodel.evaluation.metrics import average_precision
from sefmodel.model.aeroblade import fit_logistic

runner = CliRunner()
SIZE = 32


def _images(n: int = 4, seed: int = 0) -> list[Image.Image]:
    return [Image.fromarray(photo_like(48 + 4 * i, 40, seed + i)) for i in range(n)]


def _center(image: Image.Image, size: int) -> torch.Tensor:
    """The centre crop as (1, 3, size, size) in [0, 1], cut here with numpy (not by the detector's processor)."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32) / 255
    top, left = (pixels.shape[0] - size) // 2, (pixels.shape[1] - size) // 2
    return torch.from_numpy(pixels[top : top + size, left : left + size]).permute(2, 0, 1)[None]


def _one_error_line(result) -> str:
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


def _files(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def tiny_mnv2(tmp_path_factory) -> Path:
    """A random tiny MobileNetV2 in a transformers folder (the distance network)."""
    from sefmodel.model.backbones.mobilenet_v2 import MobileNetV2Backbone

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny_mnv2")
    MobileNetV2Backbone.from_config(CNN_TINY["mobilenet_v2"]).model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def taesd_spec(tiny_taesd_files) -> str:
    encoder, decoder = tiny_taesd_files
    return f"taesd:encoder={encoder},decoder={decoder}"


@pytest.fixture(scope="module")
def tiny_aeroblade(tmp_path_factory, taesd_spec, tiny_mnv2) -> Path:
    """A saved tiny detector: the random TAESD-layout pair and the tiny MobileNetV2's feature distance."""
    folder = tmp_path_factory.mktemp("aero") / "detector"
    build_aeroblade([taesd_spec], folder, distance_model=str(tiny_mnv2), image_size=SIZE, distance_layers=[1, 2])
    return folder


# ---- the folder ----------------------------------------------------------------------------------------------------


def test_a_saved_detector_loads_back_exactly_and_is_self_contained(tiny_aeroblade, taesd_spec, tiny_mnv2):
    made = AerobladeDetector.create([taesd_spec], distance_model=str(tiny_mnv2), image_size=SIZE,
                                    distance_layers=[1, 2])  # fmt: skip
    loaded = AerobladeDetector.from_pretrained(tiny_aeroblade)
    images = _images()
    assert torch.equal(score(made, images).probs, score(loaded, images).probs)
    assert _files(tiny_aeroblade) == [
        "README.md", "autoencoders/taesd/tiny_decoder.safetensors", "autoencoders/taesd/tiny_encoder.safetensors",
        "config.json", "distance/config.json", "distance/model.safetensors", "preprocessor_config.json",
    ]  # fmt: skip
    config = json.loads((tiny_aeroblade / "config.json").read_text())
    assert config["detector_type"] == "aeroblade" and config["distance_layers"] == [1, 2]
    assert config["autoencoders"][0]["source"]["encoder"]["file"] == "tiny_encoder.safetensors"
    assert config["distance_source"] == {"model": tiny_mnv2.name, "family": "mobilenet_v2"}
    for name in _files(tiny_aeroblade):  # what `sefmodel publish` scans: no path of this machine anywhere
        assert staged_local_paths(tiny_aeroblade / name) == [], name
    # the stored weights are the source's own tensors
    for part in ("encoder", "decoder"):
        stored = load_file(str(tiny_aeroblade / f"autoencoders/taesd/tiny_{part}.safetensors"))
        source = load_file(taesd_spec.split(f"{part}=")[1].split(",")[0])
        assert stored.keys() == source.keys() and all(torch.equal(stored[k], source[k]) for k in stored)
    # the one loading function dispatches on config.json's detector_type; SEFDetector says what the folder holds
    assert isinstance(load_detector(tiny_aeroblade, "cpu"), AerobladeDetector)
    with pytest.raises(ValueError, match="holds a detector of type 'aeroblade', not a SEF detector"):
        SEFDetector.from_pretrained(tiny_aeroblade)


def test_scores_equal_an_independently_computed_distance(tiny_aeroblade, tiny_taesd_files, tiny_mnv2):
    from transformers import MobileNetV2Model

    from sefdata.generators.taesd import make_decoder, make_encoder

    detector = AerobladeDetector.from_pretrained(tiny_aeroblade)
    encoder, decoder = make_encoder(8, {11, 12, 13}), make_decoder(8, {3, 4, 5})
    encoder.load_state_dict(load_file(str(tiny_taesd_files[0])))
    decoder.load_state_dict(load_file(str(tiny_taesd_files[1])))
    network = MobileNetV2Model.from_pretrained(tiny_mnv2).eval()
    images = _images()
    want = []
    with torch.no_grad():
        for image in images:
            x = _center(image, SIZE)
            r = decoder(encoder(x)).clamp(0, 1)
            hx, hr = (network((t - 0.5) / 0.5, output_hidden_states=True).hidden_states for t in (x, r))
            per_block = []
            for block in (1, 2):  # hidden_states[i] is inverted residual i's output
                a = hx[block] / hx[block].norm(dim=1, keepdim=True).add(1e-10)
                b = hr[block] / hr[block].norm(dim=1, keepdim=True).add(1e-10)
                per_block.append(float((a - b).square().sum(dim=1).mean()))
            distance = float(np.mean(per_block))
            want.append(
                (distance, 1 / (1 + np.exp(-detector.config.scale * (detector.config.offset - np.log(distance)))))
            )
    np.testing.assert_allclose(detector.distances(images), [d for d, _ in want], rtol=1e-4)
    np.testing.assert_allclose(score(detector, images).probs.numpy(), [p for _, p in want], rtol=1e-4, atol=1e-6)


def test_pixel_distances_and_the_smallest_over_several_autoencoders(tmp_path, taesd_spec, tiny_vae_dir):
    vae_spec = f"vae:model={tiny_vae_dir},sample=false"
    images = _images()
    both = AerobladeDetector.create([taesd_spec, vae_spec], distance="l2", image_size=SIZE)
    each = [AerobladeDetector.create([s], distance="l2", image_size=SIZE).distances(images) for s in
            (taesd_spec, vae_spec)]  # fmt: skip
    np.testing.assert_allclose(both.distances(images), np.minimum(*each), rtol=1e-6)
    assert not np.allclose(each[0], each[1])  # the minimum picks from both
    with torch.no_grad():  # l2 is the mean squared pixel difference to the reconstruction
        x = _center(images[0], SIZE)
        r = both.autoencoders["taesd"].generate(x, [0]).float()
        assert float((x - r).square().mean()) == pytest.approx(each[0][0], rel=1e-5)
    # a VAE travels as a diffusers folder whose config does not say where it came from
    both.save_pretrained(tmp_path / "det")
    config = json.loads((tmp_path / "det" / "autoencoders" / "vae" / "config.json").read_text())
    assert "_name_or_path" not in config and config["_class_name"] == "AutoencoderKL"
    assert torch.equal(
        score(AerobladeDetector.from_pretrained(tmp_path / "det"), images).probs, score(both, images).probs
    )
    assert all(staged_local_paths(tmp_path / "det" / n) == [] for n in _files(tmp_path / "det"))


def test_the_probability_falls_as_the_distance_grows(tiny_aeroblade):
    detector = AerobladeDetector.from_pretrained(tiny_aeroblade)
    images = _images(6, seed=3)
    distances, probs = detector.distances(images), score(detector, images).probs.numpy()
    assert len(set(distances)) == 6
    assert list(np.argsort(distances)) == list(np.argsort(-probs))
    c = detector.config
    np.testing.assert_allclose(probs, 1 / (1 + np.exp(-c.scale * (c.offset - np.log(distances)))), rtol=1e-5)


def test_the_fit_recovers_a_logistic_and_refuses_a_reversed_one():
    rng = np.random.default_rng(0)
    x = rng.normal(0, 2, 4000)  # x = -ln(distance)
    labels = (rng.random(4000) < 1 / (1 + np.exp(-1.5 * (x - 1)))).astype(int)  # P = sigmoid(1.5 * (-1 - ln d))
    scale, offset = fit_logistic(x, labels)
    assert scale == pytest.approx(1.5, rel=0.1) and offset == pytest.approx(-1, abs=0.1)
    with pytest.raises(SefError, match="do not reconstruct better than the real ones"):
        fit_logistic(x, 1 - labels)


# ---- bad input: one line each --------------------------------------------------------------------------------------


@pytest.fixture
def fake_lpips(monkeypatch):
    """An importable stand-in for the lpips package (the rule under test fails before it is used)."""
    monkeypatch.setitem(sys.modules, "lpips", types.ModuleType("lpips"))


BAD = {
    "unknown distance": (["--distance", "ssim"], "unknown distance 'ssim'; known: l2, l1, features, lpips"),
    "not an autoencoder": (["-a", "sr:weights=x.pth"], "AEROBLADE reconstructs with an autoencoder, one of taesd, vae"),
    "unknown autoencoder parameter": (["-a", "taesd:weights=x,colour=red"], "--autoencoder taesd: unknown parameter"),
    "missing weights": (["-a", "taesd:encoder=/no/such_encoder.pth,decoder=/no/such_decoder.pth"], "not found"),
    "lpips unavailable": (["--distance", "lpips"], "needs the lpips package, which is not installed here"),
    "lpips without weights": (["--distance", "lpips"], "needs the VGG16 ImageNet weights as a local file"),
    "network for a pixel distance": (["--distance", "l2", "--distance-model", "x"], "the l2 distance uses no network"),
    "missing distance network": (
        ["--distance-model", "/no/such/folder"],
        "backbone folder '/no/such/folder' not found",
    ),
    "unknown backbone family": (["--distance-backbone", "vgg"], "unknown backbone 'vgg'"),
    "crop not a multiple": (["--image-size", "36"], "image_size 36 is not a multiple of 8"),
    "block out of range": (["--distance-layers", "40"], "feature layer 40 out of range"),
    "bad lpips layer": (["--lpips-layer", "7"], "lpips_layer must be 0 (all five layers) or a layer 1-5"),
    "two autoencoders, one name": (["-a", "TAESD"], "two autoencoders named 'taesd'; rename one with as=NAME"),
    "one class to fit on": (["--fit-on", "SET"], "needs real and generated images"),
    "reversed fit": (["--fit-on", "SET"], "do not reconstruct better than the real ones there"),
    "non-empty out": (["--out", "FULL"], "exists and is not an empty folder"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_line(case, request, tmp_path, taesd_spec, tiny_mnv2, monkeypatch):
    args, message = BAD[case]
    if case == "lpips unavailable":
        monkeypatch.setitem(sys.modules, "lpips", None)  # import lpips raises ImportError
    if case == "lpips without weights":
        request.getfixturevalue("fake_lpips")
    reals = tmp_path / "set" / "real"
    reals.mkdir(parents=True)
    for i, image in enumerate(_images(4, seed=9)):
        image.save(reals / f"{i}.png")
    if case == "reversed fit":  # "generated" images farther from their reconstructions: noise added to the reals
        (tmp_path / "set" / "fake").mkdir()
        for i, image in enumerate(_images(4, seed=9)):
            noisy = np.asarray(image, dtype=np.float32) + np.random.default_rng(i).normal(0, 60, (40, 48 + 4 * i, 3))
            Image.fromarray(noisy.clip(0, 255).astype(np.uint8)).save(tmp_path / "set" / "fake" / f"{i}.png")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x.txt").write_text("taken")
    swap = {"TAESD": taesd_spec, "SET": str(tmp_path / "set"), "FULL": str(tmp_path / "full")}  # fmt: skip
    args = [swap.get(a, a) for a in args]
    base = ["aeroblade", "-a", taesd_spec, "--distance-model", str(tiny_mnv2), "--image-size", str(SIZE),
            "--device", "cpu", "--out", str(tmp_path / "out")]  # fmt: skip
    if "-a" in args and case != "two autoencoders, one name":
        base = base[:1] + base[3:]
    if "--distance-model" in args or case == "lpips without weights":
        at = base.index("--distance-model")
        base = base[:at] + base[at + 2 :]
    if "--image-size" in args:
        at = base.index("--image-size")
        base = base[:at] + base[at + 2 :]
    line = _one_error_line(runner.invoke(app, [*base, *args]))
    assert message in line
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()  # nothing half-written


def test_a_damaged_folder_fails_to_load_in_one_line(tmp_path, tiny_aeroblade):
    import shutil

    missing = tmp_path / "missing"
    shutil.copytree(tiny_aeroblade, missing)
    shutil.rmtree(missing / "autoencoders")
    Image.fromarray(photo_like(40, 40)).save(tmp_path / "x.png")
    line = _one_error_line(runner.invoke(app, ["predict", str(missing), str(tmp_path / "x.png"), "--device", "cpu"]))
    assert "the weights of autoencoder 'taesd' (taesd/) are missing" in line
    pickled = tmp_path / "pickled"
    shutil.copytree(tiny_aeroblade, pickled)
    torch.save({"x": torch.zeros(1)}, pickled / "autoencoders" / "taesd" / "extra.pth")
    line = _one_error_line(runner.invoke(app, ["predict", str(pickled), str(tmp_path / "x.png"), "--device", "cpu"]))
    assert "contains pickle-format files (autoencoders/taesd/extra.pth)" in line
    mistyped = tmp_path / "mistyped"
    shutil.copytree(tiny_aeroblade, mistyped)
    config = json.loads((mistyped / "config.json").read_text())
    (mistyped / "config.json").write_text(json.dumps({**config, "detector_type": "magic"}))
    line = _one_error_line(runner.invoke(app, ["predict", str(mistyped), str(tmp_path / "x.png"), "--device", "cpu"]))
    assert "unknown detector_type 'magic'; known: sef, aeroblade" in line
    line = _one_error_line(runner.invoke(app, ["explain", str(tiny_aeroblade), str(tmp_path / "x.png")]))
    assert "training-free aeroblade detector: it has no experts to explain" in line


def test_lpips_is_the_lpips_packages_distance_at_one_layer(tmp_path, taesd_spec):
    """Where the lpips package is installed (an optional extra): the distance is lpips's own at the chosen layer, with
    the VGG16 weights from a local file; stored in the folder, it loads back without that file."""
    lpips = pytest.importorskip("lpips", reason="the lpips package is not installed (pip install lpips)")
    import warnings

    from safetensors.torch import save_file
    from torchvision.models import vgg16

    torch.manual_seed(0)
    features = vgg16(weights=None).features
    save_file({f"features.{k}": v for k, v in features.state_dict().items()}, str(tmp_path / "vgg16.safetensors"))
    vgg_file = str(tmp_path / "vgg16.safetensors")
    detector = AerobladeDetector.create([taesd_spec], distance="lpips", distance_model=vgg_file, image_size=SIZE,
                                        lpips_layer=2)  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = lpips.LPIPS(net="vgg", pnet_rand=True, verbose=False).eval()  # the package's linear weights
    for layer in reference.net.children():
        for name, module in layer.named_children():
            module.load_state_dict(features[int(name)].state_dict())
    images = _images(3)
    with torch.no_grad():
        x = torch.cat([_center(im, SIZE) for im in images])
        r = detector.autoencoders["taesd"].generate(x, [0] * 3).float()
        _, per_layer = reference(x, r, retPerLayer=True, normalize=True)
    np.testing.assert_allclose(detector.distances(images), per_layer[1].flatten().numpy(), rtol=1e-5)
    detector.save_pretrained(tmp_path / "det")
    assert "distance/lpips_vgg.safetensors" in _files(tmp_path / "det")
    (tmp_path / "vgg16.safetensors").unlink()
    assert torch.equal(score(AerobladeDetector.from_pretrained(tmp_path / "det"), images).probs,
                       score(detector, images).probs)  # fmt: skip


# ---- the commands ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bench(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bench")
    for label, seed in (("real", 0), ("fake", 50)):
        (root / label).mkdir()
        for i, image in enumerate(_images(3, seed=seed)):
            image.save(root / label / f"{i}.png")
    return root


def test_predict_eval_calibrate_and_publish_take_it_like_a_trained_detector(tmp_path, tiny_aeroblade, bench):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_aeroblade, run)
    detector = AerobladeDetector.from_pretrained(run)
    paths = sorted(bench.rglob("*.png"))
    want = score(detector, paths).probs.numpy()
    result = runner.invoke(app, ["predict", str(run), str(bench), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["path"] for r in records] == [str(p) for p in paths]
    np.testing.assert_allclose([r["prob"] for r in records], want, atol=1e-6)
    assert all(set(r) == {"path", "prob", "label", "num_crops"} for r in records)  # no gate weights

    result = runner.invoke(app, ["eval", str(run), "-b", str(bench), "--device", "cpu", "--no-progress", "--no-plots"])
    assert result.exit_code == 0, result.output
    results = json.loads((run / "eval" / "results.json").read_text())
    labels = [int(p.parent.name == "fake") for p in paths]
    (scored,) = results["benchmarks"].values()
    assert scored["metrics"]["ap"] == pytest.approx(average_precision(labels, want), abs=1e-6)
    assert results["detector"]["type"] == "aeroblade" and results["detector"]["description"].startswith("AEROBLADE")
    hashed = results["provenance"]["detector"]["weights_sha256"]
    assert sorted(hashed) == [n for n in _files(run) if n.endswith(".safetensors")]
    assert "AEROBLADE (training-free)" in (run / "eval" / "results.md").read_text()

    result = runner.invoke(app, ["calibrate", str(run), "--calibrate-on", str(bench / "real"), "--calibrate-fpr", "0.4",
                                 "--device", "cpu", "--no-progress"])  # fmt: skip
    assert result.exit_code == 0, result.output
    threshold = json.loads((run / "threshold.json").read_text())["threshold"]
    assert load_detector(run, "cpu").calibrated_threshold.threshold == threshold
    result = runner.invoke(app, ["predict", str(run), str(bench / "fake"), "--device", "cpu"])
    assert f"threshold {threshold:.6g} (threshold.json" in result.output

    result = runner.invoke(app, ["publish", str(run), "--repo", "me/aeroblade", "--dry-run"])
    assert result.exit_code == 0, result.output
    staged = run / ".publish"
    assert {"autoencoders/taesd/tiny_encoder.safetensors", "distance/model.safetensors", "threshold.json",
            "eval/results.json", "README.md"} <= set(_files(staged))  # fmt: skip
    card = (staged / "README.md").read_text()
    assert "training-free" in card and 'load_detector("me/aeroblade")' in card and "## Evaluation" in card
    line = _one_error_line(runner.invoke(app, ["publish", str(run), "--repo", "me/x", "--dry-run",
                                               "--base-model", "google/x"]))  # fmt: skip
    assert "an AEROBLADE detector has no backbone to name" in line


def test_serve_scores_it_without_heatmaps(tiny_aeroblade, bench):
    import urllib3

    from sefmodel.serve.app import Scorer, ServeConfig, background_server, create_app, detector_info

    detector = load_detector(tiny_aeroblade, "cpu")
    info = detector_info(Scorer(detector, ServeConfig()), None)
    assert info["heatmaps"] is False and info["experts"] == [] and info["description"].startswith("AEROBLADE")
    image = (bench / "fake" / "0.png").read_bytes()
    body, content_type = urllib3.encode_multipart_formdata([("files", ("0.png", image)), ("heatmaps", "1")])
    with background_server(create_app(detector, ServeConfig())) as url:
        response = urllib3.PoolManager(retries=False).request(
            "POST", url + "api/score", body=body, headers={"Content-Type": content_type}
        )
    assert response.status == 200
    (record,) = json.loads(response.data)["records"]
    assert record["prob"] == pytest.approx(float(score(detector, [bench / "fake" / "0.png"]).probs[0]), abs=1e-6)
    assert "explain" not in record and "explain_error" not in record


# ---- the AEROBLADE premise on real photos ----------------------------------------------------------------------------

PHOTOS = ["astronaut.png", "coffee.png", "kodim03.png", "mate-Wood.jpg", "rocket.jpg", "chelsea.png"]


@pytest.mark.slow
def test_taef2_reconstructions_score_higher_than_the_photos(tmp_path, assets, taef2, all_threads):
    """AEROBLADE's premise: an image that came out of the autoencoder's decoder (here: the photo's own TAEF2
    reconstruction) lies closer to its reconstruction than the photo does, so every reconstruction scores above its
    photo; measured on 128 px centre crops with the real TAEF2 and MobileNetV2."""
    mobilenet = asset(assets, "weights/mobilenet_v2_1.0_224")
    spec = f"taesd:encoder={taef2[0]},decoder={taef2[1]}"
    photos = [Image.open(asset(assets, f"photos/{name}")).convert("RGB") for name in PHOTOS]
    crops = [Image.fromarray((_center(p, 128)[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
             for p in photos]  # fmt: skip
    from sefdata.generators import Runtime, create_generator
    from sefdata.generators.base import GenSpec

    taesd = create_generator(GenSpec.parse(spec), Runtime(torch.device("cpu"), torch.float32))
    fakes = []
    for crop in crops:  # the fakes the build would write: TAEF2 output, quantised to 8 bits
        out = taesd.generate(_center(crop, 128), [0])[0].permute(1, 2, 0).numpy()
        fakes.append(Image.fromarray((out * 255).round().astype(np.uint8)))
    folder = tmp_path / "aeroblade"
    result = runner.invoke(app, ["aeroblade", "-a", spec, "--distance-model", str(mobilenet), "--image-size", "128",
                                 "--device", "cpu", "--out", str(folder)])  # fmt: skip
    assert result.exit_code == 0, result.output
    detector = load_detector(folder, "cpu")
    real, fake = score(detector, crops).probs.numpy(), score(detector, fakes).probs.numpy()
    assert (fake > real).all(), (real, fake)  # every reconstruction above its own photo
    ratio = detector.distances(crops) / detector.distances(fakes)
    assert ratio.min() > 1.5, ratio  # and by a wide margin: about 2x closer
    ap = average_precision(np.r_[np.zeros(len(real)), np.ones(len(fake))], np.r_[real, fake])
    assert ap > 0.9, ap  # pooled over photos of different content


def test_it_carries_a_golden_set_that_check_reproduces_and_a_changed_network_fails(tmp_path, tiny_aeroblade):
    import shutil

    from safetensors.torch import save_file

    folder = tmp_path / "detector"
    shutil.copytree(tiny_aeroblade, folder)
    images = tmp_path / "golden-source"
    for label, seeds in (("real", (1, 2)), ("fake", (3, 4))):
        (images / label).mkdir(parents=True)
        for s in seeds:
            Image.fromarray(photo_like(40, 40, s)).save(images / label / f"{s}.png")
    made = runner.invoke(app, ["golden", str(folder), str(images), "--count", "4"])
    assert made.exit_code == 0, made.output
    assert runner.invoke(app, ["check", str(folder)]).exit_code == 0
    # the stored autoencoder's weights altered: the golden set says so, in its own line
    weights = sorted((folder / "autoencoders").rglob("*.safetensors"))[0]
    tensors = load_file(str(weights))
    name = next(k for k, v in tensors.items() if v.is_floating_point() and v.numel() > 1)
    tensors[name] = tensors[name] * 3 + 0.5
    save_file(tensors, str(weights))
    result = runner.invoke(app, ["check", str(folder)])
    assert result.exit_code == 1, result.output
    assert "weight files are not those the golden set was made with" in result.output
