"""The frozen vision-transformer backbone every expert shares.

A backbone wraps one transformers model and exposes the three steps the detector needs to split a forward pass
anywhere: ``embed`` (pixels -> token sequence), ``run_blocks`` (token sequence through blocks
``start..stop-1``)
and ``pool`` (token sequence -> final-normed CLS feature). Running them in order gives exactly the model's own
CLS feature; running the early blocks once and the late blocks once per expert is what the shared-trunk mode
of the fused detector does.

A new family is one file: subclass :class:`ViTBackbone`, set the class attributes, implement ``embed`` and
``pool`` (and ``layers`` if the encoder's block list is not found by the default lookup), then call
``register_backbone("name", MyBackbone)``.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, ClassVar

import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel

# Module-path fragments that mark a Linear inside a block as attention or MLP. Matching on the path rather
# than on fixed leaf names keeps LoRA targeting stable across transformers releases that rename the
# projections (e.g. DINOv2's ``attention.attention.query`` became ``attention.q_proj``).
_GROUP_MARKERS: dict[str, tuple[str, ...]] = {
    "attention": ("attention", "attn"),
    "mlp": ("mlp", "ffn", "feed_forward"),
}


class ViTBackbone(nn.Module):
    """A frozen ViT from transformers with split-able forward.

    Subclasses set:
        name: registry name, e.g. ``"dinov2"``.
        default_model_id: the Hub id used when a config names the family but no id.
        model_class / config_class: the transformers classes to load or build.
        image_mean / image_std: per-channel normalisation of the checkpoints (RGB inputs in [0, 1]).

    Attributes:
        model: the wrapped transformers model; every parameter is frozen (``requires_grad=False``).
    """

    name: ClassVar[str] = ""
    default_model_id: ClassVar[str] = ""
    model_class: ClassVar[type[PreTrainedModel]]
    config_class: ClassVar[type[PretrainedConfig]]
    image_mean: ClassVar[tuple[float, float, float]] = (0.485, 0.456, 0.406)
    image_std: ClassVar[tuple[float, float, float]] = (0.229, 0.224, 0.225)

    def __init__(self, model: PreTrainedModel) -> None:
        super().__init__()
        self.model = model
        self.model.requires_grad_(False)
        self.model.eval()

    # ---- construction --------------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, model_id: str | None = None, revision: str | None = None, **kwargs: Any) -> ViTBackbone:
        """Load pretrained weights by Hub id or local folder (safetensors only; pickles are refused).

        Args:
            model_id: Hub repo id or local directory; ``None`` means ``default_model_id``.
            revision: branch, tag or commit to pin (Hub only).
            kwargs: passed to ``model_class.from_pretrained`` (``cache_dir``, ``token``,
            ``local_files_only``...).
        """
        kwargs.setdefault("use_safetensors", True)  # transformers would otherwise fall back to torch.load
        model = cls.model_class.from_pretrained(model_id or cls.default_model_id, revision=revision, **kwargs)
        return cls(model)

    @classmethod
    def from_config(cls, config: dict[str, Any] | PretrainedConfig) -> ViTBackbone:
        """Build a randomly initialised backbone from a transformers config (tests, benchmarks; no download).

        Args:
            config: a config object or the keyword dict of ``config_class`` (``model_type`` may be included).
        """
        if isinstance(config, dict):
            config = cls.config_class(**{k: v for k, v in config.items() if k != "model_type"})
        return cls(cls.model_class(config))

    def config_dict(self) -> dict[str, Any]:
        """The wrapped model's config as a JSON-able dict, enough for :meth:`from_config`."""
        return self.model.config.to_diff_dict()

    @property
    def commit_hash(self) -> str | None:
        """The Hub commit the weights came from, if transformers recorded it (``None`` for local folders)."""
        return getattr(self.model.config, "_commit_hash", None)

    # ---- geometry ------------------------------------------------------------------------------------------

    @property
    def hidden_size(self) -> int:
        """Width D of the CLS feature."""
        return int(self.model.config.hidden_size)

    @property
    def num_layers(self) -> int:
        """Number of transformer blocks."""
        return len(self.layers())

    @property
    def patch_size(self) -> int:
        ps = self.model.config.patch_size
        return int(ps[0] if isinstance(ps, (tuple, list)) else ps)

    @property
    def input_size(self) -> int:
        """Default square input side in pixels (the size the checkpoint was trained at)."""
        size = self.model.config.image_size
        return int(size[0] if isinstance(size, (tuple, list)) else size)

    # ---- split forward -------------------------------------------------------------------------------------

    def layers(self) -> nn.ModuleList:
        """The encoder's blocks: ``encoder.layer`` or ``encoder.layers``, under ``vision_model`` or not."""
        root = getattr(self.model, "vision_model", self.model)
        # Some transformers releases keep the blocks under ``encoder``, others directly on the model.
        for parent in (getattr(root, "encoder", None), root):
            for attr in ("layer", "layers"):
                if isinstance(getattr(parent, attr, None), nn.ModuleList):
                    return getattr(parent, attr)
        raise TypeError(
            f"{type(self).__name__}: cannot find the block list of {type(root).__name__}; override layers()"
        )

    def layers_path(self) -> str:
        """Dotted module path of :meth:`layers` inside ``self.model`` (for LoRA target regexes)."""
        layers = self.layers()
        for name, module in self.model.named_modules():
            if module is layers:
                return name
        raise RuntimeError("block list not found among the model's modules")

    def linear_targets(self, group: str) -> list[str]:
        """Paths, relative to one block, of the Linear layers in ``group`` (``"attention"`` or ``"mlp"``)."""
        if group not in _GROUP_MARKERS:
            raise ValueError(f"unknown LoRA target group {group!r}; known: {sorted(_GROUP_MARKERS)}")
        markers = _GROUP_MARKERS[group]
        block = self.layers()[0]
        names = []
        for name, module in block.named_modules():
            # Linear layers of the original model, also once LoRA wraps them; never LoRA's own sub-Linears.
            if isinstance(module, BaseTunerLayer):
                is_target = isinstance(module.get_base_layer(), nn.Linear)
            else:
                is_target = isinstance(module, nn.Linear) and "lora_" not in name and "base_layer" not in name
            if is_target:
                parts = name.lower().split(".")
                if any(m in part for part in parts for m in markers):
                    names.append(name)
        if not names:
            raise ValueError(f"{type(self).__name__}: no Linear layers found for group {group!r}")
        return names

    def embed(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Pixels (B, 3, H, W), normalised, H and W multiples of the patch size -> tokens (B, T, D)."""
        raise NotImplementedError

    def run_blocks(self, hidden: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """Run tokens (B, T, D) through blocks ``start .. stop-1``; returns (B, T, D)."""
        for block in self.layers()[start:stop]:
            out = block(hidden, *[None] * _required_extra_args(type(block)))
            hidden = out[0] if isinstance(out, tuple) else out  # older transformers return a tuple
        return hidden

    def pool(self, hidden: torch.Tensor) -> torch.Tensor:
        """Tokens (B, T, D) -> CLS feature (B, D) with the model's final norm applied."""
        raise NotImplementedError

    def forward(self, pixel_values: torch.Tensor, layer: int = -1) -> torch.Tensor:
        """CLS feature (B, D) after block ``layer`` (0-based; negative counts from the last block)."""
        stop = resolve_layer(layer, self.num_layers) + 1
        return self.pool(self.run_blocks(self.embed(pixel_values), 0, stop))


def resolve_layer(layer: int, num_layers: int) -> int:
    """Map a possibly negative block index to ``0 .. num_layers-1``; raises on out-of-range."""
    if not -num_layers <= layer < num_layers:
        raise ValueError(f"feature layer {layer} out of range for a backbone with {num_layers} blocks")
    return layer % num_layers


@functools.cache
def _required_extra_args(block_type: type) -> int:
    """How many required positional arguments a block's forward takes after the hidden states (masks, passed as
    None). It differs across transformers releases: DINOv2 blocks took (hidden, head_mask), now take (hidden) or
    (hidden, attention_mask=None); CLIP blocks require (hidden, attention_mask[, causal_attention_mask])."""
    params = list(inspect.signature(block_type.forward).parameters.values())[2:]  # skip self, hidden_states
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return sum(1 for p in params if p.kind in positional and p.default is inspect.Parameter.empty)
