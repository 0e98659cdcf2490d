"""The detector's forward: zero-init experts, training stages, gate weights, shared-trunk equivalence."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest_model import FAMILIES, TINY, pixels, randomize_trained, tiny_config, tiny_detector

from sefmodel import DetectorConfig, SEFDetector
from sefmodel.model.backbones import get_backbone_class

# ---- a fresh expert is the frozen backbone ----------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_fresh_lora_expert_gives_exactly_the_frozen_backbone_features(family):
    torch.manual_seed(0)
    backbone = get_backbone_class(family).from_config(TINY[family])
    untouched = copy.deepcopy(backbone.model)  # before any adapter is injected
    detector = SEFDetector(tiny_config(family, lora={"rank": 4, "blocks": "all"}), backbone=backbone)
    x = pixels()
    with torch.no_grad():
        experts = detector.expert_features(x)
        frozen = detector.frozen_features(x)
        reference = untouched(pixel_values=x).pooler_output
    for i in range(len(detector.expert_names)):
        assert torch.equal(experts[:, i], frozen)  # B = 0: the LoRA branch adds exactly zero
    torch.testing.assert_close(frozen, reference, rtol=1e-5, atol=1e-6)  # and our split forward is the model's

    randomize_trained(detector)  # the check above can fail: a trained adapter moves the features
    with torch.no_grad():
        assert not torch.allclose(detector.expert_features(x)[:, 0], detector.frozen_features(x))


# ---- only the intended tensors train ----------------------------------------------------------------------


def _train_steps(detector, stage, which=None, steps=3, forward_kwargs=None):
    """A few SGD steps in ``stage``; returns (names in the optimizer, names that got a grad, changed)."""
    params = detector.set_stage(stage, which)
    names = {n for n, p in detector.named_parameters() if p.requires_grad}
    before = {n: p.detach().clone() for n, p in detector.named_parameters()}
    opt = torch.optim.SGD(params, lr=0.5)
    labels = torch.tensor([0.0, 1.0, 1.0, 0.0])
    graded = set()
    detector.train()
    for step in range(steps):
        opt.zero_grad(set_to_none=True)
        out = detector(pixels(4, seed=step), **(forward_kwargs or {}))
        torch.nn.functional.binary_cross_entropy_with_logits(out["logits"], labels).backward()
        graded |= {n for n, p in detector.named_parameters() if p.grad is not None}
        opt.step()
    changed = {n for n, p in detector.named_parameters() if not torch.equal(before[n], p.detach())}
    return names, graded, changed


def _adapter_names(detector, expert):
    return {n for n, _ in detector.named_parameters() if f".{expert}." in n and ".lora_" in n}


def test_expert_stage_trains_only_its_adapter_and_head():
    detector = tiny_detector(fusion="sef")  # two experts; train one of them
    names, graded, changed = _train_steps(detector, "expert", "sr", forward_kwargs={"expert": "sr"})
    expected = _adapter_names(detector, "sr") | {"heads.sr.weight", "heads.sr.bias"}
    assert len(_adapter_names(detector, "sr")) == 2 * 2 * 6  # A and B, 2 blocks, 6 projections
    assert names == graded == changed == expected
    assert not any(n.startswith("backbone.") and ".lora_" not in n for n in graded)  # backbone never


def test_mixed_stage_trains_the_single_lora_and_head():
    detector = tiny_detector(experts=["mixed"], fusion="single")
    names, graded, changed = _train_steps(detector, "mixed")
    expected = _adapter_names(detector, "mixed") | {"heads.mixed.weight", "heads.mixed.bias"}
    assert names == graded == changed == expected
    with pytest.raises(ValueError, match="fusion='single'"):
        tiny_detector(fusion="sef").set_stage("mixed")


@pytest.mark.parametrize(
    ("fusion", "expected"),
    [
        ("sef", {"fusion.gate.net.0.weight", "fusion.gate.net.0.bias", "fusion.gate.net.2.weight",
                 "fusion.gate.net.2.bias", "fusion.classifier.weight", "fusion.classifier.bias"}),
        ("mean", {"fusion.classifier.weight", "fusion.classifier.bias"}),
        ("concat", {"fusion.classifier.weight", "fusion.classifier.bias"}),
    ],
)  # fmt: skip
def test_fusion_stage_trains_only_gate_and_classifier(fusion, expected):
    detector = randomize_trained(tiny_detector(fusion=fusion))  # trained experts, as after stage 1
    names, graded, changed = _train_steps(detector, "fusion")
    assert names == graded == changed == expected


def test_stage_errors_are_explained():
    fused = tiny_detector()
    with pytest.raises(ValueError, match="say which one"):
        fused.set_stage("expert")
    with pytest.raises(ValueError, match="unknown expert"):
        fused.set_stage("expert", "gan")
    with pytest.raises(ValueError, match="unknown stage"):
        fused.set_stage("pretrain")
    with pytest.raises(ValueError, match="needs a fused detector"):
        tiny_detector(experts=["recon"], fusion="single").set_stage("fusion")
    assert fused.set_stage(None) == [] and not any(p.requires_grad for p in fused.parameters())


def test_backbone_runs_in_eval_mode_even_when_training():
    detector = tiny_detector(backbone_config={**TINY["dinov2"], "hidden_dropout_prob": 0.5})
    detector.set_stage("fusion")
    detector.train()
    assert detector.fusion.training and not detector.backbone.model.training
    x = pixels()
    with torch.no_grad():
        assert torch.equal(detector(x)["features"], detector(x)["features"])  # no dropout in the frozen part


# ---- gate weights ------------------------------------------------------------------------------------------


def test_gate_weights_are_a_distribution_per_image():
    detector = randomize_trained(tiny_detector(experts=["a", "b", "c"]))
    with torch.no_grad():
        weights = detector(pixels(5))["gate_weights"]
    assert weights.shape == (5, 3)
    assert torch.all(weights >= 0) and torch.all(weights <= 1)
    torch.testing.assert_close(weights.sum(dim=1), torch.ones(5))
    assert not torch.allclose(weights[0], weights[1])  # per image, not one global weighting


def test_untrained_gate_starts_uniform():
    with torch.no_grad():
        weights = tiny_detector()(pixels())["gate_weights"]
    torch.testing.assert_close(weights, torch.full((3, 2), 0.5))


@pytest.mark.parametrize("index", [0, 1])
def test_forcing_one_expert_reproduces_that_experts_feature_path(index):
    detector = randomize_trained(tiny_detector())
    name = detector.expert_names[index]
    x = pixels()
    one_hot = torch.nn.functional.one_hot(torch.full((3,), index), 2).float()
    with torch.no_grad():
        forced = detector(x, gate_weights=one_hot)
        alone = detector(x, expert=name)["features"][:, 0]  # that expert run on its own
        other = detector(x, expert=detector.expert_names[1 - index])["features"][:, 0]
    assert torch.equal(forced["fused"], alone)
    torch.testing.assert_close(forced["logits"], detector.fusion.classifier(alone).squeeze(-1), rtol=0, atol=0)
    assert not torch.allclose(forced["fused"], other)


def test_forward_outputs_have_documented_shapes():
    detector = randomize_trained(tiny_detector(fusion="concat"))
    with torch.no_grad():
        out = detector(pixels(2))
    assert out["logits"].shape == (2,)
    assert out["features"].shape == (2, 2, 32)
    assert out["fused"].shape == (2, 64)
    assert out["expert_logits"].shape == (2, 2)
    assert "gate_weights" not in out
    with pytest.raises(ValueError, match="no gate"):
        detector(pixels(2), gate_weights=torch.ones(2, 2) / 2)


# ---- shared trunk ------------------------------------------------------------------------------------------


def _count_block_calls(detector, block):
    calls = []
    handle = detector.backbone.layers()[block].register_forward_hook(lambda *_: calls.append(1))
    return calls, handle


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("blocks", ["last:1", "last:2", [1, 3], "all"])
def test_shared_trunk_and_straightforward_modes_agree(family, blocks):
    detector = randomize_trained(tiny_detector(family, experts=["a", "b", "c"], lora={"rank": 4, "blocks": blocks}))
    x = pixels(4)
    with torch.no_grad():
        straight = detector(x, shared_trunk=False)
        shared = detector(x, shared_trunk=True)
    for key in ("features", "logits", "gate_weights"):
        torch.testing.assert_close(shared[key], straight[key], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(straight["features"][:, 0], straight["features"][:, 1])  # experts differ


def test_shared_trunk_runs_the_early_blocks_once():
    detector = tiny_detector(experts=["a", "b", "c"], lora={"rank": 4, "blocks": "last:2"})
    assert detector.trunk_split == 2
    first, h1 = _count_block_calls(detector, 0)
    last, h2 = _count_block_calls(detector, 3)
    with torch.no_grad():
        detector(pixels(), shared_trunk=True)
        assert (len(first), len(last)) == (1, 3)
        detector(pixels(), shared_trunk=False)
        assert (len(first), len(last)) == (1 + 3, 3 + 3)
    h1.remove()
    h2.remove()


# ---- construction errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"backbone": "vit-nope"}, "known: clip, convnext, dinov2, dinov2_registers, mobilenet_v2, resnet"),
        ({"feature_pool": "mean_std"}, "does not apply to backbone 'dinov2'"),
        ({"lora": {"targets": ["conv"]}}, "do not apply to backbone 'dinov2'"),
        ({"fusion": "attention"}, "unknown fusion"),
        ({"fusion": "single"}, "exactly one expert"),
        ({"experts": ["a"]}, "at least two experts"),
        ({"experts": ["a", "a"]}, "unique"),
        ({"experts": ["a.b", "c"]}, "bad expert name"),
        ({"experts": "ab"}, "list of names"),
        ({"experts": []}, "at least one"),
        ({"gate_hidden": -1}, "gate_hidden"),
        ({"feature_layer": 1.5}, "feature_layer"),
        ({"lora": {"rank": 4, "rnak": 2}}, "unknown lora settings"),
        ({"backbone_id": "facebook/dinov2-small"}, "either backbone_id"),
    ],
)
def test_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        tiny_config(**kwargs)


def test_config_defaults_name_the_paper_setup():
    cfg = DetectorConfig()
    assert cfg.backbone_id == "facebook/dinov2-large" and cfg.fusion == "sef" and cfg.lora.rank == 8
    assert cfg.lora.targets == ["attention", "mlp"] and cfg.experts == ["recon", "sr"]
    assert DetectorConfig(backbone="clip").backbone_id == "openai/clip-vit-large-patch14"
    assert DetectorConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown detector config keys"):
        DetectorConfig.from_dict({**cfg.to_dict(), "fuson": "mean"})


def test_build_time_errors():
    with pytest.raises(ValueError, match="after the feature layer"):
        tiny_detector(feature_layer=1, lora={"blocks": [2, 3]})
    with pytest.raises(ValueError, match="multiple of the patch size"):
        tiny_detector(size=30)
    with pytest.raises(ValueError, match="only 4 blocks"):
        tiny_detector(lora={"blocks": "last:6"})


def test_feature_layer_below_the_top_uses_that_block():
    detector = tiny_detector(feature_layer=2, lora={"rank": 4, "blocks": [1, 2]})
    x = pixels()
    with torch.no_grad():
        torch.testing.assert_close(detector.frozen_features(x), detector.backbone(x, layer=2))
        assert torch.equal(detector.expert_features(x)[:, 0], detector.frozen_features(x))
