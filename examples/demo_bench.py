"""Turn held-out demo shards into a benchmark folder that ``sefmodel eval --bench DIR`` reads (used by make demo).

Usage: python examples/demo_bench.py SHARDS OUT [--tile 96] [--domains recon=taef2 sr=sr_x4]

Every aligned image of a shard is cut into ``--tile`` px tiles at its own resolution (nothing resized) and written as
PNG to ``OUT/<family>/real/`` and ``OUT/<family>/fake/``: one subset per artifact family, each real tile against the
same tile of that family's fake, so the eval report gives AP per family.
"""

from __future__ import annotations

import argparse
import io
import shutil
from pathlib import Path

from PIL import Image

from sefdata.shards import field_key, iter_samples, resolve_shards


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("shards", help="build folder of the held-out photos")
    parser.add_argument("out", type=Path, help="benchmark folder to (re)write")
    parser.add_argument("--tile", type=int, default=96, help="tile side in pixels (the detector's crop)")
    parser.add_argument("--domains", nargs="+", default=["recon=taef2", "sr=sr_x4"], help="FAMILY=FIELD pairs")
    args = parser.parse_args(argv)
    families = dict(item.split("=", 1) for item in args.domains)
    shutil.rmtree(args.out, ignore_errors=True)
    count = 0
    for url in resolve_shards([args.shards]).urls:
        for sample in iter_samples(url):
            images = {}
            for field in ("real", *families.values()):
                images[field] = Image.open(io.BytesIO(sample[field_key(sample, field)])).convert("RGB")
            width, height = images["real"].size
            for top in range(0, height - args.tile + 1, args.tile):
                for left in range(0, width - args.tile + 1, args.tile):
                    box = (left, top, left + args.tile, top + args.tile)
                    name = f"{sample['__key__']}_{top:05d}_{left:05d}.png"
                    for family, field in families.items():
                        for label, image in (("real", images["real"]), ("fake", images[field])):
                            (args.out / family / label).mkdir(parents=True, exist_ok=True)
                            image.crop(box).save(args.out / family / label / name)
                    count += 1
    if not count:
        raise SystemExit(f"no image in {args.shards} is at least {args.tile} px on each side")
    print(f"{count} tiles per class and family in {args.out}")


if __name__ == "__main__":
    main()
