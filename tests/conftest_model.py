"""Tiny backbone configs and helpers shared by the tests/test_model_*.py files (imported explicitly).

Everything is built from config with random weights: no download, CPU, milliseconds per forward.
"""

from __future__ import annotations

import torch

from sefmodel import DetectorConfig, SEFDetector

SIZE = 32  # input side in pixels; 4x4 patches of 8 px
TINY = {
    "dinov2": dict(
        hidden_size=32, num_hidden_layers=4, num_attention_heads=2, mlp_ratio=2, image_size=SIZE, patch_size=8
    ),
    "dinov2_registers": dict(
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=2,
        mlp_ratio=2,
        image_size=SIZE,
        patch_size=8,
        num_register_tokens=2,
    ),
    "clip": dict(
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=SIZE,
        patch_size=8,
    ),
}
FAMILIES = sorted(TINY)
# CNNs: at 32 px, stride 8 (MobileNetV2, ConvNeXt) or 16 (ResNet) so the last map is still spatial
CNN_TINY = {
    # 17 stages: 16 inverted residuals + the final 1x1 conv; tf_padding as in the released checkpoints. The default
    # init (std 0.02, no trained batch norm) shrinks activations to ~1e-26 by the last stage; 0.3 keeps them ~1.
    "mobilenet_v2": dict(
        depth_multiplier=0.25, finegrained_output=False, output_stride=8, image_size=SIZE, initializer_range=0.3
    ),
    "resnet": dict(embedding_size=8, hidden_sizes=[16, 32, 64], depths=[1, 1, 1], layer_type="bottleneck"),
    "convnext": dict(patch_size=2, hidden_sizes=[8, 16, 32], depths=[1, 1, 1], num_stages=3, image_size=SIZE),
}
CNN_FAMILIES = sorted(CNN_TINY)


PROCESSOR_KEYS = ("size", "image_mean", "image_std", "resize", "small", "crop", "crops_per_side")


def tiny_config(family: str = "dinov2", **overrides) -> DetectorConfig:
    """A detector config on a tiny random backbone; LoRA rank 4 in the last 2 blocks by default. Overrides named
    in PROCESSOR_KEYS are image processor settings (``processor``; crop side SIZE by default)."""
    processor = {"size": SIZE, **{k: overrides.pop(k) for k in PROCESSOR_KEYS if k in overrides}}
    kwargs = dict(
        backbone=family,
        backbone_config={**TINY, **CNN_TINY}[family],
        processor=processor,
        lora={"rank": 4, "blocks": "last:2"},
        gate_hidden=16,
    )
    kwargs.update(overrides)
    return DetectorConfig(**kwargs)


def tiny_detector(family: str = "dinov2", seed: int = 0, **overrides) -> SEFDetector:
    torch.manual_seed(seed)
    return SEFDetector(tiny_config(family, **overrides))


def randomize_trained(detector: SEFDetector, seed: int = 1, scale: float = 0.5) -> SEFDetector:
    """Give every trained tensor (LoRA A and B, heads, gate, classifier) random non-zero values, as training
    would; a fresh LoRA has B = 0 and would hide bugs in how adapters are routed."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in detector.trained_state_dict().values():
            tensor.copy_(torch.randn(tensor.shape, generator=gen) * scale)
    return detector


def pixels(batch: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))
