"""LoRA settings for the experts and their translation into a peft ``LoraConfig``.

Which blocks carry LoRA matters for cost: when every expert's LoRA sits only in the last k blocks before the
feature, the blocks before them compute the same thing for every expert and the fused detector runs them once
(shared trunk). A block is a transformer layer of a ViT or a stage of a CNN.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sefcore.fields import doc
from sefmodel.model.dictconfig import from_known_fields

if TYPE_CHECKING:  # peft and the backbones load with a model, not when `sefmodel train --help` reads the settings
    from peft import LoraConfig

    from sefmodel.model.backbones.base import Backbone


@dataclass
class LoraSettings:
    """LoRA adapter settings shared by all experts of a detector."""

    rank: int = field(default=8, metadata=doc("LoRA rank r (>= 1)."))
    alpha: float = field(default=16.0, metadata=doc("LoRA scaling numerator; the update is scaled by alpha / rank."))
    dropout: float = field(
        default=0.0, metadata=doc("Dropout on the LoRA branch input during expert training, in [0, 1).")
    )
    targets: list[str] | None = field(
        default=None,
        metadata=doc(
            'Layer groups to adapt; None = every group of the backbone family: "attention" and "mlp" (ViTs: their '
            'Linear projections), "conv" (CNNs: dense convolutions).'
        ),
    )
    blocks: str | list[int] = field(
        default="all",
        metadata=doc(
            'Blocks that get LoRA: "all" (every block up to the feature block), "last:K" (the K blocks ending at the '
            "feature block), or a list of block indices (negative from the backbone's last block)."
        ),
    )

    def __post_init__(self) -> None:
        if not isinstance(self.rank, int) or self.rank < 1:
            raise ValueError(f"lora.rank must be an integer >= 1, got {self.rank!r}")
        if not self.alpha > 0:
            raise ValueError(f"lora.alpha must be > 0, got {self.alpha!r}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"lora.dropout must be in [0, 1), got {self.dropout!r}")
        if self.targets is not None:
            if not isinstance(self.targets, (list, tuple)) or not all(isinstance(t, str) for t in self.targets):
                raise ValueError(f"lora.targets must be a list of group names, got {self.targets!r}")
            self.targets = list(self.targets)
            if not self.targets or len(set(self.targets)) != len(self.targets):
                raise ValueError(f"lora.targets must name at least one group, each once, got {self.targets}")
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

    def block_indices(self, num_layers: int, feature_block: int | None = None) -> list[int]:
        """Resolved, sorted, de-duplicated block indices in ``0 .. num_layers-1``.

        ``"all"`` and ``"last:K"`` count back from ``feature_block`` (default: the last block), since blocks after
        the feature cannot change it; a list is resolved against the whole backbone.
        """
        top = num_layers if feature_block is None else feature_block + 1
        if self.blocks == "all":
            return list(range(top))
        if isinstance(self.blocks, str):
            k = int(self.blocks.split(":")[1])
            if k > top:
                where = "" if top == num_layers else " up to the feature block"
                raise ValueError(f"lora.blocks={self.blocks!r} but the backbone has only {top} blocks{where}")
            return list(range(top - k, top))
        out = set()
        for b in self.blocks:
            if not -num_layers <= b < num_layers:
                raise ValueError(f"lora block {b} out of range for a backbone with {num_layers} blocks")
            out.add(b % num_layers)
        return sorted(out)

    def target_modules(self, backbone: Backbone, feature_block: int | None = None) -> list[str]:
        """Module paths inside ``backbone.model`` that get LoRA: the chosen groups' layers of the chosen blocks."""
        groups = backbone.lora_groups if self.targets is None else self.targets
        blocks = self.block_indices(backbone.num_layers, feature_block)
        return [name for block in blocks for group in groups for name in backbone.lora_targets(group, block)]

    def peft_config(self, backbone: Backbone, feature_block: int | None = None) -> LoraConfig:
        """The peft config for one expert's adapter on ``backbone`` (B initialised to zero: a fresh adapter
        is the identity, so a fresh expert sees exactly the frozen backbone's features)."""
        # a regex peft full-matches against module names; exact paths, so nothing else can match
        from peft import LoraConfig

        pattern = "|".join(re.escape(name) for name in self.target_modules(backbone, feature_block))
        return LoraConfig(
            r=self.rank,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            target_modules=f"(?:{pattern})",
            init_lora_weights=True,
            bias="none",
        )
