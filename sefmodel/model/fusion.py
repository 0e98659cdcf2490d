"""Fusion heads: how the frozen experts become one real/fake logit.

Every head takes the stacked expert features ``(B, E, D)`` and the experts' own logits ``(B, E)`` (each expert's
frozen head on its feature) and returns a dict with ``logits`` (B,) (sigmoid -> probability that the image is
generated). Heads with a gate (``sef``, ``moe``) also return ``gate_weights`` (B, E), a softmax distribution over
experts per image; heads that classify a fused feature return it as ``fused``.

* ``sef``: Separate Expert Fusion as published: a gate weighs the expert features, a classifier scores their
  weighted sum.
* ``moe``: a gate weighs the experts' own logits: the score is sum_e w_e * logit_e, so each expert's knowledge
  (its frozen head) is kept and the gate only chooses whom to trust per image.
* ``stack``: stacking, a logistic regression over the experts' logits (weights and bias learnt).
* ``max`` and ``noisy_or``: fixed rules over the experts' probabilities, nothing to train (controls).
* ``mean``, ``concat``: classifiers on the mean or the concatenation of the expert features (baselines).

A gate sees what ``gate_input`` says: the experts' ``features`` (concatenated), their ``logits``, or ``both``.
A new head is one class with the constructor ``(num_experts, dim, gate_hidden, gate_input)`` plus one
``register_fusion`` line. All parameters of a head are trained in the fusion stage; the experts stay frozen.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

GATE_INPUTS = ("features", "logits", "both")
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
    """Gating network: what ``inputs`` names (expert features (B, E*D), expert logits (B, E) or both) -> softmax
    weights (B, E), rows sum to 1.

    ``hidden=0`` gives a linear gate, otherwise Linear -> GELU -> Linear. The output layer starts at zero, so
    an untrained gate weighs experts uniformly (SEF starts as mean fusion).
    """

    def __init__(self, num_experts: int, dim: int, hidden: int = 256, inputs: str = "features") -> None:
        super().__init__()
        if inputs not in GATE_INPUTS:
            raise ValueError(f"unknown gate input {inputs!r}; known: {', '.join(GATE_INPUTS)}")
        self.inputs = inputs
        in_dim = num_experts * dim * (inputs != "logits") + num_experts * (inputs != "features")
        if hidden > 0:
            self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, num_experts))
        else:
            self.net = nn.Sequential(nn.Linear(in_dim, num_experts))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, features: torch.Tensor, expert_logits: torch.Tensor) -> torch.Tensor:
        parts = {"features": [features.flatten(1)], "logits": [expert_logits], "both": [features.flatten(1),
                 expert_logits]}[self.inputs]  # fmt: skip
        return self.net(torch.cat([p.to(features.dtype) for p in parts], dim=1)).softmax(dim=-1)


def _no_override(name: str, gate_weights: torch.Tensor | None) -> None:
    if gate_weights is not None:
        raise ValueError(f"{name} fusion has no gate to override")


class SEFFusion(nn.Module):
    """Separate Expert Fusion: per-image gate weights w (B, E); classifier on sum_e w_e * f_e (B, D)."""

    has_gate = True

    def __init__(self, num_experts: int, dim: int, gate_hidden: int = 256, gate_input: str = "features") -> None:
        super().__init__()
        self.gate = Gate(num_experts, dim, gate_hidden, gate_input)
        self.classifier = nn.Linear(dim, 1)

    def forward(
        self, features: torch.Tensor, expert_logits: torch.Tensor, gate_weights: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """features (B, E, D), expert_logits (B, E); ``gate_weights`` (B, E) overrides the gate (analysis: force
        one expert)."""
        weights = self.gate(features, expert_logits) if gate_weights is None else gate_weights.to(features.dtype)
        fused = (weights.unsqueeze(-1) * features).sum(dim=1)
        return {"logits": self.classifier(fused).squeeze(-1), "fused": fused, "gate_weights": weights}


class MoEFusion(nn.Module):
    """Mixture of the experts' own judgements: per-image gate weights w (B, E); logit = sum_e w_e * logit_e.

    The experts' heads stay as trained, so where the gate trusts one expert the detector scores what that expert
    scores; the gate alone trains."""

    has_gate = True

    def __init__(self, num_experts: int, dim: int, gate_hidden: int = 256, gate_input: str = "features") -> None:
        super().__init__()
        self.gate = Gate(num_experts, dim, gate_hidden, gate_input)

    def forward(
        self, features: torch.Tensor, expert_logits: torch.Tensor, gate_weights: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        weights = self.gate(features, expert_logits) if gate_weights is None else gate_weights.to(features.dtype)
        return {"logits": (weights * expert_logits.to(weights.dtype)).sum(dim=1), "gate_weights": weights}


class StackFusion(nn.Module):
    """Stacking: a logistic regression over the experts' logits, logit = a . logit_e + b (starts as their sum)."""

    has_gate = False

    def __init__(self, num_experts: int, dim: int, gate_hidden: int = 0, gate_input: str = "features") -> None:
        super().__init__()
        self.classifier = nn.Linear(num_experts, 1)
        nn.init.ones_(self.classifier.weight)
        nn.init.zeros_(self.classifier.bias)

    def forward(
        self, features: torch.Tensor, expert_logits: torch.Tensor, gate_weights: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        _no_override("stack", gate_weights)
        return {"logits": self.classifier(expert_logits.to(self.classifier.weight.dtype)).squeeze(-1)}


class _FixedRule(nn.Module):
    """A fixed rule over the experts' logits (:meth:`rule`): no parameters, no gate, nothing to train."""

    has_gate = False
    name = ""

    def __init__(self, num_experts: int, dim: int, gate_hidden: int = 0, gate_input: str = "features") -> None:
        super().__init__()

    def forward(
        self, features: torch.Tensor, expert_logits: torch.Tensor, gate_weights: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        _no_override(self.name, gate_weights)
        return {"logits": self.rule(expert_logits)}

    @staticmethod
    def rule(expert_logits: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class MaxFusion(_FixedRule):
    """Fixed rule: the most confident expert's logit (P(generated) = max_e p_e)."""

    name = "max"

    @staticmethod
    def rule(expert_logits: torch.Tensor) -> torch.Tensor:
        return expert_logits.max(dim=1).values


class NoisyOrFusion(_FixedRule):
    """Fixed rule: generated unless every expert says real, P(generated) = 1 - prod_e (1 - p_e).

    In logits, stably: with S = sum_e log(1 - p_e) = -sum_e softplus(logit_e), logit = log(-expm1(S)) - S."""

    name = "noisy_or"

    @staticmethod
    def rule(expert_logits: torch.Tensor) -> torch.Tensor:
        s = -F.softplus(expert_logits.float()).sum(dim=1)
        return (torch.log(-torch.expm1(s).clamp_max(-1e-30)) - s).to(expert_logits.dtype)


class MeanFusion(nn.Module):
    """Baseline: classifier on the plain mean of the expert features."""

    has_gate = False

    def __init__(self, num_experts: int, dim: int, gate_hidden: int = 0, gate_input: str = "features") -> None:
        super().__init__()
        self.classifier = nn.Linear(dim, 1)

    def forward(
        self, features: torch.Tensor, expert_logits: torch.Tensor, gate_weights: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        _no_override("mean", gate_weights)
        fused = features.mean(dim=1)
        return {"logits": self.classifier(fused).squeeze(-1), "fused": fused}


class ConcatFusion(nn.Module):
    """Baseline: classifier on the concatenated expert features (B, E*D)."""

    has_gate = False

    def __init__(self, num_experts: int, dim: int, gate_hidden: int = 0, gate_input: str = "features") -> None:
        super().__init__()
        self.classifier = nn.Linear(num_experts * dim, 1)

    def forward(
        self, features: torch.Tensor, expert_logits: torch.Tensor, gate_weights: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        _no_override("concat", gate_weights)
        fused = features.flatten(1)
        return {"logits": self.classifier(fused).squeeze(-1), "fused": fused}


register_fusion("sef", SEFFusion)
register_fusion("moe", MoEFusion)
register_fusion("stack", StackFusion)
register_fusion("max", MaxFusion)
register_fusion("noisy_or", NoisyOrFusion)
register_fusion("mean", MeanFusion)
register_fusion("concat", ConcatFusion)
