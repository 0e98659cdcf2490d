"""The training configuration: one dataclass, every field with a default and a one-line help, validated on creation,
saved as ``train_config.json`` in the run folder. CLI flags and ``--config TOML`` fill the same object."""

from __future__ import annotations

import copy
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sefcore.fields import doc
from sefcore.tomlfile import read_toml
from sefmodel.model.dictconfig import from_known_fields

if TYPE_CHECKING:  # the augmentation code (numpy, PIL) loads with training, not when `--help` reads the options
    from sefmodel.train.augment import AugmentConfig

STAGE_NAMES = ("expert", "fusion", "mixed", "distill")
PRECISIONS = ("auto", "no", "fp16", "bf16")
CONFIG_FILE = "train_config.json"
# The detector settings the fusion stage takes (the rest comes from the experts).
FUSION_DETECTOR_KEYS = ("gate_hidden", "gate_input")
# Fields that may change when a run resumes: they change neither the data stream nor the maths.
RESUMABLE_CHANGES = ("out", "log_every", "tensorboard", "val_every", "val_data", "val_max_samples")


@dataclass
class TrainConfig:
    data: list[str] = field(
        default_factory=list,
        metadata=doc("training shards: build folders, .tar paths, brace/glob patterns or hf:// URLs"),
    )
    out: str = field(default="", metadata=doc("run folder: config, checkpoints, metrics.jsonl, detector/"))
    stage: str = field(
        default="expert",
        metadata=doc("expert (one domain), fusion (gate over experts), mixed or distill (one LoRA from a teacher)"),
    )
    domain: str | None = field(
        default=None, metadata=doc("expert stage: the domain to learn (a key of domains, e.g. recon or sr)")
    )
    domains: dict[str, list[str]] = field(
        default_factory=lambda: _default_domains(),
        metadata=doc("domain -> the shard fields holding its fakes (default recon=vae,ddim,taesd sr=sr)"),
    )
    experts: list[str] = field(
        default_factory=list, metadata=doc("fusion stage: expert run folders (or detector folders / Hub ids)")
    )
    fusion: str = field(
        default="moe",
        metadata=doc(
            "fusion stage: fusion head, moe (a gate that weighs the experts' own logits; chosen on validation by "
            "bench/learning.py), sef, stack, max, noisy_or, mean or concat (docs/detector.md)"
        ),
    )
    teacher: str | None = field(
        default=None, metadata=doc("distill stage: the detector to learn from: run folder, detector folder or Hub id")
    )
    distill_alpha: float = field(
        default=0.5,
        metadata=doc("distill stage: loss = alpha x BCE(labels) + (1 - alpha) x BCE(teacher's probability)"),
    )
    distill_temperature: float = field(
        default=1.0, metadata=doc("distill stage: soften teacher and student logits by this (the soft term x T^2)")
    )
    detector: dict[str, Any] = field(
        default_factory=dict,
        metadata=doc("DetectorConfig fields for the new detector (backbone, backbone_id, lora, processor, ...)"),
    )
    val_data: list[str] = field(
        default_factory=list, metadata=doc("held-out shards for periodic validation (default: no validation)")
    )
    steps: int = field(default=5000, metadata=doc("optimizer steps in the whole run (sets the cosine schedule)"))
    batch_size: int = field(
        default=64, metadata=doc("effective batch in images (half real, half fake), over all ranks and accumulation")
    )
    micro_batch_size: int | None = field(
        default=None,
        metadata=doc(
            "images per forward pass per rank; the rest is gradient accumulation (default: batch_size / ranks)"
        ),
    )
    lr: float = field(default=1e-4, metadata=doc("peak AdamW learning rate"))
    weight_decay: float = field(default=0.01, metadata=doc("AdamW weight decay"))
    warmup: float = field(default=0.05, metadata=doc("linear warm-up, as a fraction of steps"))
    min_lr_ratio: float = field(default=0.0, metadata=doc("the cosine schedule ends at lr * min_lr_ratio"))
    grad_clip: float = field(default=1.0, metadata=doc("clip the gradient norm to this (0: no clipping)"))
    mixed_precision: str = field(
        default="auto", metadata=doc("auto (bf16 or fp16 on GPU, none on CPU), no, fp16 or bf16")
    )
    cpu: bool = field(default=False, metadata=doc("train on the CPU even if a GPU is visible"))
    seed: int = field(default=0, metadata=doc("seeds the model init, data order, augmentation and dropout"))
    num_workers: int = field(
        default=4,
        metadata=doc("data-loading processes per rank (0: in the main process); at most the rank's shard count"),
    )
    shuffle_buffer: int = field(default=256, metadata=doc("raw samples per data worker kept for shuffling"))
    augment: AugmentConfig = field(default_factory=lambda: _augment(), metadata=doc("paired augmentation settings"))
    val_every: int = field(default=500, metadata=doc("validate every N steps (and at the end)"))
    val_max_samples: int | None = field(default=None, metadata=doc("cap on held-out samples per validation"))
    save_every: int = field(
        default=1000, metadata=doc("save the last checkpoint every N steps; the data stream restarts there too")
    )
    log_every: int = field(default=10, metadata=doc("write training metrics every N steps"))
    tensorboard: bool = field(default=False, metadata=doc("also log to RUN/tensorboard (needs tensorboard)"))
    record_keys: bool = field(
        default=False, metadata=doc("write every training sample key to RUN/keys-rank<R>.txt (debugging)")
    )

    def __post_init__(self) -> None:
        if isinstance(self.data, str):
            self.data = [self.data]
        if isinstance(self.val_data, str):
            self.val_data = [self.val_data]
        if isinstance(self.augment, dict):
            self.augment = _augment(self.augment)
        if self.stage not in STAGE_NAMES:
            raise ValueError(f"unknown stage {self.stage!r}; known: {', '.join(STAGE_NAMES)}")
        if not isinstance(self.domains, dict) or not all(
            isinstance(v, list) and v and all(isinstance(f, str) for f in v) for v in self.domains.values()
        ):
            raise ValueError(f"domains must map names to non-empty lists of field names, got {self.domains!r}")
        if self.stage == "expert" and not self.domain:
            raise ValueError(f"the expert stage needs a domain: one of {', '.join(self.domains)}")
        if self.domain is not None and self.domain not in self.domains:
            raise ValueError(f"unknown domain {self.domain!r}; configured: {', '.join(self.domains)}")
        if self.stage == "fusion" and len(self.experts) < 2:
            raise ValueError("the fusion stage needs at least two expert runs (--experts RUN_A RUN_B)")
        if self.stage != "fusion" and self.experts:
            raise ValueError(f"experts are for the fusion stage, not {self.stage!r}")
        if self.stage == "distill" and not self.teacher:
            raise ValueError("the distill stage needs a teacher: a fused detector's run folder (--teacher RUN)")
        if self.stage != "distill" and self.teacher:
            raise ValueError(f"a teacher is for the distill stage, not {self.stage!r}")
        if not _is_number(self.distill_alpha) or not 0 <= self.distill_alpha <= 1:
            raise ValueError(f"distill_alpha must be in [0, 1], got {self.distill_alpha!r}")
        if not _is_number(self.distill_temperature) or not self.distill_temperature > 0:
            raise ValueError(f"distill_temperature must be > 0, got {self.distill_temperature!r}")
        for name in ("steps", "batch_size", "val_every", "save_every", "log_every", "shuffle_buffer"):
            _check_int(name, getattr(self, name), 1)
        _check_int("num_workers", self.num_workers, 0)
        _check_int("seed", self.seed, 0)
        for name in ("micro_batch_size", "val_max_samples"):
            if getattr(self, name) is not None:
                _check_int(name, getattr(self, name), 1)
        if self.batch_size % 2 or (self.micro_batch_size or 2) % 2:
            raise ValueError("batch_size and micro_batch_size count images in real/fake pairs: they must be even")
        if not self.lr > 0 or self.weight_decay < 0 or self.grad_clip < 0:
            raise ValueError("lr must be > 0, weight_decay and grad_clip >= 0")
        if not 0 <= self.warmup < 1 or not 0 <= self.min_lr_ratio <= 1:
            raise ValueError("warmup must be in [0, 1) and min_lr_ratio in [0, 1]")
        if self.mixed_precision not in PRECISIONS:
            raise ValueError(f"mixed_precision must be one of {', '.join(PRECISIONS)}, got {self.mixed_precision!r}")
        if not isinstance(self.detector, dict):
            raise ValueError("detector must be a dict of DetectorConfig fields")
        self.notes: list[str] = []  # said to the user, not saved: settings that were given but do not apply
        ignored = sorted(set(self.detector) - set(FUSION_DETECTOR_KEYS)) if self.stage == "fusion" else []
        if ignored:  # the experts' config file can train the fusion stage too
            self.detector = {k: v for k, v in self.detector.items() if k in FUSION_DETECTOR_KEYS}
            self.notes.append(
                f"the fusion stage takes its detector from the experts; ignoring detector settings {', '.join(ignored)}"
            )
        unused = [f.name for f in dataclasses.fields(self) if f.name.startswith("distill_")
                  and self.stage != "distill" and getattr(self, f.name) != f.default]  # fmt: skip
        if unused:
            self.notes.append(
                f"ignoring {', '.join(unused)}: only the distill stage uses {'it' if len(unused) == 1 else 'them'}"
            )
        if self.stage != "fusion" and set(self.detector) & {"experts", "fusion"}:
            raise ValueError("detector.experts and detector.fusion are set by the stage, not by hand")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        return from_known_fields(cls, data, "training config keys")

    def save(self, folder: Path) -> None:
        (Path(folder) / CONFIG_FILE).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, folder: str | Path) -> TrainConfig:
        path = Path(folder) / CONFIG_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{folder} is not a training run folder: {CONFIG_FILE} is missing")
        return cls.from_dict(json.loads(path.read_text()))

    def differences(self, other: TrainConfig) -> list[str]:
        """Fields that differ from ``other`` and would change the run's maths or data (see RESUMABLE_CHANGES)."""
        a, b = self.to_dict(), other.to_dict()
        return [k for k in a if k not in RESUMABLE_CHANGES and a[k] != b[k]]


def load_toml(path: str | Path) -> dict[str, Any]:
    """TrainConfig keyword arguments from a TOML file: fields at the top level or under ``[train]``;
    ``[augment]``, ``[detector]`` and ``[domains]`` tables map to those fields. Dashes in keys become underscores."""
    path = Path(path)
    data = read_toml(path, "config", section="train")
    out = {k.replace("-", "_"): v for k, v in data.items()}
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = set(out) - known
    if unknown:
        raise ValueError(f"config {str(path)!r}: unknown keys {sorted(unknown)}; known: {', '.join(sorted(known))}")
    return out


def _augment(values: dict[str, Any] | None = None) -> AugmentConfig:
    from sefmodel.train.augment import AugmentConfig

    return AugmentConfig.from_dict(values or {})


def _default_domains() -> dict[str, list[str]]:
    from sefmodel.train.data import (
        DEFAULT_DOMAINS,  # late: the data pipeline imports torch, reading the options does not
    )

    return copy.deepcopy(DEFAULT_DOMAINS)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_int(name: str, value: Any, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
