"""ConvNeXt as a frozen backbone."""

from __future__ import annotations

import torch
from torch import nn
from transformers import ConvNextConfig, ConvNextModel

from sefmodel.model.backbones.cnn import CNNBackbone
from sefmodel.model.backbones.registry import register_backbone


class ConvNextBackbone(CNNBackbone):
    """ConvNeXt (Liu et al. 2022). Stem: the patchify convolution; stages: ``encoder.stages`` (4), each a
    downsampling layer (except the first) and ConvNeXt blocks. The last stage's mean goes through the model's
    final LayerNorm, which is ``pooler_output``; earlier stages are pooled without a norm.

    LoRA adapts the downsampling convolutions and the pointwise (Linear) layers of the blocks; the 7x7 depthwise
    convolutions stay frozen.
    """

    name = "convnext"
    default_model_id = "facebook/convnext-base-224"
    model_class = ConvNextModel
    config_class = ConvNextConfig
    image_mean = (0.485, 0.456, 0.406)  # ImageNet statistics, as in the checkpoints' image processor
    image_std = (0.229, 0.224, 0.225)

    @property
    def patch_size(self) -> int:
        config = self.model.config
        return int(config.patch_size) * 2 ** (int(config.num_stages) - 1)  # patchify, then 2x per later stage

    def layers(self) -> nn.ModuleList:
        return self.model.encoder.stages

    def stage_channels(self) -> list[int]:
        return [int(c) for c in self.model.config.hidden_sizes]

    def final_norm(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.model.layernorm(pooled)

    def embed(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model.embeddings(pixel_values)


register_backbone("convnext", ConvNextBackbone)
