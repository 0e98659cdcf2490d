"""Training harness for SEF detectors: streaming paired data, stages as tasks, one generic loop (accelerate).

``sefmodel`` itself never imports this package: scoring an image needs no trainer. The names below load on first
use (PEP 562): the CLI reads :class:`TrainConfig` for its options without importing torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sefmodel.lazy import lazy_exports

_EXPORTS = {
    "Task": "tasks",
    "TrainConfig": "config",
    "TrainResult": "trainer",
    "Trainer": "trainer",
    "get_task": "tasks",
    "load_toml": "config",
    "register_task": "tasks",
    "train": "trainer",
}

__all__ = [
    "Task",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "get_task",
    "load_toml",
    "register_task",
    "train",
]

if TYPE_CHECKING:
    from sefmodel.train.config import TrainConfig, load_toml
    from sefmodel.train.tasks import Task, get_task, register_task
    from sefmodel.train.trainer import Trainer, TrainResult, train


__getattr__ = lazy_exports(__name__, _EXPORTS, globals())
