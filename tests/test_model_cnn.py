"""CNN backbones (mobilenet_v2, resnet, convnext): stage features against transformers, LoRA on the convolutions,
the shared trunk, and a CNN detector that trains, saves, loads, scores, evaluates, explains and publishes like a
ViT one. Tiny random configs; two tests on the real pretrained MobileNetV2 of the assets (the demo kit's copy has
no ImageNet head: the test that needs one skips there)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import train_helpers
from conftest import asset, missing_asset, photo_like
from conftest_model import CNN_FAMILIES, CNN_TINY, SIZE, pixels, randomize_trained, tiny_config, tiny_detector
from peft.tuners.tuners_utils import BaseTunerLayer
from PIL import Image
from sef_cli.sefmodel import app
from typer.testing import CliRunner

from sefmodel import CNNBackbone, DetectorConfig, SEFDetector
from sefmodel.explain import grad_cam
from sefmodel.model.backbones import get_backbone_class, known_backbones
from sefmodel.model.combine import combine_experts
from sefmodel.pipeline import score
from sefmodel.publish import publish

shards, tiny_gens = train_helpers.shards, train_helpers.tiny_gens  # fixtures


def build(family: str) -> CNNBackbone:
    torch.manual_seed(0)
    return get_backbone_class(family).from_config(CNN_TINY[family])


def stage_maps(family: str, model: torch.nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """transformers' own per-stage outputs, indexed like our stages. MobileNetV2 reports its 16 blocks and keeps
    the final 1x1 conv's map as last_hidden_state; ResNet and ConvNeXt put the stem's output first."""
    out = model(pixel_values=x, output_hidden_states=True)
    states = list(out.hidden_states)
    return [*states, out.last_hidden_state] if family == "mobilenet_v2" else states[1:]


def pooled(family: str, model: torch.nn.Module, stage_map: torch.Tensor, last: bool, pool: str) -> torch.Tensor:
    """The documented pooling, written out independently of sefmodel."""
    mean = stage_map.mean(dim=(2, 3))
    if last and family == "convnext":
        mean = model.layernorm(mean)
    return mean if pool == "mean" else torch.cat([mean, stage_map.std(dim=(2, 3), correction=0)], dim=1)


def test_loading_a_classifier_checkpoint_is_quiet_and_missing_weights_warn(tmp_path, caplog, capsys):
    """A backbone loads from a whole classification checkpoint (its head unused: no report, no progress bar);
    weights the checkpoint lacks are named in one warning, since they stay random."""
    from safetensors.torch import load_file, save_file
    from transformers import MobileNetV2Config, MobileNetV2ForImageClassification

    torch.manual_seed(0)
    MobileNetV2ForImageClassification(MobileNetV2Config(**CNN_TINY["mobilenet_v2"])).save_pretrained(tmp_path)
    family = get_backbone_class("mobilenet_v2")
    with caplog.at_level("WARNING"):
        backbone = family.from_pretrained(str(tmp_path))
    assert backbone.num_layers == 17 and not caplog.records
    assert "LOAD REPORT" not in capsys.readouterr().err

    weights = load_file(tmp_path / "model.safetensors")
    save_file({k: v for k, v in weights.items() if "conv_1x1" not in k}, tmp_path / "model.safetensors",
              metadata={"format": "pt"})  # fmt: skip
    with caplog.at_level("WARNING"):
        family.from_pretrained(str(tmp_path))
    (record,) = [r for r in caplog.records if "randomly initialised" in r.getMessage()]
    assert "conv_1x1" in record.getMessage() and "\n" not in record.getMessage()


# ---- registry and configuration -----------------------------------------------------------------------------


def test_cnn_families_register_with_their_defaults_and_dinov2_stays_the_default():
    assert set(CNN_FAMILIES) <= set(known_backbones())
    assert DetectorConfig().backbone == "dinov2"
    ids = {"mobilenet_v2": "google/mobilenet_v2_1.0_224", "resnet": "microsoft/resnet-50"}
    for family, model_id in {**ids, "convnext": "facebook/convnext-base-224"}.items():
        cfg = DetectorConfig(backbone=family)
        assert cfg.backbone_id == model_id and cfg.feature_pool == "mean" and cfg.feature_layer == -1
        assert cfg.lora.targets == ["conv"]  # resolved and written out, as the ViTs' attention + mlp are
    assert DetectorConfig().feature_pool == "cls"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"feature_pool": "cls"}, "does not apply to backbone 'resnet'"),
        ({"feature_pool": "max"}, "known: mean, mean_std"),
        ({"lora": {"targets": ["attention"]}}, "known: conv"),
    ],
)
def test_cnn_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        tiny_config("resnet", **kwargs)


def test_cnn_build_time_errors():
    with pytest.raises(ValueError, match="multiple of the patch size 16"):
        tiny_detector("resnet", size=40)
    with pytest.raises(ValueError, match="out of range"):
        tiny_detector("resnet", feature_layer=3)
    with pytest.raises(ValueError, match="after the feature layer"):
        tiny_detector("mobilenet_v2", feature_layer=3, lora={"blocks": [2, 4]})


# ---- the split forward is the model's --------------------------------------------------------------------------


@pytest.mark.parametrize("family", CNN_FAMILIES)
def test_default_feature_is_the_models_pooler_output(family):
    bb = build(family)
    x = pixels()
    with torch.no_grad():
        ours = bb(x)
        theirs = bb.model(pixel_values=x).pooler_output.flatten(1)  # ResNet keeps (B, C, 1, 1)
    assert ours.shape == (3, bb.feature_dim()) == (3, bb.stage_channels()[-1])
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("pool", ["mean", "mean_std"])
@pytest.mark.parametrize("family", CNN_FAMILIES)
def test_every_stage_pools_transformers_hidden_state(family, pool):
    bb = build(family)
    x = pixels()
    with torch.no_grad():
        maps = stage_maps(family, bb.model, x)
        assert len(maps) == bb.num_layers
        for stage, stage_map in enumerate(maps):
            expected = pooled(family, bb.model, stage_map, stage == bb.num_layers - 1, pool)
            ours = bb(x, layer=stage, pool=pool)
            assert ours.shape == (3, bb.feature_dim(stage, pool))
            torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)
    assert bb.feature_dim(0, "mean_std") == 2 * bb.feature_dim(0, "mean")


@pytest.mark.parametrize("family", CNN_FAMILIES)
def test_running_stages_in_two_pieces_equals_one_run_and_geometry(family):
    bb = build(family)
    last = bb.num_layers
    with torch.no_grad():
        stem = bb.embed(pixels())
        whole = bb.run_blocks(stem, 0, last)
        split = bb.run_blocks(bb.run_blocks(stem, 0, 1), 1, last)
    assert torch.equal(whole, split)
    assert whole.shape[-2:] == (SIZE // bb.patch_size,) * 2  # the total stride, as the detector checks sizes
    assert bb.input_size == (224 if family == "resnet" else SIZE)
    assert all(not p.requires_grad for p in bb.parameters())


def test_mean_std_gradients_stay_finite_on_constant_channels():
    """A dead ReLU channel is constant over the map; sqrt'(0) is infinite, which must not become NaN."""
    bb = build("resnet")
    hidden = torch.randn(2, 64, 4, 4)
    hidden[:, :5] = 0.0
    hidden.requires_grad_(True)
    feature = bb.feature(hidden, layer=-1, pool="mean_std")
    feature.sum().backward()
    assert torch.isfinite(hidden.grad).all()
    assert feature[:, 64:69].abs().max() < 1e-4  # and the std of a constant channel is (nearly) zero


# ---- LoRA on the convolutions ------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", CNN_FAMILIES)
def test_lora_adapts_every_dense_conv_of_the_chosen_stages_and_nothing_else(family):
    bb = build(family)
    untouched = copy.deepcopy(bb.model)
    detector = SEFDetector(tiny_config(family, lora={"rank": 4, "blocks": "last:2"}), backbone=bb)
    chosen = [bb.block_names()[i] for i in range(bb.num_layers - 2, bb.num_layers)]
    expected = {
        name
        for name, m in untouched.named_modules()
        if any(name.startswith(prefix + ".") for prefix in chosen)
        and (isinstance(m, torch.nn.Linear) or (isinstance(m, torch.nn.Conv2d) and m.groups == 1))
    }
    adapted = {name for name, m in bb.model.named_modules() if isinstance(m, BaseTunerLayer)}
    assert adapted == expected and expected
    depthwise = [n for n, m in untouched.named_modules() if isinstance(m, torch.nn.Conv2d) and m.groups > 1]
    assert not set(depthwise) & adapted
    assert detector.trunk_split == bb.num_layers - 2


def test_mobilenet_tf_padding_reads_conv_geometry_through_the_lora_wrappers():
    bb = build("mobilenet_v2")
    assert bb.model.config.tf_padding
    SEFDetector(tiny_config("mobilenet_v2", lora={"rank": 4, "blocks": "all"}), backbone=bb)
    wrappers = [m for m in bb.model.modules() if isinstance(m, BaseTunerLayer)]
    assert len(wrappers) == 16 * 2 + 1  # expand + reduce 1x1 per block, the final 1x1 conv
    for wrapper in wrappers:
        base = wrapper.get_base_layer()
        assert (wrapper.stride, wrapper.kernel_size, wrapper.dilation) == (base.stride, base.kernel_size, base.dilation)


@pytest.mark.parametrize(("feature_layer", "pool"), [(-1, "mean"), (1, "mean_std")])
@pytest.mark.parametrize("family", CNN_FAMILIES)
def test_fresh_lora_expert_gives_exactly_the_frozen_backbone_features(family, feature_layer, pool):
    bb = build(family)
    untouched = copy.deepcopy(bb.model)
    config = tiny_config(family, feature_layer=feature_layer, feature_pool=pool, lora={"rank": 4, "blocks": "all"})
    detector = SEFDetector(config, backbone=bb)
    x = pixels()
    with torch.no_grad():
        experts = detector.expert_features(x)
        frozen = detector.frozen_features(x)
        maps = stage_maps(family, untouched, x)
        reference = pooled(family, untouched, maps[feature_layer], feature_layer == -1, pool)
    assert experts.shape == (3, 2, bb.feature_dim(feature_layer, pool))
    for i in range(len(detector.expert_names)):
        assert torch.equal(experts[:, i], frozen)
    torch.testing.assert_close(frozen, reference, rtol=1e-5, atol=1e-5)

    randomize_trained(detector, scale=0.1)  # the check above can fail: a trained adapter moves the features
    with torch.no_grad():
        assert not torch.allclose(detector.expert_features(x)[:, 0], detector.frozen_features(x))


# ---- shared trunk and training ----------------------------------------------------------------------------------


@pytest.mark.parametrize("family", CNN_FAMILIES)
def test_shared_trunk_runs_the_stages_before_the_first_adapted_one_once(family):
    detector = randomize_trained(
        tiny_detector(family, experts=["a", "b", "c"], lora={"rank": 4, "blocks": "last:1"}), scale=0.1
    )
    stages = detector.backbone.layers()
    calls = {0: [], len(stages) - 1: []}
    handles = [stages[i].register_forward_hook(lambda *_, i=i: calls[i].append(1)) for i in calls]
    x = pixels(4)
    with torch.no_grad():
        shared = detector(x, shared_trunk=True)
        assert (len(calls[0]), len(calls[len(stages) - 1])) == (1, 3)
        straight = detector(x, shared_trunk=False)
    for handle in handles:
        handle.remove()
    for key in ("features", "logits", "gate_weights"):
        torch.testing.assert_close(shared[key], straight[key], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(straight["features"][:, 0], straight["features"][:, 1])


@pytest.mark.parametrize("family", CNN_FAMILIES)
def test_expert_training_moves_only_its_adapter_and_head(family):
    detector = tiny_detector(family, feature_layer=1, feature_pool="mean_std")
    params = detector.set_stage("expert", "recon")
    before = {n: p.detach().clone() for n, p in detector.named_parameters()}
    opt = torch.optim.SGD(params, lr=0.5)
    detector.train()
    for step in range(3):
        opt.zero_grad(set_to_none=True)
        logits = detector(pixels(4, seed=step), expert="recon")["logits"]
        torch.nn.functional.binary_cross_entropy_with_logits(logits, torch.tensor([0.0, 1.0, 1.0, 0.0])).backward()
        assert all(torch.isfinite(p.grad).all() for p in params if p.grad is not None)
        opt.step()
    changed = {n for n, p in detector.named_parameters() if not torch.equal(before[n], p.detach())}
    adapter = (".lora_A.recon.", ".lora_B.recon.")
    assert all(n.startswith("heads.recon.") or any(a in n for a in adapter) for n in changed), changed
    assert any(".lora_A.recon." in n for n in changed) and any(".lora_B.recon." in n for n in changed)


def test_the_cli_trains_a_cnn_expert_on_an_early_stage(shards, tmp_path):
    conf = tmp_path / "cnn.toml"
    lines = ["steps = 4", "batch_size = 4", "num_workers = 0", "shuffle_buffer = 4", "save_every = 2", "[detector]"]
    lines += ['backbone = "mobilenet_v2"', f"processor = {{ size = {SIZE} }}", "[detector.backbone_config]"]
    lines += [f"{k} = {json.dumps(v)}" for k, v in CNN_TINY["mobilenet_v2"].items()]
    conf.write_text("\n".join(lines) + "\n")
    run = tmp_path / "run"
    result = CliRunner().invoke(app, ["train", "--data", str(shards["train"]), "--config", str(conf), "--no-progress",
                                      "--stage", "expert", "--domain", "recon", "--out", str(run), "--lora-rank", "4",
                                      "--feature-layer", "3", "--feature-pool", "mean_std"])  # fmt: skip
    assert result.exit_code == 0, result.output
    trained = SEFDetector.from_pretrained(run / "detector")
    assert (trained.config.feature_layer, trained.config.feature_pool) == (3, "mean_std")
    assert trained.trunk_split == 0  # lora.blocks "all" = the stages up to the feature stage, 0..3
    torch.manual_seed(0)
    fresh = SEFDetector(trained.config)
    for key, value in fresh.backbone_state_dict().items():
        assert torch.equal(value, trained.backbone_state_dict()[key]), key
    changed = [k for k, v in fresh.trained_state_dict().items() if not torch.equal(v, trained.trained_state_dict()[k])]
    assert changed and all(".lora_" in k or k.startswith("heads.recon") for k in changed)
    assert {int(k.split("model.layer.")[1].split(".")[0]) for k in changed if ".lora_" in k} == {0, 1, 2, 3}


# ---- the rest of the toolkit, unchanged ---------------------------------------------------------------------------


def _images() -> list[Image.Image]:
    return [Image.fromarray(photo_like(48, 40, seed=s)) for s in range(3)] + [Image.new("L", (20, 28), 90)]


@pytest.fixture(scope="module")
def cnn_run(tmp_path_factory) -> Path:
    """A trainer-style run of a fused MobileNetV2 detector on stage 3 with mean_std pooling, evaluated by the CLI."""
    run = tmp_path_factory.mktemp("cnn_run")
    detector = tiny_detector("mobilenet_v2", feature_layer=3, feature_pool="mean_std")
    randomize_trained(detector, scale=0.1).save_pretrained(run / "detector")
    bench = run.parent / "cnn_bench"
    for label in ("real", "fake"):
        (bench / label).mkdir(parents=True)
        for i in range(3):
            image = photo_like(40, 36, seed=i + (10 if label == "fake" else 0))
            Image.fromarray(image if label == "real" else image // 2 + 60).save(bench / label / f"{i}.png")
    result = CliRunner().invoke(app, ["eval", str(run), "--bench", f"tiny={bench}", "--device", "cpu", "--no-plots"])
    assert result.exit_code == 0, result.output
    assert (run / "eval" / "results.json").is_file()
    return run


def test_cnn_detector_round_trips_and_scores_identically(cnn_run, tmp_path):
    loaded = SEFDetector.from_pretrained(cnn_run / "detector")
    saved = json.loads((cnn_run / "detector" / "config.json").read_text())
    assert (saved["backbone"], saved["feature_layer"], saved["feature_pool"]) == ("mobilenet_v2", 3, "mean_std")
    assert saved["lora"]["targets"] == ["conv"] and (cnn_run / "detector" / "backbone.safetensors").is_file()
    loaded.save_pretrained(tmp_path / "again")
    again = SEFDetector.from_pretrained(tmp_path / "again")
    first, second = score(loaded, _images()), score(again, _images())
    assert torch.equal(first.probs, second.probs) and torch.equal(first.gate_weights, second.gate_weights)
    assert first.probs.shape == (4,) and not torch.allclose(first.probs, first.probs[0])


def test_cnn_experts_trained_apart_combine(tmp_path):
    recon = randomize_trained(tiny_detector("resnet", experts=["recon"], fusion="single"), seed=1, scale=0.1)
    sr = randomize_trained(tiny_detector("resnet", experts=["sr"], fusion="single"), seed=2, scale=0.1)
    recon.save_pretrained(tmp_path / "recon")
    fused = combine_experts([tmp_path / "recon", sr], fusion="sef")
    x = pixels(2)
    with torch.no_grad():
        torch.testing.assert_close(fused(x, expert="recon")["logits"], recon(x)["logits"])
        torch.testing.assert_close(fused(x, expert="sr")["logits"], sr(x)["logits"])
    other = tiny_detector("resnet", experts=["x"], fusion="single", feature_pool="mean_std")
    with pytest.raises(ValueError, match="disagree on feature_pool"):
        combine_experts([recon, other])


@pytest.mark.parametrize(("family", "layer"), [("mobilenet_v2", None), ("resnet", None), ("convnext", 0)])
def test_grad_cam_explains_the_chosen_stages_map(family, layer):
    detector = randomize_trained(tiny_detector(family, feature_layer=1), scale=0.1)
    image = Image.fromarray(photo_like(48, 40, seed=3))
    ex = grad_cam(detector, image, layer)
    explained = 1 if layer is None else layer  # default: the feature stage's own output map
    with torch.no_grad():
        stage_map = detector.backbone.run_blocks(detector.backbone.embed(detector.preprocess(image)), 0, explained + 1)
    assert set(ex.maps) == {"recon", "sr", "fused"}
    for heat in ex.maps.values():
        assert heat.shape == tuple(stage_map.shape[-2:]) and heat.min() >= 0 and heat.max() == pytest.approx(1)
    assert not np.allclose(ex.maps["recon"], ex.maps["sr"])
    assert ex.prob == pytest.approx(float(score(detector, image).probs[0]), abs=1e-5)
    assert sum(ex.gate_weights.values()) == pytest.approx(1)


def test_cnn_run_explains_and_publishes_through_the_cli(cnn_run, tmp_path):
    runner = CliRunner()
    image = tmp_path / "photo.png"
    Image.fromarray(photo_like(50, 44, seed=5)).save(image)
    out = tmp_path / "cam.png"
    result = runner.invoke(app, ["explain", str(cnn_run), str(image), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert out.is_file() and "gate recon" in result.output
    staged = publish(cnn_run, "me/sef-cnn", dry_run=True, staging=tmp_path / "stage")
    assert {"README.md", "config.json", "model.safetensors", "backbone.safetensors"} <= set(staged.files)
    original = score(SEFDetector.from_pretrained(cnn_run / "detector"), _images())
    reloaded = score(SEFDetector.from_pretrained(staged.folder), _images())
    assert torch.equal(original.probs, reloaded.probs)
    result = runner.invoke(app, ["publish", str(cnn_run), "--repo", "me/x", "--dry-run", "--staging", str(tmp_path)])
    assert result.exit_code == 0, result.output


# ---- real pretrained weights ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mobilenet_dir(assets: Path) -> Path:
    return asset(assets, "weights/mobilenet_v2_1.0_224/model.safetensors").parent


def _mobilenet_detector(folder: Path, feature_layer: int, pool: str) -> SEFDetector:
    config = DetectorConfig(
        backbone="mobilenet_v2",
        backbone_id=str(folder),
        feature_layer=feature_layer,
        feature_pool=pool,
        processor={"resize": 256},  # the checkpoint's own preprocessing: short side 256, centre crop 224
    )
    return SEFDetector(config)


def _photos(detector: SEFDetector, assets: Path, names: list[str]) -> torch.Tensor:
    return torch.cat([detector.preprocess(Image.open(assets / "photos" / name)) for name in names])


@pytest.mark.parametrize(("feature_layer", "pool"), [(-1, "mean"), (3, "mean_std")])
def test_pretrained_mobilenet_features_are_unchanged_by_a_fresh_lora(mobilenet_dir, assets, feature_layer, pool):
    from transformers import MobileNetV2ForImageClassification

    reference = MobileNetV2ForImageClassification.from_pretrained(mobilenet_dir).eval()
    detector = _mobilenet_detector(mobilenet_dir, feature_layer, pool)
    assert detector.image_size == 224 and len(detector._tuner_layers) > 0
    x = _photos(detector, assets, ["coffee.png", "chelsea.png", "rocket.jpg"])
    with torch.no_grad():
        experts = detector.expert_features(x)
        frozen = detector.frozen_features(x)
        maps = stage_maps("mobilenet_v2", reference.mobilenet_v2, x)
        expected = pooled("mobilenet_v2", reference, maps[feature_layer], feature_layer == -1, pool)
    assert torch.equal(experts[:, 0], frozen) and torch.equal(experts[:, 1], frozen)
    torch.testing.assert_close(frozen, expected, rtol=1e-5, atol=1e-5)
    assert frozen.shape[1] == (1280 if feature_layer == -1 else 2 * 32)


def test_pretrained_mobilenet_features_still_feed_its_imagenet_head(mobilenet_dir, assets):
    """Real features of real photos: the checkpoint's own ImageNet head still recognises them."""
    from transformers import MobileNetV2ForImageClassification

    if "id2label" not in json.loads((mobilenet_dir / "config.json").read_text()):
        missing_asset(f"the MobileNetV2 in {assets} has no ImageNet head (the demo kit's copy carries none; set "
                      "SEF_ASSETS to the shared assets)")  # fmt: skip
    reference = MobileNetV2ForImageClassification.from_pretrained(mobilenet_dir).eval()
    detector = _mobilenet_detector(mobilenet_dir, -1, "mean")
    x = _photos(detector, assets, ["coffee.png", "chelsea.png", "rocket.jpg"])
    with torch.no_grad():
        logits = reference.classifier(detector.frozen_features(x))
    labels = [reference.config.id2label[int(i)] for i in logits.argmax(dim=1)]
    assert "espresso" in labels[0] and "cat" in labels[1] and "missile" in labels[2], labels
