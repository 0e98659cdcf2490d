"""LoRA settings for the experts and their translation into a peft ``LoraConfig``.

Which blocks carry LoRA matters for cost: when every expert's LoRA sits only in the last k blocks, the blocks
before them compute the same thing for every expert and the fused detector runs them once (shared trunk).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from peft import LoraConfig

from .backbones.base import ViTBackbone
from .fields import from_known_fields

TARGET_GROUPS = ("attention", "mlp")


@dataclass
class LoraSettings:
    """LoRA adapter settings shared by all experts of a detector."""

    rank: int = 8
    """LoRA rank r (>= 1)."""
    alpha: float = 16.0
    """LoRA scaling numerator; the update is scaled by alpha / rank."""
    dropout: float = 0.0
    """Dropout on the LoRA branch input during expert training, in [0, 1)."""
    targets: list[str] = field(default_factory=lambda: list(TARGET_GROUPS))
    """Projection groups to adapt: any of "attention", "mlp"."""
    blocks: str | list[int] = "all"
    """Blocks that get LoRA: "all", "last:K" (the last K blocks), or a list of indices (negative from end)."""

    def __post_init__(self) -> None:
        if not isinstance(self.rank, int) or self.rank < 1:
            raise ValueError(f"lora.rank must be an integer >= 1, got {self.rank!r}")
        if not self.alpha > 0:
            raise ValueError(f"lora.alpha must be > 0, got {self.alpha!r}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"lora.dropout must be in [0, 1), got {self.dropout!r}")
        self.targets = list(self.targets)
        unknown = [t for t in self.targets if t not in TARGET_GROUPS]
        if not self.targets or unknown:
            raise ValueError(f"lora.targets must be a non-empty subset of {list(TARGET_GROUPS)}, got {self.targets}")
        if isinstance(self.blocks, str):
            if self.blocks != "all" and not re.fullmatch(r"last:[1-9]\d*", self.blocks):
                raise ValueError(f'lora.blocks must be "all", "last:K" (K >= 1) or a list of ints, got {self.blocks!r}')
        else:
            self.blocks = list(self.blocks)
            if not self.blocks or not all(isinstance(b, int) and not isinstance(b, bool) for b in self.blocks):
                raise ValueError(f"lora.blocks as a list must hold block indices (ints), got {self.blocks!r}")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LoraSettings:
        return from_known_fields(cls, data, "lora settings")

    def block_indices(self, num_layers: int) -> list[int]:
        """Resolved, sorted, de-duplicated block indices in ``0 .. num_layers-1``."""
        if self.blocks == "all":
            return list(range(num_layers))
        if isinstance(self.blocks, str):
            k = int(self.blocks.split(":")[1])
            if k > num_layers:
                raise ValueError(f"lora.blocks={self.blocks!r} but the backbone has only {num_layers} blocks")
            return list(range(num_layers - k, num_layers))
        out = set()
        for b in self.blocks:
            if not -num_layers <= b < num_layers:
                raise ValueError(f"lora block {b} out of range for a backbone with {num_layers} blocks")
            out.add(b % num_layers)
        return sorted(out)

    def target_regex(self, backbone: ViTBackbone) -> str:
        """A regex that peft full-matches against module names of ``backbone.model``: the chosen Linear layers
        of the chosen blocks, e.g. ``encoder\\.layer\\.(10|11)\\.(attention\\.q_proj|...)``."""
        blocks = "|".join(str(i) for i in self.block_indices(backbone.num_layers))
        leaves = [name for group in self.targets for name in backbone.linear_targets(group)]
        leaf_rx = "|".join(re.escape(n) for n in leaves)
        return rf"{re.escape(backbone.layers_path())}\.({blocks})\.({leaf_rx})"

    def peft_config(self, backbone: ViTBackbone) -> LoraConfig:
        """The peft config for one expert's adapter on ``backbone`` (B initialised to zero: a fresh adapter
        is the identity, so a fresh expert sees exactly the frozen backbone's features)."""
        return LoraConfig(
            r=self.rank,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            target_modules=self.target_regex(backbone),
            init_lora_weights=True,
            bias="none",
        )
