"""Backbones: registry behaviour and the split forward (embed / run_blocks / pool) against transformers."""

from __future__ import annotations

import pytest
import torch
from conftest_model import FAMILIES, SIZE, TINY, pixels

from sefmodel.model.backbones import ViTBackbone, get_backbone_class, known_backbones, register_backbone


def build(family: str) -> ViTBackbone:
    torch.manual_seed(0)
    return get_backbone_class(family).from_config(TINY[family])


def test_builtin_families_are_registered():
    assert {"dinov2", "dinov2_registers", "clip"} <= set(known_backbones())


def test_unknown_backbone_lists_known_ones():
    with pytest.raises(KeyError) as err:
        get_backbone_class("vit-nope")
    message = str(err.value)
    assert "vit-nope" in message
    for name in ("clip", "dinov2", "dinov2_registers"):
        assert name in message


@pytest.mark.parametrize("missing", ["{tmp}/no_such_backbone", "./no/such/backbone", "examples/weights/no_such"])
def test_a_missing_local_backbone_folder_is_a_clear_error(tmp_path, missing):
    # a path, not a Hub id: it must not reach transformers' Hub lookup (which complains about repo id syntax)
    with pytest.raises(FileNotFoundError, match="backbone folder .* not found"):
        get_backbone_class("mobilenet_v2").from_pretrained(missing.format(tmp=tmp_path))


def test_duplicate_registration_is_refused():
    cls = get_backbone_class("dinov2")
    with pytest.raises(ValueError, match="already registered"):
        register_backbone("dinov2", cls)
    assert get_backbone_class("dinov2") is cls  # the original registration survives


def test_registering_a_non_backbone_is_refused():
    with pytest.raises(TypeError, match="Backbone subclass"):
        register_backbone("not-a-backbone", torch.nn.Linear)
    assert "not-a-backbone" not in known_backbones()


@pytest.mark.parametrize("family", FAMILIES)
def test_split_forward_equals_transformers_pooler_output(family):
    bb = build(family)
    x = pixels()
    with torch.no_grad():
        ours = bb(x)
        theirs = bb.model(pixel_values=x).pooler_output
    assert ours.shape == (3, 32)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("family", FAMILIES)
def test_chosen_layer_feature_matches_that_layers_hidden_state(family):
    bb = build(family)
    x = pixels()
    with torch.no_grad():
        hidden = bb.model(pixel_values=x, output_hidden_states=True).hidden_states
        ours = bb(x, layer=1)
    # hidden_states[0] is the embedding output, hidden_states[i + 1] the output of block i
    torch.testing.assert_close(ours, bb.pool(hidden[2]), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(ours, bb(x, layer=-1))
    with pytest.raises(ValueError, match="out of range"):
        bb(x, layer=4)


@pytest.mark.parametrize("family", FAMILIES)
def test_running_blocks_in_two_pieces_equals_one_run(family):
    bb = build(family)
    with torch.no_grad():
        tokens = bb.embed(pixels())
        whole = bb.run_blocks(tokens, 0, 4)
        split = bb.run_blocks(bb.run_blocks(tokens, 0, 3), 3, 4)
    assert torch.equal(whole, split)


@pytest.mark.parametrize("family", FAMILIES)
def test_backbone_exposes_geometry_normalisation_and_is_frozen(family):
    bb = build(family)
    assert bb.num_layers == 4 and bb.hidden_size == 32 and bb.patch_size == 8
    assert len(bb.image_mean) == len(bb.image_std) == 3
    assert all(not p.requires_grad for p in bb.parameters())
    expected = 24 * 8 if family.startswith("dinov2") else SIZE  # DINOv2: 24 patches a side (336 px at 14 px)
    assert bb.input_size == expected
    attention, mlp = bb.lora_targets("attention", 1), bb.lora_targets("mlp", 1)
    assert len(attention) == 4 and len(mlp) == 2  # q, k, v, out / fc1, fc2
    assert not set(attention) & set(mlp)
    assert all(name.startswith(bb.block_names()[1] + ".") for name in attention + mlp)
    modules = dict(bb.model.named_modules())
    assert all(isinstance(modules[name], torch.nn.Linear) for name in attention + mlp)
    with pytest.raises(ValueError, match="unknown LoRA target group"):
        bb.lora_targets("conv", 0)


def test_registers_variant_carries_register_tokens():
    bb = build("dinov2_registers")
    tokens = bb.embed(pixels(1))
    assert tokens.shape[1] == 1 + 2 + (SIZE // 8) ** 2  # CLS + registers + patches


def test_clip_accepts_non_native_sizes_by_interpolating_positions():
    bb = build("clip")
    with torch.no_grad():
        out = bb(torch.randn(2, 3, 48, 48))
    assert out.shape == (2, 32) and torch.isfinite(out).all()


def test_a_new_family_is_one_small_class_and_one_registration(monkeypatch):
    """The docs' example: a plain transformers ViT becomes a backbone with embed + pool and one line."""
    from transformers import ViTConfig, ViTModel

    from sefmodel import DetectorConfig, SEFDetector
    from sefmodel.model.backbones import registry

    monkeypatch.setattr(registry, "_BACKBONES", dict(registry._BACKBONES))  # keep the global registry clean

    class VitBackbone(ViTBackbone):
        name = "vit"
        default_model_id = "google/vit-large-patch16-224-in21k"
        model_class, config_class = ViTModel, ViTConfig
        image_mean = image_std = (0.5, 0.5, 0.5)

        def embed(self, pixel_values):
            return self.model.embeddings(pixel_values, interpolate_pos_encoding=True)

        def pool(self, hidden):
            return self.model.layernorm(hidden[:, 0])

    register_backbone("vit", VitBackbone)
    vit = dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64, patch_size=8)
    torch.manual_seed(0)
    config = DetectorConfig(backbone="vit", backbone_config={**vit, "image_size": SIZE}, processor={"size": SIZE})
    detector = SEFDetector(config)
    x = pixels()
    with torch.no_grad():
        reference = detector.backbone.model(pixel_values=x).last_hidden_state[:, 0]
        torch.testing.assert_close(detector.frozen_features(x), reference, rtol=1e-5, atol=1e-6)
        assert detector(x)["gate_weights"].shape == (3, 2)
