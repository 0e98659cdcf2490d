"""ResNet as a frozen backbone (ResNet-50 is the backbone of CNNDetection and AlignedForensics)."""

from __future__ import annotations

import torch
from torch import nn
from transformers import ResNetConfig, ResNetModel

from sefmodel.model.backbones.cnn import CNNBackbone
from sefmodel.model.backbones.registry import register_backbone


class ResNetBackbone(CNNBackbone):
    """ResNet (He et al. 2016). Stem: 7x7 stride-2 convolution and max pool; stages: ``encoder.stages`` (4 for
    ResNet-50), stage i outputting transformers' ``hidden_states[i + 1]``. The last stage's mean is
    ``pooler_output`` (2048-d for ResNet-50)."""

    name = "resnet"
    default_model_id = "microsoft/resnet-50"
    model_class = ResNetModel
    config_class = ResNetConfig
    image_mean = (0.485, 0.456, 0.406)  # ImageNet statistics, as in the checkpoints' image processor
    image_std = (0.229, 0.224, 0.225)

    @property
    def patch_size(self) -> int:
        config = self.model.config
        first = 2 if config.downsample_in_first_stage else 1
        return 4 * first * 2 ** (len(config.depths) - 1)  # stem 4, then every stage after the first halves

    def layers(self) -> nn.ModuleList:
        return self.model.encoder.stages

    def stage_channels(self) -> list[int]:
        return [int(c) for c in self.model.config.hidden_sizes]

    def embed(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model.embedder(pixel_values)


register_backbone("resnet", ResNetBackbone)
