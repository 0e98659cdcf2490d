"""Encoding throughput per core: the toolkit's PNG writer against Pillow's, and `match` JPEG, on 512-px photo crops.

Both PNG writers are lossless; the baseline is Pillow at zlib level 1 (what the build used before, and the fastest
level Pillow offers). Each side encodes the same crops in this process, one thread, interleaved, ``--repeats``
times; the file reports median images/s with the spread (min, max), bytes per image, and checks that every PNG
decodes to exactly its pixels. `match` JPEG (the source's own quantisation tables and subsampling, as the build
writes JPEG sources) is measured the same way, beside them.

Writes bench/results/encoding.json; the last line printed is the headline (PNG speed-up per core).

Usage: python bench/encoding.py [--assets DIR] [--side 512] [--repeats 5]
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from sefcore.imageio import decode
from sefdata.assets import find_assets
from sefdata.encode import EncodingPolicy, encode, encode_png, encoding_for

RESULTS = Path(__file__).resolve().parent / "results" / "encoding.json"


def pillow_png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG", compress_level=1)
    return buf.getvalue()


def crops(photos: Path, side: int) -> tuple[list[np.ndarray], list[tuple[np.ndarray, object]]]:
    """Top-left ``side`` crops of every photo that large (all), and of the JPEG ones with their `match` encoding."""
    everything, jpegs = [], []
    policy = EncodingPolicy.parse("match")
    for path in sorted(photos.iterdir()):
        if path.suffix.lower() not in (".png", ".jpg", ".jpeg"):
            continue
        decoded = decode(path.read_bytes(), max_pixels=10**9)
        if min(decoded.pixels.shape[:2]) < side:
            continue
        px = np.ascontiguousarray(decoded.pixels[:side, :side])
        everything.append(px)
        if decoded.jpeg is not None:
            jpegs.append((px, encoding_for(policy, decoded)))
    return everything, jpegs


def rate(fn, items) -> tuple[float, int]:
    """Images per second and total bytes of one pass of ``fn`` over ``items``."""
    start = time.perf_counter()
    total = sum(len(fn(item)) for item in items)
    return len(items) / (time.perf_counter() - start), total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--assets", help="folder with photos/ (default: $SEF_ASSETS, ../shared/assets, examples/)")
    parser.add_argument("--side", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    assets = find_assets(args.assets, required=("photos",))
    if assets is None:
        sys.exit("no photos: pass --assets DIR (with photos/) or set SEF_ASSETS")
    images, jpegs = crops(assets / "photos", args.side)
    if not images:
        sys.exit(f"no photo of at least {args.side} px in {assets / 'photos'}")
    for px in images:  # lossless, in every reader: the speed-up is not bought with wrong pixels
        with Image.open(io.BytesIO(encode_png(px))) as img:
            assert np.array_equal(np.asarray(img), px)

    sides = {
        "png_pillow_level1": (pillow_png, images),
        "png_toolkit": (encode_png, images),
        "jpeg_match_pillow": (lambda item: encode(*item), jpegs),
    }
    runs: dict[str, list[float]] = {name: [] for name in sides}
    nbytes: dict[str, int] = {}
    for _ in range(args.repeats):  # interleaved: each repeat runs every side once
        for name, (fn, items) in sides.items():
            if items:
                r, total = rate(fn, items)
                runs[name].append(r)
                nbytes[name] = total // len(items)

    def summary(values: list[float]) -> dict:
        return {"median": round(statistics.median(values), 2), "min": round(min(values), 2),
                "max": round(max(values), 2)}  # fmt: skip

    speedup = [t / p for t, p in zip(runs["png_toolkit"], runs["png_pillow_level1"], strict=True)]
    results = {
        "headline": {
            "metric": "png_images_per_second_per_core_over_pillow_level1",
            "value": round(statistics.median(speedup), 3),
            "unit": "x",
        },
        "side": args.side,
        "images": len(images),
        "jpeg_images": len(jpegs),
        "repeats": args.repeats,
        "threads": 1,
        "images_per_second_per_core": {name: summary(v) for name, v in runs.items() if v},
        "png_speedup_per_repeat": [round(s, 3) for s in speedup],
        "bytes_per_image": nbytes,
        "png_bytes_toolkit_over_pillow": round(nbytes["png_toolkit"] / nbytes["png_pillow_level1"], 3),
        "lossless_round_trip_checked": len(images),
        "machine": {"cpu": platform.processor() or platform.machine(), "python": platform.python_version()},
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    per_core = results["images_per_second_per_core"]
    print(json.dumps(per_core))
    print(
        f"PNG per core: {per_core['png_toolkit']['median']} img/s vs Pillow level 1 "
        f"{per_core['png_pillow_level1']['median']} img/s = {results['headline']['value']}x, "
        f"{results['png_bytes_toolkit_over_pillow']}x the bytes"
    )


if __name__ == "__main__":
    main()
