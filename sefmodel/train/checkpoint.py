"""Training checkpoints without pickles: a checkpoint folder is a detector folder (``config.json``,
``preprocessor_config.json``, ``model.safetensors``, ``backbone.safetensors`` for a random backbone) plus
``optimizer.safetensors`` (the AdamW moment tensors) and ``trainer_state.json`` (step, best metric, optimizer
hyper-parameters, LR schedule, loss scale). So ``SEFDetector.from_pretrained(RUN/checkpoints/best)`` works, and
resuming never unpickles anything."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from sefmodel.model.detector import SEFDetector

STATE_FILE = "trainer_state.json"
OPTIMIZER_FILE = "optimizer.safetensors"


def save_checkpoint(
    folder: Path,
    detector: SEFDetector,
    optimizer: torch.optim.Optimizer | None,
    scheduler: Any,
    state: dict[str, Any],
    scaler: Any | None = None,
) -> None:
    """Write the checkpoint to ``folder.tmp`` and swap it into place, so a crash never leaves half a checkpoint.
    Without an optimizer (a detector with nothing to train) it is a detector folder with the trainer state."""
    folder = Path(folder)
    tmp, old = folder.with_name(folder.name + ".tmp"), folder.with_name(folder.name + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    detector.save_pretrained(tmp)
    if optimizer is None:
        (tmp / STATE_FILE).write_text(json.dumps(state, indent=2, sort_keys=True, default=_jsonable) + "\n")
        _swap(tmp, folder, old)
        return
    opt = optimizer.state_dict()
    tensors, layout = {}, {}
    for index, entry in opt["state"].items():
        layout[str(index)] = sorted(entry)
        for name, value in entry.items():
            value = value if torch.is_tensor(value) else torch.tensor(value)
            tensors[f"{index}.{name}"] = value.detach().cpu().contiguous()
    save_file(tensors, str(tmp / OPTIMIZER_FILE))
    full = {
        **state,
        "optimizer": {"param_groups": opt["param_groups"], "layout": layout},
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
    }
    (tmp / STATE_FILE).write_text(json.dumps(full, indent=2, sort_keys=True, default=_jsonable) + "\n")
    _swap(tmp, folder, old)


def _swap(tmp: Path, folder: Path, old: Path) -> None:
    if folder.exists():
        shutil.rmtree(old, ignore_errors=True)
        folder.rename(old)
    tmp.rename(folder)
    shutil.rmtree(old, ignore_errors=True)


def _jsonable(value: Any) -> Any:
    if torch.is_tensor(value):
        return value.item()
    raise TypeError(f"cannot store {type(value).__name__} in {STATE_FILE}")


def load_checkpoint(
    folder: Path,
    detector: SEFDetector,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    scaler: Any | None = None,
) -> dict[str, Any]:
    """Restore trained tensors, optimizer, schedule and loss scale in place; returns the trainer state dict."""
    folder = Path(folder)
    state = json.loads((folder / STATE_FILE).read_text())
    trained = load_file(str(folder / "model.safetensors"), device=str(detector.device))
    expected = detector.trained_state_dict()
    if set(trained) != set(expected):
        raise ValueError(f"checkpoint {folder} does not match this run's detector (different tensors)")
    detector.load_state_dict(trained, strict=False)
    tensors = load_file(str(folder / OPTIMIZER_FILE))
    opt_state = {
        int(index): {name: tensors[f"{index}.{name}"] for name in names}
        for index, names in state["optimizer"]["layout"].items()
    }
    groups = state["optimizer"]["param_groups"]
    for group in groups:
        if "betas" in group:
            group["betas"] = tuple(group["betas"])
    optimizer.load_state_dict({"state": opt_state, "param_groups": groups})
    scheduler.load_state_dict(state["scheduler"])
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    return state
