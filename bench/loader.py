"""Training data pipeline vs the training step it feeds (DESIGN.md §11), on CPU, offline.

Builds shards from the shared photos (downscaled to ``--max-side``) with the real TAEF2 and x4 GAN upsampler, then,
in the same run and on one CPU thread each:

* **loader**: :class:`sefmodel.data.PairStream` as the trainer uses it (read tar -> decode real + one fake -> the
  default paired augmentation -> normalised crops), images per second;
* **step**: one optimizer step of the expert task (forward, loss, backward, AdamW) of a detector on a
  ViT-Ti/16-shaped random backbone (the ``bench/fusion_cost.py`` backbone) at the same crop, LoRA rank 8 in every
  block, images per second.

Headline: loader / step throughput. Target >= 3x: one data worker keeps one core's worth of training fed (on a GPU the
step is much faster; use several ``--num-workers`` per GPU, each worth this many images per second).

    python bench/loader.py [--batches 12] [--size 224] [--max-side 512]
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
from pathlib import Path

import torch

from sefdata.assets import find_assets
from sefdata.build import build
from sefdata.config import BuildConfig
from sefmodel import DetectorConfig, SEFDetector
from sefmodel.augment import AugmentConfig
from sefmodel.data import PairStream, resolve_shards
from sefmodel.train.config import TrainConfig
from sefmodel.train.tasks import get_task

RESULTS = Path(__file__).resolve().parent / "results" / "loader.json"
BACKBONE = dict(
    hidden_size=192, num_hidden_layers=12, num_attention_heads=3, mlp_ratio=4, image_size=224, patch_size=16
)


def require_assets() -> Path:
    found = find_assets()
    if found is None:
        raise SystemExit("no assets: set SEF_ASSETS to a folder with photos/ and weights/ (or run from the repo)")
    return found


def make_shards(assets: Path, out: Path, max_side: int) -> Path:
    weights = assets / "weights"
    gens = [
        f"taesd:encoder={weights / 'taef2_encoder.pth'},decoder={weights / 'taef2_decoder.pth'}",
        f"sr:weights={weights / 'realesr-animevideov3.pth'},scale=4",
    ]
    config = BuildConfig(
        sources=[str(assets / "photos")], out=str(out), gen=gens, max_side=max_side, shard_size=4, batch_size=1
    )
    build(config, progress=False)
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=12, help="timed batches per side")
    parser.add_argument("--pairs", type=int, default=8, help="real/fake pairs per batch (batch = 2 x pairs images)")
    parser.add_argument("--size", type=int, default=224, help="training crop side")
    parser.add_argument("--max-side", type=int, default=512, help="photos are downscaled to this longer side")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for the step (the loader uses one)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results JSON path")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    assets = require_assets()
    work = Path(tempfile.mkdtemp(prefix="sef_loader_"))
    try:
        started = time.perf_counter()
        shards = make_shards(assets, work / "shards", args.max_side)
        build_s = time.perf_counter() - started
        shard_set = resolve_shards([str(shards)])
        domains = {"recon": ["taesd"], "sr": ["sr"]}

        # --- the detector and task, as the trainer builds them -----------------------------------------------
        torch.manual_seed(0)
        detector = SEFDetector(
            DetectorConfig(
                backbone="dinov2",
                backbone_config=BACKBONE,
                image_size=args.size,
                experts=["recon"],
                fusion="single",
                lora={"rank": 8},
            )
        )
        stream = PairStream(
            shard_set.urls, domains, pairs=args.pairs, processor=detector.processor,
            augment=AugmentConfig(), seed=0, shuffle_buffer=8,
        )  # fmt: skip
        batches = iter(stream)

        # --- loader alone ------------------------------------------------------------------------------------
        next(batches)  # warm-up (imports, first shard open)
        loader_s = []
        for _ in range(args.batches):
            t0 = time.perf_counter()
            batch = next(batches)
            loader_s.append(time.perf_counter() - t0)

        # --- training step alone, on a batch the loader made -------------------------------------------------
        task = get_task("expert")(
            TrainConfig(data=["x"], out="x", stage="expert", domain="recon", detector={"backbone": "dinov2"})
        )
        params = detector.set_stage("expert", "recon")
        detector.train()
        optimizer = torch.optim.AdamW(params, lr=1e-4)

        def step() -> None:
            out = task(detector, batch)
            out["loss"].backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        step()  # warm-up
        step_s = []
        for _ in range(max(3, args.batches // 2)):
            t0 = time.perf_counter()
            step()
            step_s.append(time.perf_counter() - t0)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    images = 2 * args.pairs
    loader_ips = images / statistics.median(loader_s)
    step_ips = images / statistics.median(step_s)
    ratio = loader_ips / step_ips
    result = {
        "headline": {"metric": "loader_over_step_throughput", "value": round(ratio, 2), "unit": "x"},
        "target": ">= 3x",
        "images_per_s": {"loader": round(loader_ips, 2), "train_step": round(step_ips, 2)},
        "ms_per_batch_median": {
            "loader": round(1000 * statistics.median(loader_s), 1),
            "train_step": round(1000 * statistics.median(step_s), 1),
        },
        "ms_per_batch_samples": {
            "loader": [round(1000 * s, 1) for s in loader_s],
            "train_step": [round(1000 * s, 1) for s in step_s],
        },
        "setup": {
            "batch_images": images,
            "crop": args.size,
            "photos_max_side": args.max_side,
            "shards": len(shard_set.urls),
            "fields": shard_set.fields,
            "augment": "AugmentConfig() defaults",
            "backbone": BACKBONE,
            "lora": "rank 8, all blocks, attention + mlp",
            "threads": {"loader": 1, "train_step": args.threads},
            "build_seconds": round(build_s, 1),
        },
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"loader {loader_ips:.1f} img/s, train step {step_ips:.1f} img/s (batch {images}, crop {args.size})")
    print(f"loader_over_step_throughput: {ratio:.2f}x")
    return result


if __name__ == "__main__":
    main()
