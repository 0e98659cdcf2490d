"""Training tasks: what each stage builds, which data it reads and its loss. The trainer is generic; a task owns the
model-specific parts and returns a dict with ``loss`` (STYLE.md).

* ``expert``: a single-expert detector named after the domain, trained on real vs that domain's fakes;
* ``mixed``: the baseline, one LoRA (expert ``mixed``) trained on real vs every domain's fakes;
* ``fusion``: the trained experts combined by :func:`~sefmodel.model.combine.combine_experts`; only the fusion head
  trains, on real vs the experts' domains;
* ``distill``: one LoRA student (expert ``distilled``, the cost of one expert) trained like ``mixed`` on every
  domain, against the labels and a frozen teacher's (a fused detector's) probabilities on the same pixels.

A new task is one class plus one ``register_task`` line.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from sefmodel.model.combine import combine_experts, processing_differences
from sefmodel.model.config import DetectorConfig, nest_processor_settings
from sefmodel.model.detector import SEFDetector
from sefmodel.model.folder import CONFIG_NAME
from sefmodel.train.config import TrainConfig

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
        config = DetectorConfig.from_dict({**self.config.detector, "experts": [self.expert], "fusion": "single"})
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
        detector = combine_experts(
            [expert_folder(e) for e in self.config.experts],
            fusion=self.config.fusion,
            gate_hidden=self.config.detector.get("gate_hidden"),
            gate_input=self.config.detector.get("gate_input"),
        )
        self._names = detector.expert_names
        return detector


STUDENT = "distilled"
_BACKBONE_WEIGHTS = ("backbone_id", "backbone_revision", "backbone_config")


def student_config(teacher: DetectorConfig, overrides: dict[str, Any]) -> DetectorConfig:
    """The distill stage's student: the teacher's backbone, feature layer, LoRA and image settings, with the
    ``overrides`` (DetectorConfig fields; ``lora`` and ``processor`` merged key by key) over them, as one expert
    with its own head. The normalisation is the student backbone's, not the teacher's processor's.

    Overrides that name other backbone weights (``backbone``, ``backbone_id``, ...) replace the teacher's weights
    reference as a whole; another backbone family also takes that family's default feature pooling and LoRA
    targets."""
    values = dataclasses.asdict(teacher)
    overrides = nest_processor_settings(overrides)
    if any(k in overrides and overrides[k] != values[k] for k in ("backbone", *_BACKBONE_WEIGHTS)):
        for key in _BACKBONE_WEIGHTS:
            values.pop(key)
        if overrides.get("backbone", teacher.backbone) != teacher.backbone:
            values.pop("feature_pool")
            values["lora"]["targets"] = None
    lora = {**values.pop("lora"), **overrides.pop("lora", {})}
    # the teacher's crop side and rules; the normalisation is the student backbone's (the task refuses a student
    # whose pixels differ from the teacher's)
    processor = {k: v for k, v in values.pop("processor").items() if k not in ("image_mean", "image_std")}
    processor.update(overrides.pop("processor", {}))
    return DetectorConfig(**{**values, **overrides, "lora": lora, "processor": processor, "experts": [STUDENT],
                             "fusion": "single"})  # fmt: skip


class DistillTask(MixedTask):
    """One LoRA student against a frozen teacher: ``alpha * BCE(student, label) + (1 - alpha) * T^2 *
    BCE(student / T, sigmoid(teacher / T))`` (``distill_alpha``, ``distill_temperature``).

    The teacher is not handed to accelerate (nothing of it trains): the task holds it, in eval mode with no
    gradients, and moves it to the batch's device on first use. It scores the very pixels the student trains on,
    so both must share the image processing (checked when the student is built)."""

    stage = "distill"

    def __init__(self, config: TrainConfig) -> None:
        super().__init__(config)
        self.teacher: SEFDetector | None = None

    @property
    def expert(self) -> str | None:
        return STUDENT

    @property
    def detector_stage(self) -> str:
        return "mixed"  # one LoRA and its head on a single-expert detector, fed every domain

    def build_detector(self) -> SEFDetector:
        teacher = SEFDetector.from_pretrained(expert_folder(self.config.teacher))
        teacher.requires_grad_(False)
        teacher.eval()
        config = student_config(teacher.config, self.config.detector)
        torch.manual_seed(self.config.seed)  # the student's init does not depend on what loading the teacher drew
        student = SEFDetector(config)
        mine, theirs = student.processor, teacher.processor
        diff = [f"{k} {getattr(mine, k)!r} vs {getattr(theirs, k)!r}" for k in processing_differences(mine, theirs)]
        if diff:
            raise ValueError(
                f"the student's image processing differs from the teacher's ({'; '.join(diff)}): it must see the "
                "pixels the teacher scores; keep the teacher's image settings"
            )
        if config.backbone_config is not None and config.backbone_config == teacher.config.backbone_config:
            _copy_backbone(teacher, student)  # a random backbone (tests): the teacher's, not a fresh draw
        self.teacher = teacher
        return student

    def __call__(self, model: torch.nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        pixels = batch["pixels"]
        if self.teacher is None:
            raise RuntimeError("build_detector() loads the teacher; call it before training")
        if self.teacher.device != pixels.device:
            self.teacher.to(pixels.device)
        with torch.no_grad():
            target = self.teacher(pixels)["logits"].float()
        logits = model(pixels)["logits"].float()
        labels = batch["labels"].to(logits.device)
        t, alpha = self.config.distill_temperature, self.config.distill_alpha
        hard = F.binary_cross_entropy_with_logits(logits, labels)
        soft = F.binary_cross_entropy_with_logits(logits / t, torch.sigmoid(target / t)) * (t * t)
        loss = alpha * hard + (1 - alpha) * soft
        return {"loss": loss, "logits": logits.detach(), "teacher_logits": target}


def _copy_backbone(source: SEFDetector, target: SEFDetector) -> None:
    """Load ``source``'s frozen backbone tensors into ``target`` (same architecture; LoRA placement may differ:
    peft keeps an adapted layer's own weights under ``base_layer``)."""

    def plain(key: str) -> str:
        return key.replace(".base_layer.", ".")

    tensors = {plain(k): v for k, v in source.backbone_state_dict().items()}
    wanted = target.backbone_state_dict()
    if set(map(plain, wanted)) != set(tensors):
        raise ValueError("the student's backbone does not match the teacher's random backbone")
    target.load_state_dict({k: tensors[plain(k)] for k in wanted}, strict=False)


register_task("expert", ExpertTask)
register_task("mixed", MixedTask)
register_task("fusion", FusionTask)
register_task("distill", DistillTask)
