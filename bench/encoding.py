"""Encoding throughput per core: the toolkit's PNG writer against Pillow's, and `match` JPEG, on 512-px photo crops.

Both PNG writers are lossless; the baseline is Pillow at zlib level 1 (what the build used before, and the fastest
level Pillow offers). Each side encodes the same crops in this process, one thread, interleaved, ``--repeats``
times; the file reports median images/s with the spread (min, max), bytes per image, and checks that every PNG
decodes to exactly its pixels. `match` JPEG (the source's own quantisation tables and subsampling, as the build
writes JPEG sources) is measured the same way, beside them, both as the toolkit writes it (Pillow into a per-thread
in-memory file, the GIL released) and as Pillow writes into a Python buffer (the GIL held).

``on_all_cores``: the same JPEG encodes spread over one thread per core (``--threads``, default: the cores this
process may use), as the build's encoder pool runs them: the toolkit's way against Pillow into a buffer, interleaved
with the single-thread runs. A writer that holds the GIL gains nothing from a second thread.

Writes bench/results/encoding.json; the last line printed is the headline (PNG speed-up per core).

Usage: python bench/encoding.py [--assets DIR] [--side 512] [--repeats 5] [--threads N] [--out FILE]
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from sefcore.imageio import decode
from sefdata.assets import find_assets
from sefdata.build import available_cores
from sefdata.encode import EncodingPolicy, encode, encode_png, encoding_for

RESULTS = Path(__file__).resolve().parent / "results" / "encoding.json"


def pillow_png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG", compress_level=1)
    return buf.getvalue()


def pillow_to_buffer(pixels: np.ndarray, encoding) -> bytes:
    """Pillow writing into a Python buffer, as most code does (and the build did): libjpeg runs with the GIL held."""
    buf = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buf, format=encoding.pil_format, **dict(encoding.options))
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


def rate_on(pool: ThreadPoolExecutor, fn, items, copies: int) -> float:
    """Images per second of ``copies`` passes over ``items`` spread over ``pool``'s threads."""
    start = time.perf_counter()
    for _ in pool.map(fn, items * copies):
        pass
    return len(items) * copies / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--assets", help="folder with photos/ (default: $SEF_ASSETS, ../shared/assets, examples/)")
    parser.add_argument("--side", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=available_cores(),
                        help="threads for on_all_cores (default: the cores this process may use)")  # fmt: skip
    parser.add_argument("--out", type=Path, default=RESULTS, help="results file (default: bench/results/encoding.json)")
    args = parser.parse_args()
    if args.threads < 1 or args.repeats < 1:
        parser.error("--threads and --repeats must be at least 1")
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
        "jpeg_match_pillow_buffer": (lambda item: pillow_to_buffer(*item), jpegs),
    }
    for item in jpegs:  # the two JPEG ways write the same file
        assert encode(*item) == pillow_to_buffer(*item)
    threaded = {name: sides[name] for name in ("jpeg_match_pillow", "jpeg_match_pillow_buffer")}
    copies = max(1, 200 // max(1, len(jpegs)))  # about 200 encodes per timed pass
    runs: dict[str, list[float]] = {name: [] for name in sides}
    runs_threaded: dict[str, list[float]] = {name: [] for name in threaded}
    nbytes: dict[str, int] = {}
    with ThreadPoolExecutor(args.threads) as pool:
        for _ in range(args.repeats):  # interleaved: each repeat runs every side once
            for name, (fn, items) in sides.items():
                if items:
                    r, total = rate(fn, items)
                    runs[name].append(r)
                    nbytes[name] = total // len(items)
            for name, (fn, items) in threaded.items():
                if items:
                    runs_threaded[name].append(rate_on(pool, fn, items, copies))

    def summary(values: list[float]) -> dict:
        return {"median": round(statistics.median(values), 2), "min": round(min(values), 2),
                "max": round(max(values), 2)}  # fmt: skip

    speedup = [t / p for t, p in zip(runs["png_toolkit"], runs["png_pillow_level1"], strict=True)]
    ours, buffered = runs_threaded["jpeg_match_pillow"], runs_threaded["jpeg_match_pillow_buffer"]
    jpeg_ratio = [t / b for t, b in zip(ours, buffered, strict=True)]
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
        "on_all_cores": {
            "threads": args.threads,
            "encodes_per_pass": len(jpegs) * copies,
            "images_per_second": {name: summary(v) for name, v in runs_threaded.items() if v},
            "jpeg_toolkit_over_pillow_buffer": round(statistics.median(jpeg_ratio), 3) if jpeg_ratio else None,
            "jpeg_toolkit_over_pillow_buffer_per_repeat": [round(r, 3) for r in jpeg_ratio],
        },
        "machine": {"cpu": platform.processor() or platform.machine(), "python": platform.python_version()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    per_core = results["images_per_second_per_core"]
    print(json.dumps(per_core))
    print(f"JPEG on {args.threads} threads: {json.dumps(results['on_all_cores']['images_per_second'])}")
    print(
        f"PNG per core: {per_core['png_toolkit']['median']} img/s vs Pillow level 1 "
        f"{per_core['png_pillow_level1']['median']} img/s = {results['headline']['value']}x, "
        f"{results['png_bytes_toolkit_over_pillow']}x the bytes"
    )


if __name__ == "__main__":
    main()
