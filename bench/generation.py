"""Generation throughput: `sefdata build` against a plain per-image loop, same photos, same real models.

The baseline is how public reconstruction scripts do it: for each photo, open, convert, crop, run each model on that
one image (NCHW, fp32, torch.no_grad), save a PNG. The build does the same work (TAEF2 reconstruction and x4 GAN
upsampling of every photo, PNG output) through `sefdata.build`. Both run in this process, interleaved, on the CPU.

The build runs at its default precision (``--dtype auto``: bf16 where the device computes it natively, else fp32 on a
CPU) and, when that is not fp32, once more in fp32 in the same run, so the file shows both speeds and what the
precision does to the fakes (mean PSNR of each fake field against its real, per precision).

Writes bench/results/generation.json; the last line printed is the headline (build / loop images per second).

Usage: python bench/generation.py [--assets DIR] [--max-side 384] [--repeats 2]
       python bench/generation.py --device cuda --dtype fp16 --crop 256 --copies 16 --out gpu.json   # on a GPU
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

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sefdata.assets import find_assets  # noqa: E402
from sefdata.build import build, psnr  # noqa: E402
from sefdata.config import BuildConfig, native_bf16, resolve_dtype  # noqa: E402
from sefdata.generators.sr import downsample, load_sr_model  # noqa: E402
from sefdata.generators.taesd import load_taesd  # noqa: E402
from sefmodel.data import iter_samples  # noqa: E402


def require_assets(explicit: str | None) -> Path:
    found = find_assets(explicit, required=("photos", "weights/taef2_encoder.pth"))
    if found is None:
        sys.exit("no assets: pass --assets DIR (with photos/ and weights/) or set SEF_ASSETS")
    return found


def per_image_loop(photos: list[Path], weights: Path, out: Path, max_side: int, crop: int | None, device: str) -> dict:
    """The baseline: one image at a time, models in their default layout and fp32, PNG out."""
    t_start = time.perf_counter()
    dev = torch.device(device)
    encoder, decoder = (m.to(dev) for m in load_taesd(weights / "taef2_encoder.pth", weights / "taef2_decoder.pth"))
    sr = load_sr_model(weights / "realesr-animevideov3.pth").model.eval().to(dev)
    model_seconds = 0.0
    for i, path in enumerate(photos):
        img = Image.open(path).convert("RGB")
        if max(img.size) > max_side:
            scale = max_side / max(img.size)
            img = img.resize((round(img.width * scale), round(img.height * scale)), Image.LANCZOS)
        w, h = (crop, crop) if crop else (img.width // 8 * 8, img.height // 8 * 8)
        img = img.crop((0, 0, w, h))
        x = (torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1)[None].float() / 255).to(dev)
        with torch.no_grad():
            t0 = time.perf_counter()
            recon = decoder(encoder(x)).clamp(0, 1).cpu()
            up = sr(downsample(x, 4)).clamp(0, 1).cpu()
            model_seconds += time.perf_counter() - t0
        img.save(out / f"{i}_{path.stem}_real.png")
        for name, y in (("taef2", recon), ("sr", up)):
            arr = (y[0].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
            Image.fromarray(arr).save(out / f"{i}_{path.stem}_{name}.png")
    return {"seconds": time.perf_counter() - t_start, "model_seconds": model_seconds}


def fidelity(out: Path) -> dict[str, float]:
    """Mean PSNR (dB) of each fake field against its real over the build's shards."""
    scores: dict[str, list[float]] = {}
    for tar in sorted(out.glob("shard-*.tar")):
        for sample in iter_samples(str(tar)):
            images = {k.split(".")[0]: np.asarray(Image.open(io.BytesIO(v)).convert("RGB")) for k, v in sample.items()
                      if k.split(".")[-1] in ("png", "jpg")}  # fmt: skip
            real = images.pop("real")
            for name, fake in images.items():
                scores.setdefault(name, []).append(psnr(real, fake))
    return {name: round(float(np.mean(v)), 3) for name, v in sorted(scores.items())}


def sefdata_build(listing: Path, weights: Path, out: Path, max_side: int, crop: int | None, device: str,
                  dtype: str, batch_size: int) -> dict:  # fmt: skip
    config = BuildConfig(
        sources=[str(listing)], out=str(out), format="png", max_side=max_side, crop=crop, shard_size=100_000,
        batch_size=batch_size, device=device, dtype=dtype, seed=0, gen=[
            f"taesd:encoder={weights / 'taef2_encoder.pth'},decoder={weights / 'taef2_decoder.pth'},as=taef2",
            f"sr:weights={weights / 'realesr-animevideov3.pth'},scale=4",
        ],
    )  # fmt: skip
    t0 = time.perf_counter()
    summary = build(config, progress=False)
    seconds = time.perf_counter() - t0
    stats = json.loads((out / "shard-000000.stats.json").read_text())
    model = sum(v for k, v in stats["timings"].items() if k.startswith("generate."))
    return {
        "seconds": seconds,
        "model_seconds": model,
        "written": summary.written,
        "timings": stats["timings"],
        "dtype": {n: g["runtime"]["dtype"] for n, g in stats["generators"].items()},
        "psnr_db": fidelity(out),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--assets", help="folder with photos/ and weights/ (default: $SEF_ASSETS, ../shared/assets)")
    parser.add_argument("--max-side", type=int, default=384, help="downscale photos to this longer side")
    parser.add_argument("--repeats", type=int, default=2, help="interleaved runs of each way; the best is kept")
    parser.add_argument("--crop", type=int, default=None, help="square crop (same-size images batch on the model)")
    parser.add_argument("--copies", type=int, default=1, help="list every photo this many times (more work)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (both ways run there)")
    parser.add_argument("--dtype", default="auto", help="build precision: auto, fp32, fp16 or bf16 (the loop is fp32)")
    parser.add_argument("--batch-size", type=int, default=4, help="build batch size")
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "generation.json"))
    args = parser.parse_args(argv)

    assets = require_assets(args.assets)
    photos = sorted(p for p in (assets / "photos").iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    photos = [p for p in photos for _ in range(args.copies)]
    resolved = str(resolve_dtype(args.dtype, torch.device(args.device))).removeprefix("torch.")
    ways = ["loop", "build"] + (["build_fp32"] if resolved != "float32" else [])
    runs: dict[str, list[dict]] = {way: [] for way in ways}
    for _ in range(args.repeats):
        for way in ways:
            tmp = Path(tempfile.mkdtemp(prefix=f"bench-{way}-"))
            try:
                if way == "loop":
                    run = per_image_loop(photos, assets / "weights", tmp, args.max_side, args.crop, args.device)
                else:
                    listing = tmp / "photos.txt"
                    listing.write_text("".join(f"{p.resolve()}\n" for p in photos))
                    dtype = "fp32" if way == "build_fp32" else args.dtype
                    run = sefdata_build(listing, assets / "weights", tmp / "out", args.max_side, args.crop,
                                        args.device, dtype, args.batch_size)  # fmt: skip
                runs[way].append(run)
            finally:
                shutil.rmtree(tmp)
    best = {way: min(r, key=lambda x: x["seconds"]) for way, r in runs.items()}
    n = len(photos)
    rate = {way: n / best[way]["seconds"] for way in best}
    outside = {way: 1 - best[way]["model_seconds"] / best[way]["seconds"] for way in best}
    result = {
        "headline": {"metric": "build_over_loop_images_per_second", "value": round(rate["build"] / rate["loop"], 3),
                     "unit": "x"},
        "images": n,
        "max_side": args.max_side,
        "crop": args.crop,
        "device": args.device,
        "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None,
        "build_dtype": {"asked": args.dtype, "resolved": best["build"]["dtype"],
                        "native_bf16": native_bf16(torch.device(args.device))},
        "fakes_psnr_db_against_real": {way: best[way]["psnr_db"] for way in ways if way != "loop"},
        "build_batch_size": args.batch_size,
        "images_per_second": {k: round(v, 3) for k, v in rate.items()},
        "share_of_wall_time_outside_model": {k: round(v, 3) for k, v in outside.items()},
        "seconds": {k: [round(r["seconds"], 2) for r in v] for k, v in runs.items()},
        "build_timings": best["build"]["timings"],
        "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "processor": platform.processor(),
                    "torch": torch.__version__, "python": platform.python_version()},
        "assets": str(assets),
    }  # fmt: skip
    if "build_fp32" in best:
        result["build_fp32_over_loop"] = round(rate["build_fp32"] / rate["loop"], 3)
        result["build_fp32_timings"] = best["build_fp32"]["timings"]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("images_per_second", "share_of_wall_time_outside_model")}))
    print(f"build_over_loop_images_per_second: {result['headline']['value']}x")
    return result


if __name__ == "__main__":
    main()
