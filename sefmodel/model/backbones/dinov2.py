"""DINOv2 (with and without register tokens) as a frozen backbone."""

from __future__ import annotations

import torch
from transformers import Dinov2Config, Dinov2Model, Dinov2WithRegistersConfig, Dinov2WithRegistersModel

from sefmodel.model.backbones.base import ViTBackbone
from sefmodel.model.backbones.registry import register_backbone


class Dinov2Backbone(ViTBackbone):
    """DINOv2 ViT. Feature: the CLS token after the final LayerNorm (what ``pooler_output`` returns).

    Position embeddings are interpolated, so any input side that is a multiple of the patch size works.
    """

    name = "dinov2"
    default_model_id = "facebook/dinov2-large"
    model_class = Dinov2Model
    config_class = Dinov2Config
    image_mean = (0.485, 0.456, 0.406)  # ImageNet statistics, as in the DINOv2 image processor
    image_std = (0.229, 0.224, 0.225)

    @property
    def input_size(self) -> int:
        """24 patches a side: 336 px with the released 14-px patches (the training crop of DESIGN §7).

        The checkpoints' ``image_size`` (518) only sizes the stored position grid, which is interpolated.
        """
        return 24 * self.patch_size

    def embed(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model.embeddings(pixel_values)

    def pool(self, hidden: torch.Tensor) -> torch.Tensor:
        # LayerNorm is per token: norming the CLS token alone equals norming the sequence, then token 0.
        return self.model.layernorm(hidden[:, 0])


class Dinov2RegistersBackbone(Dinov2Backbone):
    """DINOv2 with register tokens (Darcet et al. 2024). The CLS token stays at position 0."""

    name = "dinov2_registers"
    default_model_id = "facebook/dinov2-with-registers-large"
    model_class = Dinov2WithRegistersModel
    config_class = Dinov2WithRegistersConfig


register_backbone("dinov2", Dinov2Backbone)
register_backbone("dinov2_registers", Dinov2RegistersBackbone)
