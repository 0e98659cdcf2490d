"""Training data pipeline vs the training step it feeds (DESIGN.md §11), like for like, on the device given.

Builds shards from the shared photos (downscaled to ``--max-side``) with the real TAEF2 and x4 GAN upsampler, then
measures, in the same run, ``--repeats`` times interleaved (median and spread):

* **loader**: :class:`sefmodel.train.data.PairStream` as the trainer runs it (read tar -> decode real + one fake -> the
  default paired augmentation -> the detector's image processor -> batch), through the trainer's DataLoader with
  ``--workers`` worker processes (0: in this process), images per second;
* **step**: one optimizer step of the expert task (forward, loss, backward, AdamW) of a detector with LoRA rank 8
  in every block, on a batch the loader made, on ``--device`` at ``--precision``, images per second. ``--step``
  picks the backbone, built from config with random weights: ``vit-ti`` (ViT-Ti/16 shape, 224-px crops, the CPU
  default) or ``vit-l`` (DINOv2-L/14, 336-px crops: the default recipe's backbone; run it on a GPU with bf16).

The shards are small (4 photos, fewer when ``--workers`` asks for more readers than that makes), and the loader never
runs more workers than there are shards (a worker without a shard of its own would starve; the trainer's rule): a
run that lowers ``--workers`` says so in one line and records both numbers.

Headline: loader / step images per second. Targets: >= 3x for one CPU worker against a CPU step; >= 1.5x for the
loader's workers against a ViT-L step on a GPU. Results go to bench/results/loader.json under ``runs`` (one entry per
device and step, with the machine it ran on); the CPU ``vit-ti`` run sets the headline.

    python bench/loader.py [--batches 12] [--repeats 3]
    python bench/loader.py --step vit-l --device cuda --precision bf16 --workers 12 --pairs 16   # on a GPU
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import torch

from sefdata.assets import find_assets
from sefdata.build import build
from sefdata.config import BuildConfig
from sefdata.sources import iter_sources
from sefmodel import DetectorConfig, SEFDetector
from sefmodel.train.augment import AugmentConfig
from sefmodel.train.config import TrainConfig
from sefmodel.train.data import PairStream, data_workers, make_loader, resolve_shards
from sefmodel.train.tasks import get_task

RESULTS = Path(__file__).resolve().parent / "results" / "loader.json"
STEPS = {  # backbone config (random weights) and its crop
    "vit-ti": (dict(hidden_size=192, num_hidden_layers=12, num_attention_heads=3, mlp_ratio=4, image_size=224,
                    patch_size=16), 224),
    "vit-l": (dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, mlp_ratio=4, image_size=518,
                   patch_size=14), 336),  # DINOv2-L/14 (facebook/dinov2-large) and the recipe's 336-px crops
}  # fmt: skip


def require_assets() -> Path:
    found = find_assets()
    if found is None:
        raise SystemExit("no assets: set SEF_ASSETS to a folder with photos/ and weights/ (or run from the repo)")
    return found


def shard_size_for(photos: int, workers: int, most: int = 4) -> int:
    """Photos per shard: ``most``, or fewer so that ``workers`` loader processes each get a shard where the photos
    allow it."""
    return max(1, min(most, photos // max(1, workers)))


def make_shards(assets: Path, out: Path, max_side: int, workers: int = 0, limit: int | None = None) -> Path:
    weights = assets / "weights"
    gens = [
        f"taesd:encoder={weights / 'taef2_encoder.pth'},decoder={weights / 'taef2_decoder.pth'}",
        f"sr:weights={weights / 'realesr-animevideov3.pth'},scale=4",
    ]
    sources = [str(assets / "photos")]
    photos = sum(1 for _ in iter_sources(sources))
    config = BuildConfig(
        sources=sources, out=str(out), gen=gens, max_side=max_side, limit=limit,
        shard_size=shard_size_for(min(photos, limit or photos), workers), batch_size=1,
    )  # fmt: skip
    build(config, progress=False)
    return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def spread(values: list[float]) -> dict:
    return {"median": round(statistics.median(values), 2), "min": round(min(values), 2), "max": round(max(values), 2)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--step", choices=sorted(STEPS), default="vit-ti", help="the backbone of the training step")
    parser.add_argument("--device", default="cpu", help="where the step runs: cpu or cuda")
    parser.add_argument("--precision", choices=("no", "bf16", "fp16"), default="no", help="autocast of the step")
    parser.add_argument("--workers", type=int, default=0, help="loader worker processes (0: in this process)")
    parser.add_argument("--batches", type=int, default=12, help="timed loader batches per repeat")
    parser.add_argument("--steps", type=int, default=3, help="timed training steps per repeat")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats of both sides")
    parser.add_argument("--pairs", type=int, default=8, help="real/fake pairs per batch (batch = 2 x pairs images)")
    parser.add_argument("--size", type=int, default=None, help="training crop side (default: the step's)")
    parser.add_argument("--max-side", type=int, default=512, help="photos are downscaled to this longer side")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for a CPU step")
    parser.add_argument("--limit", type=int, default=None, help="build from the first N photos only (trial runs)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results JSON (this run merges into its runs)")
    args = parser.parse_args(argv)
    backbone, default_size = STEPS[args.step]
    size = args.size or default_size
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    assets = require_assets()
    work = Path(tempfile.mkdtemp(prefix="sef_loader_"))
    loader_s: list[float] = []
    step_s: list[float] = []
    try:
        started = time.perf_counter()
        shards = make_shards(assets, work / "shards", args.max_side, args.workers, args.limit)
        build_s = time.perf_counter() - started
        shard_set = resolve_shards([str(shards)])
        workers = data_workers(len(shard_set.urls), 1, args.workers)
        if workers < args.workers:
            print(f"note: {len(shard_set.urls)} shard(s) feed {workers} loader worker(s), not the {args.workers} asked")
        domains = {"recon": ["taesd"], "sr": ["sr"]}

        # --- the detector and task, as the trainer builds them -----------------------------------------------
        torch.manual_seed(0)
        config = DetectorConfig(backbone="dinov2", backbone_config=backbone, processor={"size": size},
                                experts=["recon"], fusion="single", lora={"rank": 8})  # fmt: skip
        detector = SEFDetector(config).to(device)
        stream = PairStream(
            shard_set.urls, domains, pairs=args.pairs, processor=detector.processor,
            augment=AugmentConfig(), seed=0, shuffle_buffer=8,
        )  # fmt: skip
        batches = iter(make_loader(stream, workers))
        next(batches)  # warm-up: imports, workers started, first shards open
        task = get_task("expert")(
            TrainConfig(data=["x"], out="x", stage="expert", domain="recon", detector={"backbone": "dinov2"})
        )
        params = detector.set_stage("expert", "recon")
        detector.train()
        optimizer = torch.optim.AdamW(params, lr=1e-4)
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.precision)
        autocast = torch.autocast(device.type, dtype=dtype) if dtype else nullcontext()

        def step(batch: dict) -> None:
            batch = {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
            with autocast:
                out = task(detector, batch)
            out["loss"].backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        batch = next(batches)
        step(batch)  # warm-up (kernels, allocator)
        _sync(device)
        for _ in range(args.repeats):  # interleaved: the loader's batches, then the steps, each repeat
            t0 = time.perf_counter()
            for _ in range(args.batches):
                batch = next(batches)
            loader_s.append((time.perf_counter() - t0) / args.batches)
            t0 = time.perf_counter()
            for _ in range(args.steps):
                step(batch)
            _sync(device)
            step_s.append((time.perf_counter() - t0) / args.steps)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    images = 2 * args.pairs
    loader_ips = [images / s for s in loader_s]
    step_ips = [images / s for s in step_s]
    ratios = [a / b for a, b in zip(loader_ips, step_ips, strict=True)]
    run = {
        "headline": {"metric": "loader_over_step_throughput", "value": round(statistics.median(ratios), 2),
                     "unit": "x"},
        "loader_over_step": spread(ratios),
        "images_per_s": {"loader": spread(loader_ips), "train_step": spread(step_ips)},
        "setup": {
            "step": args.step, "device": args.device, "precision": args.precision, "backbone": backbone,
            "batch_images": images, "crop": size, "loader_workers": workers,
            "loader_workers_asked": args.workers, "step_threads": args.threads,
            "photos_max_side": args.max_side, "shards": len(shard_set.urls), "fields": shard_set.fields,
            "augment": "AugmentConfig() defaults", "lora": "rank 8, all blocks, attention + mlp",
            "repeats": args.repeats, "batches_per_repeat": args.batches, "steps_per_repeat": args.steps,
            "build_seconds": round(build_s, 1),
        },
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.machine(), "torch": torch.__version__,
                    "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None},
    }  # fmt: skip
    results = json.loads(args.out.read_text()) if args.out.is_file() else {}
    runs = results.get("runs", {})
    key = f"{device.type}/{args.step}" + (f"/{run['machine']['gpu']}" if run["machine"]["gpu"] else "")
    runs[key] = run
    args.out.parent.mkdir(parents=True, exist_ok=True)
    headline = runs.get("cpu/vit-ti", run)["headline"]
    args.out.write_text(json.dumps({"headline": headline, "targets": {"cpu/vit-ti": ">= 3x", "cuda/vit-l": ">= 1.5x"},
                                    "runs": runs}, indent=2) + "\n")  # fmt: skip
    print(f"{key}: loader {run['images_per_s']['loader']['median']} img/s ({workers} workers), train step "
          f"{run['images_per_s']['train_step']['median']} img/s (batch {images}, crop {size})")  # fmt: skip
    print(f"loader_over_step_throughput: {run['headline']['value']}x")
    return run


if __name__ == "__main__":
    main()
