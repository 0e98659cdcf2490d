"""The frozen backbone every expert shares, split into steps the detector can run piecewise.

A backbone wraps one transformers model and exposes the steps the detector needs to split a forward pass
anywhere: ``embed`` (pixels -> the first block's input), ``run_blocks`` (through blocks ``start..stop-1``) and
``feature`` (one block's output -> the feature vector). Running them in order gives exactly the model's own
feature; running the early blocks once and the late blocks once per expert is what the shared-trunk mode of the
fused detector does.

Two kinds share this interface: :class:`ViTBackbone` (blocks are transformer layers, the feature is the CLS
token; here) and :class:`~sefmodel.model.backbones.cnn.CNNBackbone` (blocks are stages, the feature is the pooled
feature map; in ``cnn.py``). A new family is one file: subclass either, set the class attributes, implement the
few family-specific steps, then call ``register_backbone("name", MyBackbone)``.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn
from torch.utils.hooks import RemovableHandle
from transformers import PretrainedConfig, PreTrainedModel
from transformers.utils import logging as hf_logging

logger = logging.getLogger(__name__)

# Module-path fragments that mark a Linear inside a block as attention or MLP. Matching on the path rather
# than on fixed leaf names keeps LoRA targeting stable across transformers releases that rename the
# projections (e.g. DINOv2's ``attention.attention.query`` became ``attention.q_proj``).
_GROUP_MARKERS: dict[str, tuple[str, ...]] = {
    "attention": ("attention", "attn"),
    "mlp": ("mlp", "ffn", "feed_forward"),
}


class Backbone(nn.Module):
    """A frozen vision model from transformers with a split-able forward.

    Subclasses set:
        name: registry name, e.g. ``"dinov2"``.
        default_model_id: the Hub id used when a config names the family but no id.
        model_class / config_class: the transformers classes to load or build.
        image_mean / image_std: per-channel normalisation of the checkpoints (RGB inputs in [0, 1]).
        lora_groups: the LoRA target groups this family knows; a detector adapts all of them by default.
        pools: how a block's output can become the feature; the first is the default.

    Attributes:
        model: the wrapped transformers model; every parameter is frozen (``requires_grad=False``).
    """

    name: ClassVar[str] = ""
    default_model_id: ClassVar[str] = ""
    model_class: ClassVar[type[PreTrainedModel]]
    config_class: ClassVar[type[PretrainedConfig]]
    image_mean: ClassVar[tuple[float, float, float]] = (0.485, 0.456, 0.406)
    image_std: ClassVar[tuple[float, float, float]] = (0.229, 0.224, 0.225)
    lora_groups: ClassVar[tuple[str, ...]] = ()
    pools: ClassVar[tuple[str, ...]] = ()

    def __init__(self, model: PreTrainedModel) -> None:
        super().__init__()
        self.model = model
        self.model.requires_grad_(False)
        self.model.eval()

    # ---- construction --------------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, model_id: str | None = None, revision: str | None = None, **kwargs: Any) -> Backbone:
        """Load pretrained weights by Hub id or local folder (safetensors only; pickles are refused).

        Args:
            model_id: Hub repo id or local directory; ``None`` means ``default_model_id``.
            revision: branch, tag or commit to pin (Hub only).
            kwargs: passed to ``model_class.from_pretrained`` (``cache_dir``, ``token``,
            ``local_files_only``...).
        """
        kwargs.setdefault("use_safetensors", True)  # transformers would otherwise fall back to torch.load
        model_id = model_id or cls.default_model_id
        if _looks_local(model_id) and not Path(model_id).expanduser().is_dir():
            # transformers would take it for a Hub id and fail with a message about repo id syntax
            raise FileNotFoundError(f"backbone folder {model_id!r} not found (Hub ids are NAME or OWNER/NAME)")
        # transformers prints a table of every checkpoint key the backbone does not use (an ImageNet head, CLIP's
        # text tower): expected for a backbone, so it is kept quiet; weights the checkpoint lacks are what matters.
        verbosity, bar = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()  # a bar for a load that takes a fraction of a second
        try:
            model, info = cls.model_class.from_pretrained(
                model_id, revision=revision, output_loading_info=True, **kwargs
            )
        finally:
            hf_logging.set_verbosity(verbosity)
            if bar:
                hf_logging.enable_progress_bar()
        if info.get("missing_keys"):
            missing = sorted(info["missing_keys"])
            logger.warning(
                "%s: %d backbone weights are not in %s and stay randomly initialised (e.g. %s)",
                cls.__name__, len(missing), model_id, ", ".join(missing[:3]),
            )  # fmt: skip
        return cls(model)

    @classmethod
    def from_config(cls, config: dict[str, Any] | PretrainedConfig) -> Backbone:
        """Build a randomly initialised backbone from a transformers config (tests, benchmarks; no download).

        Args:
            config: a config object or the keyword dict of ``config_class`` (``model_type`` may be included).
        """
        if isinstance(config, dict):
            config = cls.config_class(**{k: v for k, v in config.items() if k != "model_type"})
        return cls(cls.model_class(config))

    @property
    def commit_hash(self) -> str | None:
        """The Hub commit the weights came from, if transformers recorded it (``None`` for local folders)."""
        return getattr(self.model.config, "_commit_hash", None)

    # ---- geometry ------------------------------------------------------------------------------------------

    @property
    def num_layers(self) -> int:
        """Number of blocks (transformer layers of a ViT, stages of a CNN)."""
        return len(self.layers())

    @property
    def patch_size(self) -> int:
        """Input sides must be a multiple of this (a ViT's patch side, a CNN's total stride)."""
        raise NotImplementedError

    @property
    def input_size(self) -> int:
        """Default square input side in pixels (the size the checkpoint was trained at)."""
        size = getattr(self.model.config, "image_size", 224)
        return int(size[0] if isinstance(size, (tuple, list)) else size)

    def feature_dim(self, layer: int = -1, pool: str | None = None) -> int:
        """Width of the feature that :meth:`feature` returns for block ``layer`` pooled by ``pool``."""
        raise NotImplementedError

    # ---- blocks and LoRA targets ---------------------------------------------------------------------------

    def layers(self) -> Sequence[nn.Module]:
        """The blocks, in forward order; all of them are submodules of ``self.model``."""
        raise NotImplementedError

    def block_names(self) -> list[str]:
        """Dotted module path of each block inside ``self.model``."""
        paths = {id(module): name for name, module in self.model.named_modules()}
        try:
            return [paths[id(block)] for block in self.layers()]
        except KeyError:
            raise RuntimeError(f"{type(self).__name__}: a block is not a submodule of the model") from None

    def lora_targets(self, group: str, block: int) -> list[str]:
        """Module paths (inside ``self.model``) of the layers of ``group`` in block ``block``: what peft adapts.

        Layers already wrapped by peft count as their base layer; LoRA's own sub-layers never count.
        """
        if group not in self.lora_groups:
            raise ValueError(
                f"unknown LoRA target group {group!r} for backbone {self.name!r}; known: {', '.join(self.lora_groups)}"
            )
        prefix = self.block_names()[block]
        names = []
        for name, module in self.layers()[block].named_modules():
            if isinstance(module, BaseTunerLayer):
                base = module.get_base_layer()
            elif "lora_" in name or "base_layer" in name:
                continue
            else:
                base = module
            if self._in_lora_group(group, name, base):
                names.append(f"{prefix}.{name}")
        if not names:
            raise ValueError(f"{type(self).__name__}: no layers of group {group!r} in block {block}")
        return names

    def _in_lora_group(self, group: str, path: str, module: nn.Module) -> bool:
        """Whether ``module`` (at ``path`` inside its block, unwrapped from peft) belongs to ``group``."""
        raise NotImplementedError

    def adapters_injected(self) -> None:
        """Called once peft has wrapped the target layers; a family whose code reads attributes of its layers that
        peft's wrappers lack fixes them here. Default: nothing to do."""

    # ---- split forward -------------------------------------------------------------------------------------

    def embed(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Pixels (B, 3, H, W), normalised, H and W multiples of ``patch_size`` -> the first block's input."""
        raise NotImplementedError

    def run_blocks(self, hidden: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """Run ``hidden`` through blocks ``start .. stop-1``."""
        for block in self.layers()[start:stop]:
            hidden = block(hidden)
        return hidden

    def feature(self, hidden: torch.Tensor, layer: int = -1, pool: str | None = None) -> torch.Tensor:
        """Block ``layer``'s output -> feature (B, :meth:`feature_dim`) pooled by ``pool`` (default ``pools[0]``)."""
        raise NotImplementedError

    def spatial(self, hidden: torch.Tensor, image_size: int) -> torch.Tensor:
        """A block's input or output for a square ``image_size`` crop -> its spatial map (B, h, w, C) (Grad-CAM)."""
        raise NotImplementedError

    def cam_hook(self, layer: int, fn: Callable[[torch.Tensor], None]) -> RemovableHandle:
        """Call ``fn`` with the tensor Grad-CAM explains at block ``layer`` on every forward; remove the handle
        when done."""
        raise NotImplementedError

    def forward(self, pixel_values: torch.Tensor, layer: int = -1, pool: str | None = None) -> torch.Tensor:
        """Feature (B, D) of block ``layer`` (0-based; negative counts from the last block)."""
        layer = resolve_layer(layer, self.num_layers)
        return self.feature(self.run_blocks(self.embed(pixel_values), 0, layer + 1), layer, pool)

    def _check_pool(self, pool: str | None) -> str:
        pool = self.pools[0] if pool is None else pool
        if pool not in self.pools:
            raise ValueError(f"backbone {self.name!r} pools features by {', '.join(self.pools)}, not {pool!r}")
        return pool


class ViTBackbone(Backbone):
    """A frozen ViT. Blocks are its transformer layers; the feature is the CLS token, final norm applied.

    Subclasses implement ``embed`` (pixels -> tokens (B, T, D)) and ``pool`` (tokens -> final-normed CLS (B, D)),
    and ``layers`` if the encoder's block list is not found by the default lookup.
    """

    lora_groups = ("attention", "mlp")
    pools = ("cls",)

    @property
    def hidden_size(self) -> int:
        """Width D of the CLS feature."""
        return int(self.model.config.hidden_size)

    @property
    def patch_size(self) -> int:
        ps = self.model.config.patch_size
        return int(ps[0] if isinstance(ps, (tuple, list)) else ps)

    def feature_dim(self, layer: int = -1, pool: str | None = None) -> int:
        self._check_pool(pool)
        return self.hidden_size

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

    def _in_lora_group(self, group: str, path: str, module: nn.Module) -> bool:
        # a Linear whose path inside the block names the group, e.g. attention.q_proj or mlp.fc1
        parts = path.lower().split(".")
        return isinstance(module, nn.Linear) and any(m in part for part in parts for m in _GROUP_MARKERS[group])

    def run_blocks(self, hidden: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """Run tokens (B, T, D) through blocks ``start .. stop-1``; returns (B, T, D)."""
        for block in self.layers()[start:stop]:
            out = block(hidden, *[None] * _required_extra_args(type(block)))
            hidden = out[0] if isinstance(out, tuple) else out  # older transformers return a tuple
        return hidden

    def pool(self, hidden: torch.Tensor) -> torch.Tensor:
        """Tokens (B, T, D) -> CLS feature (B, D) with the model's final norm applied."""
        raise NotImplementedError

    def feature(self, hidden: torch.Tensor, layer: int = -1, pool: str | None = None) -> torch.Tensor:
        """Tokens (B, T, D) after any block -> its final-normed CLS token (B, D)."""
        self._check_pool(pool)
        return self.pool(hidden)

    def spatial(self, hidden: torch.Tensor, image_size: int) -> torch.Tensor:
        """Tokens (B, T, D) -> patch tokens on their grid (B, G, G, D), G = image_size / patch size (the CLS and
        register tokens come first and are dropped)."""
        grid = image_size // self.patch_size
        return hidden[:, -grid * grid :].reshape(hidden.shape[0], grid, grid, hidden.shape[-1])

    def cam_hook(self, layer: int, fn: Callable[[torch.Tensor], None]) -> RemovableHandle:
        """Capture block ``layer``'s *input* tokens: the CLS token at a block's output attends to the patch tokens
        at its input, so that is where its gradient reaches them."""
        return self.layers()[layer].register_forward_pre_hook(lambda module, args: fn(args[0]))


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


def _looks_local(model_id: str) -> bool:
    """A path rather than a Hub id: starts like one, or has more than one ``/`` (Hub ids have at most one)."""
    return model_id.startswith((".", "/", "~")) or "\\" in model_id or model_id.count("/") > 1
