"""MobileNetV2 as a frozen backbone."""

from __future__ import annotations

import torch
from torch import nn
from transformers import MobileNetV2Config, MobileNetV2Model

from sefmodel.model.backbones.cnn import CNNBackbone
from sefmodel.model.backbones.registry import register_backbone


class MobileNetV2Backbone(CNNBackbone):
    """MobileNetV2 (Sandler et al. 2018). Stages: the 16 inverted-residual blocks, then the final 1x1 convolution
    (17 in all). Stage i < 16 outputs transformers' ``hidden_states[i]``; the last stage's mean is
    ``pooler_output`` (1280-d at depth multiplier 1.0).

    The released checkpoints use TensorFlow "SAME" padding (``tf_padding``), which the model code computes from
    the attributes of each convolution; :meth:`adapters_injected` keeps that working under LoRA.
    """

    name = "mobilenet_v2"
    default_model_id = "google/mobilenet_v2_1.0_224"
    model_class = MobileNetV2Model
    config_class = MobileNetV2Config
    image_mean = (0.5, 0.5, 0.5)  # the checkpoints' image processor: inputs in [-1, 1]
    image_std = (0.5, 0.5, 0.5)

    @property
    def patch_size(self) -> int:
        # five stride-2 steps (32), unless output_stride turns the later ones into dilations
        return min(32, int(self.model.config.output_stride))

    def layers(self) -> list[nn.Module]:
        return [*self.model.layer, self.model.conv_1x1]

    def stage_channels(self) -> list[int]:
        convs = [block.reduce_1x1.convolution for block in self.model.layer] + [self.model.conv_1x1.convolution]
        return [_unwrap(conv).out_channels for conv in convs]

    def embed(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model.conv_stem(pixel_values)


def _unwrap(conv: nn.Module) -> nn.Module:
    return conv.get_base_layer() if hasattr(conv, "get_base_layer") else conv


register_backbone("mobilenet_v2", MobileNetV2Backbone)
