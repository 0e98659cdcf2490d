"""Generation throughput: what share of the models' own speed a `sefdata build` delivers, like for like.

Four ways turn the same photos into the same fakes, in this process, interleaved, ``--repeats`` times:

* ``models_alone`` — the build's own generators (same precision, same batch size, same batching of same-size images)
  on images decoded and aligned beforehand: forward passes and the quantisation to uint8 only, no file read, decode,
  encode or write. The limit a pipeline can reach.
* ``build`` — ``sefdata build`` on the photo files, writing PNG shards (the toolkit's PNG writer).
* ``loop`` — the per-image loop public reconstruction scripts use (open, convert, crop, run each model on one image,
  save), at the build's precision and with the build's PNG writer: the same work without batching or overlap. The
  models are the build's own generators (one implementation: the loop cannot drift from what the build runs).
* ``loop_public`` — that loop as such scripts are written: fp32, Pillow's default PNG. A row beside, not a headline.

Every way works on the same photos: those the build would skip (smaller than ``--crop``, say) are decided once by
the build's own read → decode → align stages, left out of every way and counted in the results (``skipped``), as
``sefdata build`` counts them.

The headline is ``build_over_models_alone`` (build images/s over models-alone images/s); every ratio compares two ways
at one precision and one encoding. Each way's figure is the median over the repeats, with its spread (min, max).

Models: ``--model taef2-sr`` (default: TAEF2 reconstruction and x4 Real-ESRGAN upsampling, the real small weights) or
``--model sd-vae`` (an AutoencoderKL with the Stable Diffusion 2.x VAE's config and random weights: the real one's
FLOPs without a download; use ``--crop 512`` on a GPU).

Results go to bench/results/generation.json under ``runs``, one entry per device and model, each with the machine it
ran on; a run merges its entry into the file and the CPU ``taef2-sr`` run sets the headline. The last line printed is
this run's headline.

Usage: python bench/generation.py [--assets DIR] [--max-side 384] [--repeats 3]
       python bench/generation.py --model sd-vae --crop 128 --max-side 256        # on the CPU
       python bench/generation.py --device cuda --model sd-vae --crop 512 --copies 20 --batch-size 16   # on a GPU
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
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from sefdata.align import common_multiple
from sefdata.assets import find_assets
from sefdata.build import Builder, build
from sefdata.config import BuildConfig, resolve_device, resolve_dtype
from sefdata.encode import encode_png
from sefdata.errors import SkipSample
from sefdata.generators import Runtime, create_generator
from sefdata.sources import iter_sources

RESULTS = Path(__file__).resolve().parent / "results" / "generation.json"

# The Stable Diffusion 2.x VAE (stabilityai/stable-diffusion-2-1, subfolder vae): its architecture, random weights.
SD_VAE_CONFIG = {
    "in_channels": 3, "out_channels": 3, "latent_channels": 4, "layers_per_block": 2, "norm_num_groups": 32,
    "block_out_channels": [128, 256, 512, 512], "act_fn": "silu", "sample_size": 768, "scaling_factor": 0.18215,
    "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
}  # fmt: skip


def generator_specs(model: str, weights: Path, scratch: Path) -> list[str]:
    if model == "taef2-sr":
        return [
            f"taesd:encoder={weights / 'taef2_encoder.pth'},decoder={weights / 'taef2_decoder.pth'},as=taef2",
            f"sr:weights={weights / 'realesr-animevideov3.pth'},scale=4",
        ]
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    AutoencoderKL(**SD_VAE_CONFIG).save_pretrained(scratch / "sd-vae")
    return [f"vae:model={scratch / 'sd-vae'}"]


def config_for(listing: Path, out: Path, specs: list[str], args, dtype: str) -> BuildConfig:
    return BuildConfig(
        sources=[str(listing)], out=str(out), format="png", max_side=args.max_side, crop=args.crop,
        shard_size=100_000, batch_size=args.batch_size, device=args.device, dtype=dtype, seed=0, gen=specs,
    )  # fmt: skip


def sort_photos(photos: list[Path], config: BuildConfig) -> tuple[list[Path], dict[str, list[str]]]:
    """The photos the build takes, and the names of those it skips by reason, decided by the build's own read ->
    decode -> align stages (so a photo smaller than the crop is left out of every way, as ``sefdata build`` leaves
    it out). Loads the models once, untimed: a warm-up for the ways that follow."""
    kept: list[Path] = []
    skipped: dict[str, list[str]] = {}
    builder = Builder(config, progress=False)
    try:
        builder.generators()  # the size multiple the alignment needs
        for photo in photos:
            try:
                builder.prepare(next(iter_sources([str(photo)])))
            except SkipSample as e:
                skipped.setdefault(e.reason, []).append(photo.name)
            else:
                kept.append(photo)
    finally:
        builder.close()
    return kept, skipped


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def models_alone(config: BuildConfig) -> float:
    """Seconds the build's generators take on pre-aligned images, batched as the build batches them."""
    builder = Builder(config, progress=False)
    try:
        builder.generators()  # load the models (untimed), as the build does once
        prepared = [builder.prepare(item) for item in iter_sources(config.sources)]
        by_size: dict[tuple, list] = {}
        for p in prepared:
            by_size.setdefault(p.aligned.pixels.shape, []).append(p)
        batches = [g[i : i + config.batch_size] for g in by_size.values() for i in range(0, len(g), config.batch_size)]
        _sync(config.device)
        start = time.perf_counter()
        for batch in batches:
            builder.generate(batch, Counter())
        _sync(config.device)
        return time.perf_counter() - start
    finally:
        builder.close()


def run_build(config: BuildConfig) -> float:
    start = time.perf_counter()
    build(config, progress=False)
    return time.perf_counter() - start


def per_image_loop(photos: list[Path], config: BuildConfig, out: Path, dtype: torch.dtype, pillow: bool) -> float:
    """One image at a time: open, convert, resize, crop, run each of the build's generators at ``dtype`` on it, save
    the real and the fakes."""
    start = time.perf_counter()
    runtime = Runtime(resolve_device(config.device), dtype)
    generators = [create_generator(spec, runtime) for spec in config.specs()]
    multiple = common_multiple([g.multiple for g in generators])

    def save(px: np.ndarray, path: Path) -> None:
        if pillow:
            Image.fromarray(px).save(path)
        else:
            path.write_bytes(encode_png(px))

    for i, photo in enumerate(photos):
        img = Image.open(photo).convert("RGB")
        if config.max_side and max(img.size) > config.max_side:
            scale = config.max_side / max(img.size)
            img = img.resize((round(img.width * scale), round(img.height * scale)), Image.LANCZOS)
        crop = config.crop
        w, h = (crop, crop) if crop else (img.width // multiple * multiple, img.height // multiple * multiple)
        left, top = ((img.width - w) // 2, (img.height - h) // 2) if crop else (0, 0)
        px = np.asarray(img.crop((left, top, left + w, top + h)))
        x = torch.from_numpy(px.copy()).permute(2, 0, 1)[None].float().div_(255)  # [0, 1], 1x3xHxW, on the CPU
        save(px, out / f"{i}_real.png")
        for j, gen in enumerate(generators):
            y = gen.generate(x, [i]).float().clamp(0, 1)
            save((y[0].permute(1, 2, 0) * 255).round().to(torch.uint8).cpu().numpy(), out / f"{i}_{j}.png")
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--assets", help="folder with photos/ and weights/ (default: $SEF_ASSETS, ../shared/assets)")
    parser.add_argument("--model", choices=("taef2-sr", "sd-vae"), default="taef2-sr")
    parser.add_argument("--max-side", type=int, help="downscale photos to this longer side (384; none with --crop)")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N photos (trial runs)")
    parser.add_argument("--crop", type=int, default=None, help="square centre crop (same-size images batch)")
    parser.add_argument("--copies", type=int, default=1, help="list every photo this many times (more work)")
    parser.add_argument("--images", type=int, help="list the photos over and over up to N images (not --copies)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved runs of every way (median, spread)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (every way runs there)")
    parser.add_argument("--dtype", default="auto", help="precision of the build, models alone and loop")
    parser.add_argument("--batch-size", type=int, default=4, help="build and models-alone batch size")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results JSON (this run merges into its runs)")
    args = parser.parse_args(argv)
    if args.max_side is None and args.crop is None:
        args.max_side = 384  # a crop is cut from the full photo: downscaling first would leave most below the crop

    needs = ("photos", "weights/taef2_encoder.pth") if args.model == "taef2-sr" else ("photos",)
    assets = find_assets(args.assets, required=needs)
    if assets is None:
        raise SystemExit("no assets: pass --assets DIR (with photos/ and weights/) or set SEF_ASSETS")
    photos = sorted(p for p in (assets / "photos").iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    photos = photos[: args.limit]
    dtype = resolve_dtype(args.dtype, torch.device(args.device))
    dtype_name = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}[dtype]
    scratch = Path(tempfile.mkdtemp(prefix="bench-generation-"))
    seconds: dict[str, list[float]] = {w: [] for w in ("models_alone", "build", "loop", "loop_public")}
    try:
        specs = generator_specs(args.model, assets / "weights", scratch)
        listing = scratch / "photos.txt"
        listing.write_text("".join(f"{p.resolve()}\n" for p in photos))
        photos, skipped = sort_photos(photos, config_for(listing, scratch / "sort", specs, args, dtype_name))
        for reason, names in skipped.items():
            print(f"skipped {len(names)} photo(s) as {reason} (as sefdata build does): {', '.join(names)}")
        if not photos:
            raise SystemExit(f"every photo was skipped ({', '.join(skipped)}): lower --crop or raise --max-side")
        photos = [photos[i % len(photos)] for i in range(args.images)] if args.images else photos * args.copies
        listing.write_text("".join(f"{p.resolve()}\n" for p in photos))
        for r in range(args.repeats):
            for way in seconds:  # interleaved: every way once per repeat
                out = scratch / f"{way}-{r}"
                out.mkdir()
                if way == "models_alone":
                    t = models_alone(config_for(listing, out, specs, args, dtype_name))
                elif way == "build":
                    t = run_build(config_for(listing, out, specs, args, dtype_name))
                elif way == "loop":
                    t = per_image_loop(photos, config_for(listing, out, specs, args, dtype_name), out, dtype, False)
                else:
                    t = per_image_loop(photos, config_for(listing, out, specs, args, "fp32"), out, torch.float32, True)
                seconds[way].append(t)
                shutil.rmtree(out)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    n = len(photos)
    rates = {w: [n / s for s in v] for w, v in seconds.items()}

    def spread(values: list[float]) -> dict:
        return {"median": round(statistics.median(values), 3), "min": round(min(values), 3),
                "max": round(max(values), 3)}  # fmt: skip

    def ratio(a: str, b: str) -> dict:  # per repeat, then median and spread
        return spread([x / y for x, y in zip(rates[a], rates[b], strict=True)])

    run = {
        "headline": {
            "metric": "build_over_models_alone",
            "value": ratio("build", "models_alone")["median"],
            "unit": "x",
        },
        "model": args.model,
        "device": args.device,
        "precision": dtype_name,
        "encoding": "PNG by the toolkit's writer (build, loop); loop_public: Pillow PNG at its default level, fp32",
        "images": n,
        "skipped": {reason: {"photos": len(names), "names": names} for reason, names in skipped.items()},
        "max_side": args.max_side,
        "crop": args.crop,
        "batch_size": args.batch_size,
        "repeats": args.repeats,
        "images_per_second": {w: spread(v) for w, v in rates.items()},
        "build_over_models_alone": ratio("build", "models_alone"),
        "build_over_loop": ratio("build", "loop"),
        "build_over_loop_public": ratio("build", "loop_public"),
        "machine": {
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "processor": platform.machine(),
            "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None,
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
    }
    results = json.loads(args.out.read_text()) if args.out.is_file() else {}
    runs = results.get("runs", {}) if "runs" in results else {}
    key = f"{args.device.split(':')[0]}/{args.model}" + (f"/{run['machine']['gpu']}" if run["machine"]["gpu"] else "")
    runs[key] = run
    headline = runs.get("cpu/taef2-sr", run)["headline"]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"headline": headline, "runs": runs}, indent=2) + "\n")
    print(json.dumps({w: v["median"] for w, v in run["images_per_second"].items()}))
    print(f"{key}: build_over_models_alone {run['headline']['value']} (build/loop {run['build_over_loop']['median']})")
    return run


if __name__ == "__main__":
    main()
