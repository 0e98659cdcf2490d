"""LoRA settings: validation, block selection, and which modules peft actually adapts."""

from __future__ import annotations

import re

import pytest
import torch
from conftest_model import TINY

from sefmodel.model.backbones import get_backbone_class
from sefmodel.model.lora import LoraSettings


@pytest.mark.parametrize(
    ("blocks", "expected"),
    [
        ("all", [0, 1, 2, 3]),
        ("last:2", [2, 3]),
        ("last:4", [0, 1, 2, 3]),
        ([0, -1], [0, 3]),
        ([2, 2, 1], [1, 2]),
    ],
)
def test_block_selection(blocks, expected):
    assert LoraSettings(blocks=blocks).block_indices(4) == expected


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"rank": 0}, "rank"),
        ({"alpha": 0}, "alpha"),
        ({"dropout": 1.0}, "dropout"),
        ({"targets": "mlp"}, "targets"),
        ({"targets": ["mlp", "mlp"]}, "targets"),
        ({"targets": []}, "targets"),
        ({"blocks": "first:2"}, "blocks"),
        ({"blocks": "last:0"}, "blocks"),
        ({"blocks": []}, "blocks"),
        ({"blocks": [1.5]}, "blocks"),
    ],
)
def test_bad_settings_are_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LoraSettings(**kwargs)


def test_all_and_last_k_count_back_from_the_feature_block():
    """Blocks after the feature block cannot change the feature, so "all" and "last:K" end at it."""
    assert LoraSettings(blocks="all").block_indices(17, feature_block=3) == [0, 1, 2, 3]
    assert LoraSettings(blocks="last:2").block_indices(17, feature_block=3) == [2, 3]
    assert LoraSettings(blocks=[-1]).block_indices(17, feature_block=3) == [16]  # lists stay absolute
    with pytest.raises(ValueError, match="only 4 blocks up to the feature block"):
        LoraSettings(blocks="last:5").block_indices(17, feature_block=3)


def test_blocks_out_of_range_for_the_backbone():
    with pytest.raises(ValueError, match="only 4 blocks"):
        LoraSettings(blocks="last:5").block_indices(4)
    with pytest.raises(ValueError, match="out of range"):
        LoraSettings(blocks=[4]).block_indices(4)


def test_unknown_settings_key_is_an_error():
    with pytest.raises(ValueError, match="unknown lora settings"):
        LoraSettings.from_dict({"rank": 4, "rnak": 8})


@pytest.mark.parametrize("family", ["dinov2", "clip"])
@pytest.mark.parametrize(
    ("targets", "blocks", "per_block"),
    [(["attention", "mlp"], "last:2", 6), (["mlp"], [0], 2), (["attention"], "all", 4)],
)
def test_peft_adapts_exactly_the_chosen_projections_of_the_chosen_blocks(family, targets, blocks, per_block):
    from peft import inject_adapter_in_model
    from peft.tuners.tuners_utils import BaseTunerLayer

    torch.manual_seed(0)
    bb = get_backbone_class(family).from_config(TINY[family])
    settings = LoraSettings(rank=2, targets=targets, blocks=blocks)
    inject_adapter_in_model(settings.peft_config(bb), bb.model, adapter_name="x")
    adapted = [name for name, m in bb.model.named_modules() if isinstance(m, BaseTunerLayer)]
    chosen = settings.block_indices(4)
    assert len(adapted) == per_block * len(chosen)
    blocks_seen = {i for i, block in enumerate(bb.block_names()) for name in adapted if name.startswith(block + ".")}
    assert blocks_seen == set(chosen)
    modules = dict(bb.model.named_modules())
    for name in adapted:
        group = "attention" if re.search("attention|attn", name) else "mlp"
        assert group in targets and isinstance(modules[name].get_base_layer(), torch.nn.Linear), name
