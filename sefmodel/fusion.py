"""Fusion heads: how the frozen experts' features become one real/fake logit.

Every head takes the stacked expert features ``(B, E, D)`` and returns a dict with ``logits`` (B,) (sigmoid ->
probability that the image is generated) and ``fused`` (the classifier's input). ``sef`` also returns
``gate_weights`` (B, E), a softmax distribution over experts per image.

A new head is one class with the constructor ``(num_experts, dim, gate_hidden)`` plus one ``register_fusion``
line. All parameters of a head are trained in the fusion stage; the experts stay frozen.
"""

from __future__ import annotations

import torch
from torch import nn

_FUSIONS: dict[str, type[nn.Module]] = {}


def register_fusion(name: str, cls: type[nn.Module]) -> type[nn.Module]:
    """Register a fusion head under ``name``; raises ``ValueError`` on a duplicate name."""
    if name in _FUSIONS:
        raise ValueError(f"fusion {name!r} is already registered ({_FUSIONS[name].__name__})")
    _FUSIONS[name] = cls
    return cls


def get_fusion_class(name: str) -> type[nn.Module]:
    """The head registered as ``name``; an unknown name raises ``KeyError`` listing the known ones."""
    try:
        return _FUSIONS[name]
    except KeyError:
        raise KeyError(f"unknown fusion {name!r}; known: {', '.join(known_fusions())}") from None


def known_fusions() -> list[str]:
    return sorted(_FUSIONS)


class Gate(nn.Module):
    """Gating network: concatenated expert features (B, E*D) -> softmax weights (B, E), rows sum to 1.

    ``hidden=0`` gives a linear gate, otherwise Linear -> GELU -> Linear. The output layer starts at zero, so
    an untrained gate weighs experts uniformly (SEF starts as mean fusion).
    """

    def __init__(self, num_experts: int, dim: int, hidden: int = 256) -> None:
        super().__init__()
        in_dim = num_experts * dim
        if hidden > 0:
            self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, num_experts))
        else:
            self.net = nn.Sequential(nn.Linear(in_dim, num_experts))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features.flatten(1)).softmax(dim=-1)


class SEFFusion(nn.Module):
    """Separate Expert Fusion: per-image gate weights w (B, E); classifier on sum_e w_e * f_e (B, D)."""

    def __init__(self, num_experts: int, dim: int, gate_hidden: int = 256) -> None:
        super().__init__()
        self.gate = Gate(num_experts, dim, gate_hidden)
        self.classifier = nn.Linear(dim, 1)

    def forward(self, features: torch.Tensor, gate_weights: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """features (B, E, D); ``gate_weights`` (B, E) overrides the gate (analysis: force one expert)."""
        weights = self.gate(features) if gate_weights is None else gate_weights.to(features.dtype)
        fused = (weights.unsqueeze(-1) * features).sum(dim=1)
        return {"logits": self.classifier(fused).squeeze(-1), "fused": fused, "gate_weights": weights}


class MeanFusion(nn.Module):
    """Baseline: classifier on the plain mean of the expert features."""

    def __init__(self, num_experts: int, dim: int, gate_hidden: int = 0) -> None:
        super().__init__()
        self.classifier = nn.Linear(dim, 1)

    def forward(self, features: torch.Tensor, gate_weights: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        if gate_weights is not None:
            raise ValueError("mean fusion has no gate to override")
        fused = features.mean(dim=1)
        return {"logits": self.classifier(fused).squeeze(-1), "fused": fused}


class ConcatFusion(nn.Module):
    """Baseline: classifier on the concatenated expert features (B, E*D)."""

    def __init__(self, num_experts: int, dim: int, gate_hidden: int = 0) -> None:
        super().__init__()
        self.classifier = nn.Linear(num_experts * dim, 1)

    def forward(self, features: torch.Tensor, gate_weights: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        if gate_weights is not None:
            raise ValueError("concat fusion has no gate to override")
        fused = features.flatten(1)
        return {"logits": self.classifier(fused).squeeze(-1), "fused": fused}


register_fusion("sef", SEFFusion)
register_fusion("mean", MeanFusion)
register_fusion("concat", ConcatFusion)
