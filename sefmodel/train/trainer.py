"""The generic training loop: one process or many (accelerate / torchrun), any stage (a :mod:`task <.tasks>`).

One optimizer step = ``accumulation`` micro-batches per rank, ``batch_size`` images over all ranks. Every rank runs
exactly ``steps`` steps on its own infinite, resampled stream (:mod:`sefmodel.train.data`), so no rank waits for
another.

Run folder::

    RUN/train_config.json        the resolved TrainConfig
    RUN/metrics.jsonl            one JSON object per line: {"step", "split": "train"|"val", ...}
    RUN/checkpoints/last/        detector folder + optimizer/schedule state, every save_every steps and on stop
    RUN/checkpoints/best/        the same, at the best held-out mean per-domain AP so far (with validation data)
    RUN/detector/                the final detector: SEFDetector.from_pretrained(RUN/detector)
    RUN/tensorboard/             with tensorboard=True

Determinism: model init, data order, augmentation and dropout derive from ``seed`` and the step, never from a
running random state, so a run resumed from any checkpoint ends with the same weights as an uninterrupted one
(bit for bit on the same machine and software; see docs/training.md).
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from sefmodel.evaluation.metrics import detection_metrics
from sefmodel.train.checkpoint import load_checkpoint, save_checkpoint
from sefmodel.train.config import CONFIG_FILE, TrainConfig
from sefmodel.train.data import EvalStream, PairStream, data_workers, make_loader, resolve_domains, resolve_shards
from sefmodel.train.tasks import get_task

METRICS_FILE = "metrics.jsonl"


@dataclass
class TrainResult:
    run: Path
    step: int
    finished: bool  # False when stopped early (stop_after), resumable
    detector: Path | None  # RUN/detector when finished
    val: dict[str, float | int | None] = field(default_factory=dict)  # last validation metrics (None: undefined)
    best_ap: float | None = None
    main_process: bool = True  # False on the other ranks of a multi-process run (they print nothing)


def cosine_lambda(step: int, steps: int, warmup: int, min_ratio: float) -> float:
    """LR multiplier for optimizer step ``step`` (0-based): linear warm-up, then cosine down to ``min_ratio``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, steps - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def derive_seed(*values: int) -> int:
    return int(np.random.SeedSequence([int(v) & 0xFFFFFFFF for v in values]).generate_state(1)[0])


def _precision(config: TrainConfig) -> str:
    if config.mixed_precision != "auto":
        return config.mixed_precision
    if config.cpu or not torch.cuda.is_available():
        return "no"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


class MetricsLog:
    """metrics.jsonl (+ TensorBoard when asked and installed), written by the main process only."""

    def __init__(self, run: Path, enabled: bool, tensorboard: bool) -> None:
        self.path = run / METRICS_FILE
        self.enabled = enabled
        self.writer = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                print(
                    "warning: tensorboard=True but the tensorboard package is not installed "
                    "(pip install tensorboard); logging to metrics.jsonl only"
                )
            else:
                self.writer = SummaryWriter(str(run / "tensorboard"))

    def write(self, step: int, split: str, values: dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"step": step, "split": split, "time": round(time.time(), 3), **values}
        with self.path.open("a") as f:
            f.write(json.dumps(record, sort_keys=False) + "\n")
        if self.writer is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    self.writer.add_scalar(f"{split}/{key}", value, step)
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class Trainer:
    """Sets up accelerate, data, detector, optimizer and schedule for ``config``; :meth:`run` trains."""

    def __init__(self, config: TrainConfig, *, resume: bool = False, progress: bool = True) -> None:
        from accelerate import Accelerator

        if not config.out:
            raise ValueError("no run folder: give --out RUN")
        if not config.data:
            raise ValueError("no training data: give --data SHARDS")
        self.config = config
        self.run_dir = Path(config.out)
        self.resume = resume
        self.progress = progress
        self._check_run_folder()

        # accelerate treats several CPU processes as one unless told cpu=True: say so whenever there is no GPU
        cpu = config.cpu or not torch.cuda.is_available()
        self.accelerator = Accelerator(mixed_precision=_precision(config), cpu=cpu)
        acc = self.accelerator
        self.rank, self.world = acc.process_index, acc.num_processes
        self.is_main = acc.is_main_process

        micro = config.micro_batch_size or config.batch_size // self.world
        if micro < 2 or micro % 2 or config.batch_size % (micro * self.world):
            raise ValueError(
                f"batch_size {config.batch_size} must be a multiple of micro_batch_size ({micro}, even) x "
                f"{self.world} rank(s)"
            )
        self.micro = micro
        self.accumulation = config.batch_size // (micro * self.world)

        # data, domains and shard fields are checked before any model loads: a typo costs no download
        self.train_set = resolve_shards(config.data)
        self.task = get_task(config.stage)(config)
        self.domains = resolve_domains(config.domains, self.task.wanted_domains, self.train_set.fields)
        # a data worker without a shard would starve its rank: small builds train with fewer workers
        self.workers = data_workers(len(self.train_set), self.world, config.num_workers)
        if self.workers < config.num_workers and self.is_main:
            print(
                f"note: {len(self.train_set)} training shard(s) over {self.world} rank(s): "
                f"{self.workers} data worker(s) per rank instead of {config.num_workers}",
                file=sys.stderr,
            )
        self.val_set = resolve_shards(config.val_data) if config.val_data else None
        self.val_domains = (
            resolve_domains(config.domains, list(self.domains), self.val_set.fields) if self.val_set else {}
        )
        torch.manual_seed(config.seed)  # every rank builds the same random parts
        self.detector = self.task.build_detector()

        self.detector.to(acc.device)
        self.params = self.detector.set_stage(self.task.detector_stage, self.task.expert)
        self.step, self.best_ap, self.best_step = 0, None, None
        if not self.params:  # a fixed rule (fusion max / noisy_or): nothing to train; run() validates and saves it
            self.model, self.optimizer, self.scheduler = acc.prepare(self.detector), None, None
        else:
            self.detector.train()
            self.optimizer = torch.optim.AdamW(self.params, lr=config.lr, weight_decay=config.weight_decay)
            warmup = round(config.warmup * config.steps)
            self.scheduler = torch.optim.lr_scheduler.LambdaLR(
                self.optimizer,
                partial(cosine_lambda, steps=config.steps, warmup=warmup, min_ratio=config.min_lr_ratio),
            )
            self.model, self.optimizer = acc.prepare(self.detector, self.optimizer)
            if resume:
                state = load_checkpoint(
                    self.run_dir / "checkpoints" / "last", self.detector, self.optimizer.optimizer, self.scheduler,
                    acc.scaler,
                )  # fmt: skip
                self.step, self.best_ap, self.best_step = state["step"], state.get("best_ap"), state.get("best_step")
        if self.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            config.save(self.run_dir)
        self.log = MetricsLog(self.run_dir, self.is_main, config.tensorboard)
        self.last_val: dict[str, float | int | None] = {}

    # ---- setup ------------------------------------------------------------------------------------------------

    def _check_run_folder(self) -> None:
        saved = self.run_dir / CONFIG_FILE
        last = self.run_dir / "checkpoints" / "last"
        if self.resume:
            if not last.is_dir():
                raise FileNotFoundError(f"nothing to resume in {self.run_dir}: no checkpoints/last")
            diff = TrainConfig.load(self.run_dir).differences(self.config)
            if diff:
                raise ValueError(
                    f"--resume with a different configuration ({', '.join(diff)}) would not continue the same run; "
                    "resume with the saved settings (RUN/train_config.json) or start a new --out"
                )
        elif saved.exists() or last.exists():
            raise ValueError(
                f"{self.run_dir} already holds a training run; use --resume to continue it, or another --out"
            )

    def _train_batches(self, segment: int, skip: int):
        stream = PairStream(
            self.train_set.urls, self.domains, pairs=self.micro // 2, processor=self.detector.processor,
            augment=self.config.augment, seed=self.config.seed, segment=segment, rank=self.rank, world=self.world,
            skip_batches=skip, shuffle_buffer=self.config.shuffle_buffer, with_keys=True,
        )  # fmt: skip
        return iter(make_loader(stream, self.workers))

    # ---- the loop ---------------------------------------------------------------------------------------------

    def run(self, stop_after: int | None = None) -> TrainResult:
        """Train to ``config.steps`` (or stop, resumable, once ``stop_after`` steps are done)."""
        cfg, acc = self.config, self.accelerator
        if self.optimizer is None:  # nothing to train: validated once, then saved as a finished run below
            self.step = cfg.steps
            if self.val_set is not None:
                self._validate()
            self._save("last")
        bar = tqdm(
            total=cfg.steps, initial=self.step, unit="step", dynamic_ncols=True,
            disable=not (self.progress and self.is_main) or self.optimizer is None, desc=f"train {cfg.stage}",
        )  # fmt: skip
        keys_file = self.run_dir / f"keys-rank{self.rank}.txt" if cfg.record_keys else None
        speed = None
        try:
            while self.step < cfg.steps:
                segment = self.step // cfg.save_every * cfg.save_every
                batches = self._train_batches(segment, (self.step - segment) * self.accumulation)
                end = min(segment + cfg.save_every, cfg.steps)
                while self.step < end:
                    started = time.perf_counter()
                    loss = self._optimizer_step(batches, keys_file)
                    self.step += 1
                    elapsed = time.perf_counter() - started
                    rate = cfg.batch_size / elapsed
                    speed = rate if speed is None else 0.9 * speed + 0.1 * rate
                    if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                        mean_loss = acc.reduce(loss, "mean").item()
                        lr = self.scheduler.get_last_lr()[0]
                        self.log.write(self.step, "train", {"loss": mean_loss, "lr": lr, "samples_per_s": speed})
                        bar.set_postfix(loss=f"{mean_loss:.4f}", img_s=f"{speed:.1f}", refresh=False)
                    bar.update(1)
                    if self.val_set is not None and (self.step % cfg.val_every == 0 or self.step == cfg.steps):
                        self._validate()
                    if stop_after is not None and self.step >= stop_after and self.step < cfg.steps:
                        del batches
                        self._save("last")
                        return TrainResult(
                            self.run_dir, self.step, False, None, self.last_val, self.best_ap, self.is_main
                        )
                del batches
                self._save("last")
        except KeyboardInterrupt:
            self._save("last")  # the completed steps are kept; --resume continues from here
            raise
        finally:
            bar.close()
            self.log.close()
        detector_dir = self.run_dir / "detector"
        if self.is_main:
            self.detector.save_pretrained(detector_dir)
        acc.wait_for_everyone()
        return TrainResult(self.run_dir, self.step, True, detector_dir, self.last_val, self.best_ap, self.is_main)

    def _optimizer_step(self, batches, keys_file: Path | None) -> torch.Tensor:
        cfg, acc = self.config, self.accelerator
        # Dropout etc. draw from a generator seeded by the step: nothing random carries over between steps.
        torch.manual_seed(derive_seed(cfg.seed, self.step, self.rank, 0x7472))
        total = torch.zeros((), device=acc.device)
        for i in range(self.accumulation):
            batch = next(batches)
            if keys_file is not None:
                with keys_file.open("a") as f:
                    f.write("".join(f"{self.step}\t{k}\n" for k in batch["keys"]))
            batch = {k: v.to(acc.device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
            last = i == self.accumulation - 1
            with contextlib.nullcontext() if last else acc.no_sync(self.model):
                with acc.autocast():  # the whole task: a model it runs itself (a distill teacher) gets the precision
                    out = self.task(self.model, batch)
                acc.backward(out["loss"] / self.accumulation)
            total += out["loss"].detach() / self.accumulation
        if cfg.grad_clip > 0:
            acc.clip_grad_norm_(self.params, cfg.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return total

    # ---- validation and checkpoints ---------------------------------------------------------------------------

    @torch.no_grad()
    def _validate(self) -> dict[str, float | int | None]:
        acc = self.accelerator
        # the detector's processor, called as scoring calls it: the best checkpoint is chosen on eval's pixels
        stream = EvalStream(
            self.val_set.urls, self.val_domains, batch=self.micro, processor=self.detector.processor,
            rank=self.rank, world=self.world, max_samples=self.config.val_max_samples,
        )  # fmt: skip
        self.detector.eval()
        rows = []
        with acc.autocast():
            for batch in make_loader(stream, min(self.config.num_workers, 2)):
                logits = self.detector(batch["pixels"].to(acc.device))["logits"].float()
                # an image's probability is the mean over its crops, as in SEFDetector.score
                counts = torch.bincount(batch["image"], minlength=len(batch["labels"])).float()
                probs = torch.zeros(len(counts)).index_add_(0, batch["image"], logits.sigmoid().cpu()) / counts
                rows.append(torch.stack([probs, batch["labels"], batch["domain"].float()], dim=1))
        self.detector.train()
        local = torch.cat(rows) if rows else torch.zeros(0, 3)
        # ranks hold different counts: pad with label -2, gather, drop the padding
        padded = acc.pad_across_processes(local.to(acc.device), dim=0, pad_index=-2)
        everything = acc.gather(padded).cpu().numpy()
        everything = everything[everything[:, 1] > -2]
        metrics = detection_metrics(
            everything[:, 1].astype(int), everything[:, 0], everything[:, 2].astype(int), list(self.val_domains)
        )
        self.last_val = metrics
        self.log.write(self.step, "val", metrics)
        ap = metrics.get("map", metrics["ap"])  # per-domain AP (1:1 real/fake) when known: chance 0.5 for every stage
        if ap is not None and (self.best_ap is None or ap > self.best_ap):
            self.best_ap, self.best_step = ap, self.step
            self._save("best")
        return metrics

    def _save(self, name: str) -> None:
        acc = self.accelerator
        acc.wait_for_everyone()
        if self.is_main:
            state = {"step": self.step, "best_ap": self.best_ap, "best_step": self.best_step}
            save_checkpoint(
                self.run_dir / "checkpoints" / name, self.detector,
                self.optimizer.optimizer if self.optimizer is not None else None, self.scheduler, state,
                acc.scaler,
            )  # fmt: skip
        acc.wait_for_everyone()


def train(
    config: TrainConfig, *, resume: bool = False, stop_after: int | None = None, progress: bool = True
) -> TrainResult:
    """Train a detector stage described by ``config`` into ``config.out``; see :class:`Trainer`.

    Args:
        resume: continue the run in ``config.out`` from its last checkpoint (same settings required).
        stop_after: stop once this many steps are done, as if interrupted (the run stays resumable).
        progress: show a progress bar (main process only).
    """
    return Trainer(config, resume=resume, progress=progress).run(stop_after=stop_after)
