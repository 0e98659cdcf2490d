"""Training harness for SEF detectors: streaming paired data, stages as tasks, one generic loop (accelerate).

``sefmodel`` itself never imports this package: scoring an image needs no trainer.
"""

from .config import TrainConfig, load_toml
from .tasks import Task, get_task, register_task
from .trainer import Trainer, TrainResult, train

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
