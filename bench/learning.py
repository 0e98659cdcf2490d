"""Does the training code learn real generator artifacts? Held-out AP of a small detector (DESIGN.md §11), CPU, offline.

1. The shared photos are split **by source photo** into training and held-out sets (every 4th photo, from the second,
   is held out), downscaled to ``--max-side`` and cut into ``--tile`` px tiles (PNG, so nothing is re-compressed).
2. ``sefdata.build`` (the library call) makes aligned shards of each set with the real TAEF2 autoencoder (``taesd``
   field, reconstruction family) and the real x4 Real-ESRGAN compact upsampler (``sr`` field, GAN-upsampling family).
3. ``sefmodel.train.train`` trains through the real code paths (streaming shards, paired augmentation, the expert
   / fusion tasks, AdamW + cosine, checkpoints): an ``sr`` expert, a ``recon`` expert, then the SEF fusion of the two.
4. Held-out AP, accuracy and per-domain AP come from the trainer's validation on the held-out shards (photos never
   seen in training), and are cross-checked with the public ``SEFDetector.score`` on the held-out tiles.
5. A control on the same tiles: logistic regression on a 16-band radial spectrum per family, which tells how much of
   each artifact simple statistics carry (the x4 GAN's missing high frequencies: much; TAEF2's: almost none).

No pretrained backbone is available offline, so the detector uses a small *random* ViT (DINOv2 layout: ViT-Ti width
192, 3 heads, 4 blocks, 8 px patches, 64 px crops) with LoRA of rank 32 on every attention and MLP projection of
every block, so most of the network's linear maps are trainable while the backbone itself stays frozen, as the
design requires.
What was tried on this machine before settling (SR expert, held-out AP; see ``notes`` in the results file): random
frozen features with a full-batch linear probe reach 0.53-0.61; LoRA runs of 100-300 steps with widths 64-128,
patches 2-8 px, 1-4 blocks, initialiser std 0.02-0.125 and learning rates 1e-3 to 1e-2 stayed between 0.50 and 0.69.
A random transformer has no features for the artifacts to adapt; it has to learn them from a few hundred tiles of
ten photos in a few CPU minutes, which is the limit this check measures. The target (AP >= 0.9) is reported as
reached or not, never adjusted. The headline is the fused detector's held-out AP per artifact family (each real vs
that family's fakes, 1:1, chance 0.5), averaged over the two families.

    python bench/learning.py [--steps 400] [--threads 2]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from sefdata.assets import find_assets
from sefdata.build import build
from sefdata.config import BuildConfig
from sefmodel import SEFDetector
from sefmodel.augment import AugmentConfig
from sefmodel.data import iter_samples, resolve_shards
from sefmodel.metrics import average_precision, detection_metrics
from sefmodel.train import TrainConfig, train

RESULTS = Path(__file__).resolve().parent / "results" / "learning.json"
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
NOTES = [
    "exploration on this 2-core CPU before fixing the defaults (sr expert, held-out AP, same split):",
    "linear probe (LBFGS, full batch) on frozen random features: 0.53-0.61 (width 64-128, patch 4-8, init 0.02-0.125)",
    "width 128, patch 8, 4 blocks, LoRA rank 16, lr 3e-3, 300 steps, 96 px tiles of 384 px photos: 0.66 (recon 0.58)",
    "width 128, patch 8, 4 blocks, init 0.09, lr 1e-3, 100 steps, 128 px tiles of 1024 px photos: 0.51",
    "width 64, patch 4, 2-4 blocks, full-rank LoRA, lr 1e-3 to 1e-2, 150-300 steps, 128 px tiles: 0.49-0.69",
    "width 128, patch 8, 4 blocks, LoRA rank 16, lr 3e-3, 1000 steps (3x longer), 96 px tiles of 384 px photos: 0.56",
    "training loss stayed near 0.69 in most runs: the random frozen backbone gives the adapters little to build on",
    "2026-11-25 controls on the same tiles (scripts not kept): a 4-conv CNN trained from scratch (all weights, AdamW "
    "1e-3, 600 steps of 16 pairs, 64 px crops) reaches held-out AP 0.54-0.57 on TAEF2 and 0.58 on sr after 300 steps",
    "same CNN on 546 native-resolution tiles (no downscaling; JPEG photos tiled as JPEG with their own tables, so the "
    "fakes are re-encoded alike by --format match): TAEF2 0.54-0.57; the spectrum probe there: sr 0.79, TAEF2 0.51",
    "the direct-training harness with this bench's ViT (no trainer, no shards): sr 0.51 after 400 steps (loss 0.69); "
    "with 4 px patches 0.55-0.57 after 200 steps: the trainer's data path is not what limits the result",
    "LoRA on the patch embedding too (an experiment, not in the design's target set): sr 0.77, recon 0.58 at 400 steps",
    "reading: the x4 GAN upsampling leaves a strong, simple signal (the spectrum probe finds it) that models learning "
    "from scratch pick up only slowly; TAEF2's 33 dB reconstructions leave none that simple, and nothing trained "
    "from scratch on ten photos finds it in CPU minutes. The design's premise, a pretrained foundation backbone, is "
    "what this check needs: pass --backbone-id with a small pretrained ViT (e.g. DINOv2-S/14) once one is available",
    "width 192 (ViT-Ti; its frozen 8 px patch embedding keeps all 192 pixel values of a patch), lr 1e-3, direct "
    "harness: sr 0.69 at 400 steps, 0.75 at 1000 (training loss 0.33): the defaults since 2026-11-25",
]


def require_assets() -> Path:
    found = find_assets()
    if found is None:
        raise SystemExit("no assets: set SEF_ASSETS to a folder with photos/ and weights/ (or run from the repo)")
    return found


def tile_photos(photos: list[Path], out: Path, tile: int, max_side: int) -> int:
    out.mkdir(parents=True, exist_ok=True)
    count = 0
    for path in photos:
        with Image.open(path) as opened:
            image = opened.convert("RGB")
        scale = max_side / max(image.size)
        if scale < 1:
            image = image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.LANCZOS)
        for top in range(0, image.height - tile + 1, tile):
            for left in range(0, image.width - tile + 1, tile):
                image.crop((left, top, left + tile, top + tile)).save(out / f"{path.stem}_{top:05d}_{left:05d}.png")
                count += 1
    return count


def load_split(shards: Path, fields: list[str]) -> dict[str, np.ndarray]:
    """Every image of ``fields`` in a shard folder, uint8 (N, H, W, 3) per field, samples in the same order (tiles
    are small: this fits)."""
    out: dict[str, list[np.ndarray]] = {f: [] for f in fields}
    for url in resolve_shards([str(shards)]).urls:
        for sample in iter_samples(url):
            for f in fields:
                key = next(k for k in sample if k.split(".")[0] == f)
                out[f].append(np.asarray(Image.open(io.BytesIO(sample[key])).convert("RGB")))
    return {f: np.stack(v) for f, v in out.items()}


def score_check(detector: SEFDetector, images: dict[str, np.ndarray], domains: dict[str, list[str]]) -> dict:
    """Held-out metrics of images scored with the public scoring API (centre crop), independent of the trainer's
    data stream; the metrics are the trainer's own (:func:`sefmodel.metrics.detection_metrics`)."""
    groups = [("real", -1)] + [(f, i) for i, fields in enumerate(domains.values()) for f in fields]
    pil = [Image.fromarray(a) for field, _ in groups for a in images[field]]
    owner = np.concatenate([np.full(len(images[field]), d) for field, d in groups])
    probs = detector.score(pil, batch_size=64).probs.numpy()
    return detection_metrics((owner >= 0).astype(int), probs, owner, list(domains))


def _spectrum(images: np.ndarray, bins: int = 16) -> np.ndarray:
    """Radial log power spectrum of the grey image, relative to its lowest band: (N, bins)."""
    grey = images.astype(np.float32).mean(-1) / 255
    grey = grey - grey.mean(axis=(1, 2), keepdims=True)
    power = np.abs(np.fft.fftshift(np.fft.fft2(grey), axes=(1, 2))) ** 2
    n = grey.shape[1]
    yy, xx = np.mgrid[:n, :n] - n // 2
    band = np.minimum((np.hypot(yy, xx) / (n / 2) * bins).astype(int), bins - 1)
    profile = np.stack([np.log(power[:, band == b].mean(1) + 1e-12) for b in range(bins)], 1)
    return profile - profile[:, :1]


def _probe_ap(x_tr: np.ndarray, y_tr: np.ndarray, x_he: np.ndarray, y_he: np.ndarray) -> float:
    """Held-out AP of an L2-regularised logistic regression fitted on standardised features (LBFGS, full batch)."""
    mu, sd = x_tr.mean(0), x_tr.std(0) + 1e-6
    xt, xh = (torch.tensor((x - mu) / sd, dtype=torch.float32) for x in (x_tr, x_he))
    yt = torch.tensor(y_tr, dtype=torch.float32)
    probe = torch.nn.Linear(xt.shape[1], 1)
    opt = torch.optim.LBFGS(probe.parameters(), max_iter=500)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(probe(xt)[:, 0], yt)
        loss = loss + 1e-3 * probe.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return average_precision(y_he, probe(xh)[:, 0].numpy())


def spectral_probe(tr: dict[str, np.ndarray], he: dict[str, np.ndarray], fakes: dict[str, str]) -> dict[str, float]:
    """Control: how separable each family is on the same tiles with a 16-number spectrum and logistic regression.

    Not a detector of this toolkit; it tells whether the data carry a given artifact in a form simple enough to
    learn from a few hundred tiles, which separates "the trainer does not learn" from "there is little to learn".
    """
    out = {}
    for family, field in fakes.items():
        x_tr = np.concatenate([_spectrum(tr["real"]), _spectrum(tr[field])])
        y_tr = np.r_[np.zeros(len(tr["real"])), np.ones(len(tr[field]))]
        x_he = np.concatenate([_spectrum(he["real"]), _spectrum(he[field])])
        y_he = np.r_[np.zeros(len(he["real"])), np.ones(len(he[field]))]
        out[family] = round(_probe_ap(x_tr, y_tr, x_he, y_he), 4)
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=400, help="optimizer steps per expert")
    parser.add_argument("--fusion-steps", type=int, default=60, help="optimizer steps of the fusion stage")
    parser.add_argument("--batch", type=int, default=32, help="images per step (half real, half fake)")
    parser.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (random backbone, rank-32 LoRA)")
    parser.add_argument("--tile", type=int, default=96, help="tile side cut from the photos")
    parser.add_argument("--crop", type=int, default=64, help="training crop (random position inside a tile)")
    parser.add_argument("--max-side", type=int, default=512, help="photos are downscaled to this longer side first")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--workers", type=int, default=0, help="data-loading processes")
    parser.add_argument(
        "--backbone-id",
        default=None,
        help="a pretrained backbone (local folder or Hub id) instead of the random one; --crop must then be a "
        "multiple of its patch size (e.g. --crop 84 for DINOv2's 14 px patches)",
    )
    parser.add_argument("--backbone", default="dinov2", help="backbone family of --backbone-id")
    parser.add_argument("--keep", type=Path, default=None, help="keep shards and runs in this folder")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results JSON path")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    assets = require_assets()
    photos = sorted(p for p in (assets / "photos").iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
    held = [p for i, p in enumerate(photos) if i % 4 == 1]
    trained_on = [p for p in photos if p not in held]
    work = args.keep or Path(tempfile.mkdtemp(prefix="sef_learning_"))
    if args.keep:
        shutil.rmtree(work, ignore_errors=True)
    timings: dict[str, float] = {}
    try:
        t0 = time.perf_counter()
        tiles = {
            "train": tile_photos(trained_on, work / "tiles_train", args.tile, args.max_side),
            "heldout": tile_photos(held, work / "tiles_heldout", args.tile, args.max_side),
        }
        weights = assets / "weights"
        gens = [
            f"taesd:encoder={weights / 'taef2_encoder.pth'},decoder={weights / 'taef2_decoder.pth'}",
            f"sr:weights={weights / 'realesr-animevideov3.pth'},scale=4",
        ]
        for split in ("train", "heldout"):
            build(
                BuildConfig(sources=[str(work / f"tiles_{split}")], out=str(work / split), gen=gens, shard_size=32,
                            batch_size=16),
                progress=False,
            )  # fmt: skip
        timings["tile_and_build_s"] = time.perf_counter() - t0

        detector = {
            "backbone": "dinov2",
            "backbone_config": dict(hidden_size=192, num_hidden_layers=4, num_attention_heads=3, mlp_ratio=4,
                                    image_size=args.crop, patch_size=8),
            "image_size": args.crop,
            "lora": {"rank": 32, "alpha": 32.0, "blocks": "all"},
            "gate_hidden": 32,
        }  # fmt: skip
        if args.backbone_id:  # a pretrained backbone: the design's LoRA settings, only the crop is the bench's
            detector = {"backbone": args.backbone, "backbone_id": args.backbone_id, "image_size": args.crop,
                        "gate_hidden": 32}  # fmt: skip
        # Crops and flips only: the degradations of the default recipe are for robustness to laundering, and this
        # check asks whether the artifacts themselves are learned.
        augment = AugmentConfig.off()
        augment.flip_p = 0.5
        common = dict(
            data=[str(work / "train")], val_data=[str(work / "heldout")], domains={"recon": ["taesd"], "sr": ["sr"]},
            batch_size=args.batch, lr=args.lr, warmup=0.05, num_workers=args.workers, shuffle_buffer=128,
            augment=augment, log_every=10, seed=0,
        )  # fmt: skip
        runs, curves = {}, {}
        for domain in ("sr", "recon"):
            t0 = time.perf_counter()
            cfg = TrainConfig(**common, out=str(work / f"run_{domain}"), stage="expert", domain=domain,
                              detector=detector, steps=args.steps, val_every=max(1, args.steps // 4),
                              save_every=args.steps)  # fmt: skip
            runs[domain] = train(cfg, progress=False)
            timings[f"train_{domain}_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        cfg = TrainConfig(**common, out=str(work / "run_sef"), stage="fusion", experts=[str(work / "run_recon"),
                          str(work / "run_sr")], detector={"gate_hidden": 32}, steps=args.fusion_steps,
                          val_every=max(1, args.fusion_steps // 2), save_every=args.fusion_steps)  # fmt: skip
        runs["sef"] = train(cfg, progress=False)
        timings["train_sef_s"] = time.perf_counter() - t0
        for name in runs:
            lines = (work / f"run_{name}" / "metrics.jsonl").read_text().splitlines()
            curves[name] = [
                {k: (round(v, 4) if isinstance(v, float) else v) for k, v in m.items() if k != "time"}
                for m in map(json.loads, lines)
                if m["split"] == "val"
            ]
        fused = SEFDetector.from_pretrained(runs["sef"].detector)
        fields = ["real", "taesd", "sr"]
        heldout = load_split(work / "heldout", fields)  # decoded once for both checks
        check = score_check(fused, heldout, {"recon": ["taesd"], "sr": ["sr"]})
        probe = spectral_probe(load_split(work / "train", fields), heldout, {"recon": "taesd", "sr": "sr"})
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    final = {
        name: {k: round(v, 4) if isinstance(v, float) else v for k, v in r.val.items()} for name, r in runs.items()
    }
    ap = final["sef"]["map"]
    result = {
        "headline": {"metric": "heldout_ap", "value": round(ap, 4), "unit": "AP"},
        "headline_is": "mean over the two artifact families of the fused detector's held-out AP, each real vs that "
        "family's fakes (1:1, chance 0.5); the pooled 'ap' below scores each real against both fakes (chance 2/3)",
        "target": ">= 0.9",
        "reached": bool(ap >= 0.9),
        "heldout_final": final,
        "heldout_ap_by_step": curves,
        "score_api_check": {k: round(v, 4) if isinstance(v, float) else v for k, v in check.items()},
        "control_spectral_probe_heldout_ap": probe,
        "control_is": "logistic regression on a 16-band radial log power spectrum of each tile, same split: how much "
        "of each artifact simple frequency statistics carry (not a detector of this toolkit)",
        "data": {
            "assets": str(assets),
            "train_photos": [p.name for p in trained_on],
            "heldout_photos": [p.name for p in held],
            "tiles": tiles,
            "tile": args.tile,
            "max_side": args.max_side,
            "generators": {"taesd": "TAEF2 (taef2_encoder/decoder.pth)", "sr": "realesr-animevideov3 x4"},
        },
        "model": {"detector": detector, "augment": augment.to_dict()},
        "training": {
            "steps_per_expert": args.steps,
            "fusion_steps": args.fusion_steps,
            "batch": args.batch,
            "lr": args.lr,
            "threads": args.threads,
            "workers": args.workers,
        },
        "seconds": {k: round(v, 1) for k, v in timings.items()},
        "notes": NOTES,
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for name, metrics in final.items():
        per = ", ".join(f"{k} {v:.3f}" for k, v in metrics.items() if k.startswith("ap/"))
        print(f"{name}: held-out {per}, pooled AP {metrics['ap']:.3f}, acc {metrics['accuracy']:.3f}")
    print(f"score() cross-check on the fused detector: mean per-family AP {check['map']:.3f} ({check['n']} images)")
    print(f"control, spectrum probe held-out AP: {', '.join(f'{k} {v:.3f}' for k, v in probe.items())}")
    print(f"heldout_ap: {ap:.4f} (fused SEF detector, mean per-family AP on unseen photos; target >= 0.9)")
    return result


if __name__ == "__main__":
    main()
