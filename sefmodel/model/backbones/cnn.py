"""Convolutional backbones: stages as blocks, the globally pooled feature map of one stage as the feature.

A CNN family is one file: subclass :class:`CNNBackbone`, set the class attributes, implement ``embed`` (the
stem), ``layers`` (the stages), ``stage_channels`` and ``patch_size`` (the total stride), then register it.

Pooling (``DetectorConfig.feature_pool``) of a stage's map ``A`` (B, C, h, w):

* ``"mean"`` (default): the per-channel spatial mean, C values. At the last stage a family whose model pools
  through a norm (ConvNeXt's final LayerNorm) applies it, so the default feature is the model's own
  ``pooler_output``.
* ``"mean_std"``: the mean as above and the per-channel spatial standard deviation, 2C values. The spread of a
  feature map carries the texture statistics that generator artifacts change; early stages keep them best.

LoRA (group ``"conv"``) adapts every dense convolution of the chosen stages, including 1x1 convolutions written
as Linear layers (ConvNeXt's pointwise layers). Depthwise (grouped) convolutions stay frozen: peft adapts a
grouped convolution only when the rank is a multiple of its groups.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn
from torch.utils.hooks import RemovableHandle

from sefmodel.model.backbones.base import Backbone, resolve_layer

# Floor on the variance before its square root: the gradient of sqrt is infinite at 0, and a channel that is
# constant over the map (a dead ReLU) would otherwise turn every gradient into NaN. Values above it are exact.
_MIN_VAR = 1e-10


class CNNBackbone(Backbone):
    """A frozen CNN. Blocks are its stages; the feature is the pooled output map of one stage."""

    lora_groups = ("conv",)
    pools = ("mean", "mean_std")

    def stage_channels(self) -> list[int]:
        """Channels C of each stage's output map, in stage order."""
        raise NotImplementedError

    def final_norm(self, pooled: torch.Tensor) -> torch.Tensor:
        """The model's own norm on the last stage's mean-pooled feature (B, C); identity unless overridden."""
        return pooled

    def feature_dim(self, layer: int = -1, pool: str | None = None) -> int:
        channels = self.stage_channels()[resolve_layer(layer, self.num_layers)]
        return 2 * channels if self._check_pool(pool) == "mean_std" else channels

    @property
    def hidden_size(self) -> int:
        """Width of the default feature (the last stage's mean-pooled map)."""
        return self.feature_dim()

    def _in_lora_group(self, group: str, path: str, module: nn.Module) -> bool:
        if isinstance(module, nn.Linear):  # a 1x1 convolution on channels-last maps
            return True
        # peft's LoRA convolution copies kernel, stride and padding but not dilation, so dilated ones stay frozen
        return isinstance(module, nn.Conv2d) and module.groups == 1 and module.dilation == (1, 1)

    def adapters_injected(self) -> None:
        """Give each peft wrapper of a convolution its convolution's geometry: model code that reads
        ``conv.stride`` / ``kernel_size`` / ``dilation`` / ``padding`` from the layer it calls (MobileNetV2's
        TensorFlow-style padding does) would otherwise fail on the wrapper."""
        for module in self.model.modules():
            if isinstance(module, BaseTunerLayer) and isinstance(module.get_base_layer(), nn.Conv2d):
                base = module.get_base_layer()
                for attr in ("stride", "kernel_size", "dilation", "padding"):
                    setattr(module, attr, getattr(base, attr))

    def feature(self, hidden: torch.Tensor, layer: int = -1, pool: str | None = None) -> torch.Tensor:
        """Stage ``layer``'s output map (B, C, h, w) -> (B, C) for ``"mean"``, (B, 2C) ``[mean, std]`` for
        ``"mean_std"`` (population standard deviation over the h * w positions)."""
        pool = self._check_pool(pool)
        mean = hidden.mean(dim=(-2, -1))
        if resolve_layer(layer, self.num_layers) == self.num_layers - 1:
            mean = self.final_norm(mean)
        if pool == "mean":
            return mean
        std = hidden.var(dim=(-2, -1), correction=0).clamp_min(_MIN_VAR).sqrt()
        return torch.cat([mean, std], dim=-1)

    def spatial(self, hidden: torch.Tensor, image_size: int) -> torch.Tensor:
        """Feature map (B, C, h, w) -> (B, h, w, C)."""
        return hidden.permute(0, 2, 3, 1)

    def cam_hook(self, layer: int, fn: Callable[[torch.Tensor], None]) -> RemovableHandle:
        """Capture stage ``layer``'s *output* map, the one its feature pools (classic Grad-CAM on the last
        convolutional map of the explained stage)."""
        return self.layers()[layer].register_forward_hook(lambda module, args, output: fn(output))
