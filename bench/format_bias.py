"""Does aligned training data remove the format shortcut? The same small detector trained on two builds of the same
photos that differ only in how the fakes are encoded, scored under format changes (issue #24, DESIGN.md §11).

Most public training sets pair JPEG reals (ImageNet, LSUN, COCO) with PNG fakes, so a detector can separate them by
the absence of JPEG traces alone ("Fake or JPEG?", Grommelt et al. 2024). ``sefdata build --format match`` encodes
each fake the way its real was encoded. This bench measures what that changes, on the CPU, offline:

1. **Photos.** The shared photos, split by photo as ``bench/learning.py`` does (train / validation / held-out), each
   downscaled to ``--max-side`` and cut into ``--tile`` px tiles. Every tile is then stored as a JPEG the way its
   photo was: with the photo's own quantisation tables and chroma subsampling (a JPEG photo), or at quality
   ``PNG_PHOTO_QUALITY`` 4:2:0 (the PNG photos). The lossless tile is kept beside it.
2. **Two builds of the JPEG tiles** with ``sefdata.build`` and the real generators (TAEF2 reconstruction, x4 GAN
   upsampling with Real-ESRGAN compact), one seed, so both builds hold the same fake pixels before encoding:

   * **misaligned** (``--format png``): each fake stored losslessly beside a real that carries JPEG traces, what
     most public training sets are;
   * **aligned** (``--format match``): each fake JPEG-encoded with its real's tables and subsampling.
3. **Detectors.** One LoRA on both families (``--stage mixed``) on the frozen pretrained MobileNetV2, per build and
   per setting: the learning bench's chosen setting (high-pass input, spectrum feature, the toolkit's default
   paired augmentation, which includes JPEG) and the same without degradation augmentation (crops and flips only,
   as most public recipes train). Each keeps its best checkpoint on its own build's validation photos; nothing is
   chosen on the held-out photos.
4. **Conditions** on the held-out tiles, each real tile against the same tile's fake of each family (1:1):

   * ``misaligned_as_built``: JPEG real vs lossless fake (the misaligned build's held-out);
   * ``aligned_as_built``: the aligned build's held-out: the real and its fakes each JPEG-encoded with the tile's
     tables (the build re-encodes its real too);
   * ``dda_jpeg96``: both re-encoded at JPEG 96 (``sefmodel eval --robustness dda``);
   * ``reversed``: the lossless real vs the fake JPEG-encoded with the real's tables (the shortcut turned around);
   * ``social``: both through the social-media chain (``sefmodel eval --robustness social``: downscale, JPEG 75-95,
     WebP).

5. **Control** (``format_control``): real against real, the lossless tile against its own JPEG. A detector blind to
   the format ranks them at chance (AUROC 0.5); ``format_auroc`` > 0.5 means it calls the lossless copy generated
   more often (the shortcut); the ``shortcut`` is ``2 * |format_auroc - 0.5|`` (0 blind, 1 decided by format alone).

Reported per detector: per-family AP (pooled over the held-out photos; chance 0.5) and their mean per condition,
and the control. The headline is the aligned minus the misaligned detector's mean AP over the three conditions that
change the format (``dda_jpeg96``, ``reversed``, ``social``), at the chosen setting.

    python bench/format_bias.py                    # about 15 minutes on 2 idle CPU cores
    python bench/format_bias.py --data-dir /tmp/fb # keep the tiles and builds for a rerun
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
from PIL import Image, JpegImagePlugin

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the learning bench's splits, tiles and trainer calls
import learning

from sefcore.privacy import public_json
from sefdata.assets import find_assets
from sefmodel.evaluation.metrics import auroc
from sefmodel.evaluation.perturb import PRESETS
from sefmodel.pipeline import score as score_images
from sefmodel.train.data import iter_samples, resolve_shards

RESULTS = Path(__file__).resolve().parent / "results" / "format_bias.json"
FAMILIES = learning.FAMILIES  # family -> shard field of its fakes
PNG_PHOTO_QUALITY = 90  # the JPEG quality a PNG photo's tiles get (the JPEG photos' own range is 70-98)
BUILDS = {"misaligned": "png", "aligned": "match"}  # build -> sefdata --format
SETTINGS = {
    "chosen": learning.CANDIDATES[0],
    "no_degradation_aug": {**learning.CANDIDATES[0], "augment": "flip"},
}
FORMAT_CHANGES = ("dda_jpeg96", "reversed", "social")
DDA, SOCIAL = PRESETS["dda"].specs[0], PRESETS["social"].specs[0]  # the named eval protocols


def jpeg_like(image: Image.Image, photo: Image.Image) -> bytes:
    """``image`` as a JPEG encoded the way ``photo`` was: its tables and subsampling, or PNG_PHOTO_QUALITY."""
    buf = io.BytesIO()
    if photo.format == "JPEG":
        sampling = JpegImagePlugin.get_sampling(photo)
        image.save(buf, "JPEG", qtables=photo.quantization, subsampling=max(sampling, 0))
    else:
        image.save(buf, "JPEG", quality=PNG_PHOTO_QUALITY, subsampling=2)
    return buf.getvalue()


def make_tiles(path: Path, folder: Path, tile: int, max_side: int) -> int:
    """Lossless tiles (``lossless/``, the learning bench's) and the same tiles as the photo's JPEG (``jpeg/``)."""
    count = learning.tile_photo(path, folder / "lossless", tile, max_side)
    (folder / "jpeg").mkdir(parents=True, exist_ok=True)
    with Image.open(path) as photo:
        for png in sorted((folder / "lossless").glob("*.png")):
            with Image.open(png) as im:
                (folder / "jpeg" / f"{png.stem}.jpg").write_bytes(jpeg_like(im.convert("RGB"), photo))
    return count


def make_photo(path: Path, data: Path, args: argparse.Namespace, weights: Path) -> Path:
    """Tiles and both builds of one photo under ``data``; a finished set for the same photo is reused."""
    folder = data / learning.photo_key(path)
    wanted = json.dumps([path.name, path.stat().st_size, args.tile, args.max_side, PNG_PHOTO_QUALITY, args.seed])
    listing = folder / "photo.json"
    if listing.is_file() and listing.read_text() == wanted:
        return folder
    from sefdata.build import build  # the generators' libraries load only when something is built
    from sefdata.config import BuildConfig

    shutil.rmtree(folder, ignore_errors=True)
    if not make_tiles(path, folder, args.tile, args.max_side):
        shutil.rmtree(folder)
        raise SystemExit(f"{path.name}: smaller than one {args.tile} px tile after downscaling to {args.max_side}")
    gens = learning.generators(weights)
    for name, fmt in BUILDS.items():
        build(BuildConfig(sources=[str(folder / "jpeg")], out=str(folder / name), gen=gens, format=fmt, shard_size=64,
                          batch_size=16, seed=args.seed, device=args.build_device), progress=False)  # fmt: skip
    listing.write_text(wanted)
    return folder


def sample_stems(shards: Path) -> list[str]:
    """The source tile's stem of each sample of a build, in the order ``learning.load_photo`` reads them."""
    return [Path(json.loads(sample["json"])["source"]).stem
            for url in resolve_shards([str(shards)]).urls for sample in iter_samples(url)]  # fmt: skip


def load_photo(folder: Path) -> dict[str, list[Image.Image]]:
    """One photo's images, tile by tile in the same order: ``real_jpeg`` (the JPEG tile, which the misaligned build
    stores losslessly), ``real_aligned`` (the aligned build's real: the tile re-encoded with its own tables),
    ``real_lossless`` (the tile before JPEG), and per family ``F_lossless`` / ``F_jpeg`` (the misaligned and the
    aligned build's fake)."""
    misaligned, aligned = learning.load_photo(folder / "misaligned"), learning.load_photo(folder / "aligned")
    stems = sample_stems(folder / "misaligned")
    if stems != sample_stems(folder / "aligned"):
        raise RuntimeError(f"{folder.name}: the two builds hold different tiles")
    out = {"real_jpeg": misaligned["real"], "real_aligned": aligned["real"], "real_lossless": []}
    for stem, real in zip(stems, misaligned["real"], strict=True):
        with Image.open(folder / "lossless" / f"{stem}.png") as im:
            out["real_lossless"].append(im.convert("RGB"))
        with Image.open(folder / "jpeg" / f"{stem}.jpg") as im:
            if not np.array_equal(np.asarray(im.convert("RGB")), np.asarray(real)):
                raise RuntimeError(f"{folder.name}/{stem}: the misaligned build's real is not its JPEG tile")
    for family, field in FAMILIES.items():
        out[f"{family}_lossless"], out[f"{family}_jpeg"] = misaligned[field], aligned[field]
    return out


def conditions(photo: dict[str, list[Image.Image]], name: str) -> dict[str, dict[str, list[Image.Image]]]:
    """Each condition's reals and per-family fakes for one photo's tiles (``name`` seeds the social chain)."""

    def each(images: list[Image.Image], tag: str, spec) -> list[Image.Image]:
        return [spec.apply(im, f"{name}/{tag}/{i}") for i, im in enumerate(images)]

    fam = FAMILIES
    return {
        "misaligned_as_built": {"real": photo["real_jpeg"], **{f: photo[f"{f}_lossless"] for f in fam}},
        "aligned_as_built": {"real": photo["real_aligned"], **{f: photo[f"{f}_jpeg"] for f in fam}},
        "dda_jpeg96": {"real": each(photo["real_jpeg"], "real", DDA),
                       **{f: each(photo[f"{f}_lossless"], f, DDA) for f in fam}},
        "reversed": {"real": photo["real_lossless"], **{f: photo[f"{f}_jpeg"] for f in fam}},
        "social": {"real": each(photo["real_jpeg"], "real", SOCIAL),
                   **{f: each(photo[f"{f}_lossless"], f, SOCIAL) for f in fam}},
    }  # fmt: skip


def score(detector, held: dict[str, dict[str, list[Image.Image]]]) -> dict:
    """Per condition, per-family pooled AP and their mean; the real-vs-real format control."""
    out: dict = {}
    scored: dict[int, np.ndarray] = {}  # conditions share image lists (the as-built reals, the JPEG fakes): once each

    def probs(images: list[Image.Image]) -> np.ndarray:
        if id(images) not in scored:
            scored[id(images)] = score_images(detector, images, batch_size=64).probs.numpy()
        return scored[id(images)]

    per_photo = {p: conditions(images, p) for p, images in held.items()}
    for cond in next(iter(per_photo.values())):
        scores = {p: {"real": probs(c[cond]["real"]), **{FAMILIES[f]: probs(c[cond][f]) for f in FAMILIES}}
                  for p, c in per_photo.items()}  # fmt: skip
        full = learning.analyse(scores)
        out[cond] = {k: full[k] for k in (*FAMILIES, "map")}
    lossless = np.concatenate([probs(images["real_lossless"]) for images in held.values()])
    jpeg = np.concatenate([probs(images["real_jpeg"]) for images in held.values()])
    area = auroc(np.r_[np.ones(len(lossless)), np.zeros(len(jpeg))], np.r_[lossless, jpeg])
    out["format_control"] = learning._r({
        "format_auroc": area, "shortcut": 2 * abs(area - 0.5),
        "mean_p_lossless": lossless.mean(), "mean_p_jpeg": jpeg.mean(),
    })  # fmt: skip
    out["format_changes_map"] = learning._r(float(np.mean([out[c]["map"] for c in FORMAT_CHANGES])))
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--settings", default=",".join(SETTINGS), help="which settings to train (comma-separated)")
    learning.add_training_args(parser)
    parser.add_argument("--photos", type=Path, default=None, help="photo folder (default: the shared assets' photos)")
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"results JSON (default: {RESULTS.name})")
    args = parser.parse_args(argv)
    settings = [s for s in args.settings.split(",") if s]
    unknown = set(settings) - set(SETTINGS)
    if unknown or not settings:
        raise SystemExit(f"--settings: unknown {sorted(unknown)}; known: {', '.join(SETTINGS)}")
    torch.set_num_threads(args.threads)
    learning.DEVICE = args.device
    assets = find_assets()
    if assets is None:
        raise SystemExit("no assets: set SEF_ASSETS to a folder with photos/ and weights/ (or run from the repo)")
    backbone = learning.find_backbone(args.backbone_id)
    photo_dir = args.photos or assets / "photos"
    learning.SHARED_PHOTOS = photo_dir.resolve()
    split = learning.split_by_photo(learning.list_photos(photo_dir))
    if any(not part for part in split.values()):
        raise SystemExit(f"{photo_dir}: at least 4 photos are needed (train, validation and held-out)")
    work = Path(tempfile.mkdtemp(prefix="sef_format_bias_"))
    started = time.perf_counter()
    try:
        data_dir = args.data_dir or work / "data"
        folders = {p: make_photo(p, data_dir, args, assets / "weights") for part in split.values() for p in part}
        build_s = time.perf_counter() - started
        held = {learning.photo_key(p): load_photo(folders[p]) for p in split["heldout"]}
        results: dict = {}
        train_s: dict[str, float] = {}
        for build_name in BUILDS:
            shards = {part: [folders[p] / build_name for p in split[part]] for part in ("train", "val")}
            runs = learning.Runs(work / build_name, shards, args, backbone)
            for setting_name in settings:
                setting = {**SETTINGS[setting_name], "steps": args.steps or SETTINGS[setting_name]["steps"]}
                tag = f"{build_name}_{setting_name}"
                best = runs.lora(tag, setting, "mixed")
                train_s[tag] = runs.seconds[tag]
                results[tag] = {"best_checkpoint": runs.best_step[tag], **score(learning.load(best), held)}
                row = results[tag]
                aps = "  ".join(f"{c} {v['map']:.3f}" for c, v in row.items() if isinstance(v, dict) and "map" in v)
                print(f"{tag:32s} {aps}  format AUROC {row['format_control']['format_auroc']:.3f}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    out = summarize(results, settings, split, held, args)
    out["seconds"] = {"tile_and_build_s": round(build_s, 1), "train_s": train_s,
                      "total_s": round(time.perf_counter() - started, 1)}  # fmt: skip
    out["machine"] = {"cpu_count": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(public_json(out), indent=2) + "\n")  # no local paths in a published file
    headline = out["headline"]
    print(f"{headline['metric']}: {headline['value']:+.4f} ({headline['unit']})")
    return out


def summarize(results: dict, settings: list[str], split: dict, held: dict, args: argparse.Namespace) -> dict:
    setting = "chosen" if "chosen" in settings else settings[0]
    gap = results[f"aligned_{setting}"]["format_changes_map"] - results[f"misaligned_{setting}"]["format_changes_map"]
    return {
        "headline": {"metric": "aligned_minus_misaligned_ap_under_format_changes", "value": learning._r(gap),
                     "unit": "AP"},
        "headline_is": f"at the {setting} setting, the aligned minus the misaligned detector's mean per-family AP "
        f"over the conditions that change the format ({', '.join(FORMAT_CHANGES)}), held-out photos, scored once",
        "detectors": results,
        "detectors_are": "BUILD_SETTING: one LoRA on both families (--stage mixed) trained on BUILD (misaligned: "
        "JPEG reals, lossless fakes; aligned: each fake JPEG-encoded with its real's tables), at SETTING",
        "settings": {s: SETTINGS[s] for s in settings},
        "conditions_are": {
            "misaligned_as_built": "JPEG real vs lossless fake",
            "aligned_as_built": "JPEG real vs the fake JPEG-encoded with the real's tables",
            "dda_jpeg96": f"both re-encoded: {PRESETS['dda'].help}",
            "reversed": "the lossless real vs the fake JPEG-encoded with the real's tables",
            "social": f"both through {PRESETS['social'].help}",
            "format_control": "real vs real: the lossless tile against its own JPEG (AUROC of calling the lossless "
            "copy generated; 0.5 = blind to the format; shortcut = 2 |AUROC - 0.5|)",
        },
        "columns": "per family: AP pooled over the held-out photos (each real tile vs that family's fake of the same "
        "tile, 1:1, chance 0.5); map: their mean; format_changes_map: the mean of map over "
        f"{', '.join(FORMAT_CHANGES)}",
        "photos": {k: [learning.photo_key(p) for p in v] for k, v in split.items()},
        "heldout_tiles": sum(len(images["real_jpeg"]) for images in held.values()),
        "data": {"tile": args.tile, "max_side": args.max_side, "png_photo_jpeg_quality": PNG_PHOTO_QUALITY,
                 "generators": {"taesd": "TAEF2 (taef2_encoder/decoder.pth)", "sr": "realesr-animevideov3 x4"},
                 "builds": {k: f"sefdata build --format {v}" for k, v in BUILDS.items()}},
        "training": {"batch": args.batch, "lora_rank": args.lora_rank, "steps": args.steps, "seed": args.seed,
                     "threads": args.threads, "device": args.device,
                     "checkpoint": "each run's best mean per-family AP on its own build's validation photos"},
    }  # fmt: skip


if __name__ == "__main__":
    main()
