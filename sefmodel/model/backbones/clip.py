"""CLIP's vision tower as a frozen backbone."""

from __future__ import annotations

import torch
from transformers import CLIPVisionConfig, CLIPVisionModel

from sefmodel.model.backbones.base import ViTBackbone
from sefmodel.model.backbones.registry import register_backbone


class ClipBackbone(ViTBackbone):
    """CLIP ViT image encoder. Feature: the CLS token after ``post_layernorm`` (``pooler_output``).

    Inputs at the checkpoint's size (224 for ViT-L/14) use the stored position embeddings; other sizes that
    are a multiple of the patch size interpolate them.
    """

    name = "clip"
    default_model_id = "openai/clip-vit-large-patch14"
    model_class = CLIPVisionModel
    config_class = CLIPVisionConfig
    image_mean = (0.48145466, 0.4578275, 0.40821073)  # OpenAI CLIP statistics
    image_std = (0.26862954, 0.26130258, 0.27577711)

    def _vision(self) -> torch.nn.Module:
        # Older transformers wrap the tower in ``vision_model``; newer ones put its parts on the model itself.
        return getattr(self.model, "vision_model", self.model)

    def embed(self, pixel_values: torch.Tensor) -> torch.Tensor:
        vision = self._vision()
        height, width = pixel_values.shape[-2:]
        native = height == width == self.input_size
        hidden = vision.embeddings(pixel_values, interpolate_pos_encoding=not native)
        return vision.pre_layrnorm(hidden)

    def pool(self, hidden: torch.Tensor) -> torch.Tensor:
        return self._vision().post_layernorm(hidden[:, 0])


register_backbone("clip", ClipBackbone)
