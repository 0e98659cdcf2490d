"""Training tasks: what each stage builds, which data it reads and its loss. The trainer is generic; a task owns the
model-specific parts and returns a dict with ``loss`` (STYLE.md).

* ``expert``: a single-expert detector named after the domain, trained on real vs that domain's fakes;
* ``mixed``: the baseline, one LoRA (expert ``mixed``) trained on real vs every domain's fakes;
* ``fusion``: the trained experts combined by :meth:`SEFDetector.from_experts`; only the fusion head trains, on real
  vs the experts' domains.

A new task is one class plus one ``register_task`` line.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..config import DetectorConfig
from ..detector import SEFDetector
from ..serialization import CONFIG_NAME
from .config import TrainConfig

_TASKS: dict[str, type[Task]] = {}


def register_task(name: str, cls: type[Task]) -> type[Task]:
    """Register a task class under a stage name; a duplicate name raises ``ValueError``."""
    if name in _TASKS:
        raise ValueError(f"task {name!r} is already registered ({_TASKS[name].__name__})")
    _TASKS[name] = cls
    return cls


def get_task(name: str) -> type[Task]:
    try:
        return _TASKS[name]
    except KeyError:
        raise ValueError(f"unknown stage {name!r}; known: {', '.join(sorted(_TASKS))}") from None


class Task:
    """Base task: binary cross-entropy on the detector's logit (1 = generated)."""

    stage: str = ""

    def __init__(self, config: TrainConfig) -> None:
        self.config = config

    @property
    def wanted_domains(self) -> list[str] | None:
        """Domains whose fakes this task trains on; None: every configured domain the shards hold."""
        return None

    @property
    def expert(self) -> str | None:
        """The expert whose adapter trains (expert/mixed stages)."""
        return None

    @property
    def detector_stage(self) -> str:
        """What trains, as :meth:`SEFDetector.set_stage` names it (by default the stage's own name)."""
        return self.stage

    def build_detector(self) -> SEFDetector:
        raise NotImplementedError

    def __call__(self, model: torch.nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Forward one batch through ``model`` (possibly DDP-wrapped) -> ``loss``, ``logits``."""
        out = model(batch["pixels"])
        logits = out["logits"].float()
        loss = F.binary_cross_entropy_with_logits(logits, batch["labels"].to(logits.device))
        return {"loss": loss, "logits": logits.detach()}


class ExpertTask(Task):
    stage = "expert"

    @property
    def wanted_domains(self) -> list[str] | None:
        return [self.config.domain]

    @property
    def expert(self) -> str | None:
        return self.config.domain

    def build_detector(self) -> SEFDetector:
        config = DetectorConfig(**{**self.config.detector, "experts": [self.expert], "fusion": "single"})
        return SEFDetector(config)


class MixedTask(ExpertTask):
    stage = "mixed"

    @property
    def wanted_domains(self) -> list[str] | None:
        return [self.config.domain] if self.config.domain else None

    @property
    def expert(self) -> str | None:
        return "mixed"


def expert_folder(ref: str) -> str:
    """A fusion ``--experts`` entry: a run folder (its ``detector/``), a detector folder, or a Hub id."""
    path = Path(ref)
    if (path / "detector" / CONFIG_NAME).is_file():
        return str(path / "detector")
    if path.exists() and not (path / CONFIG_NAME).is_file():
        raise FileNotFoundError(f"{ref} is neither a finished training run (no detector/) nor a detector folder")
    return ref


def _local_expert_names(refs: Sequence[str]) -> list[str] | None:
    """The expert names that local single-expert folders hold (read from their config.json); None if any is not
    local."""
    names = []
    for ref in refs:
        try:
            config = json.loads((Path(expert_folder(ref)) / CONFIG_NAME).read_text())
            names.append(config["experts"][0])
        except (OSError, ValueError, KeyError, IndexError, TypeError):
            return None
    return names


class FusionTask(Task):
    stage = "fusion"

    def __init__(self, config: TrainConfig) -> None:
        super().__init__(config)
        # known before any model loads when the experts are local folders (the trainer checks the data first)
        self._names: Sequence[str] | None = _local_expert_names(config.experts)

    @property
    def wanted_domains(self) -> list[str] | None:
        # Experts named after configured domains (what the expert stage writes) train on those; otherwise all.
        names = [n for n in (self._names or []) if n in self.config.domains]
        return names or None

    def build_detector(self) -> SEFDetector:
        detector = SEFDetector.from_experts(
            [expert_folder(e) for e in self.config.experts],
            fusion=self.config.fusion,
            gate_hidden=self.config.detector.get("gate_hidden"),
        )
        self._names = detector.expert_names
        return detector


register_task("expert", ExpertTask)
register_task("mixed", MixedTask)
register_task("fusion", FusionTask)
