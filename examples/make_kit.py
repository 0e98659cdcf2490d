"""Re-create the demo kit in examples/ from the shared assets (how it was made; not needed to run the demo).

Usage: python examples/make_kit.py [ASSETS_DIR]   (default: ../shared/assets)

Photos larger than 640 px are downscaled (Lanczos). JPEGs are re-encoded with their *own* quantisation tables and
chroma subsampling, so the kit still exercises the `match` encoding policy with real camera tables.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from PIL import Image, JpegImagePlugin

PHOTOS = ["chelsea.png", "coffee.png", "rocket.jpg", "hubble_deep_field.jpg", "retina.jpg"]
WEIGHTS = ["realesr-animevideov3.pth", "taef2_encoder.pth", "taef2_decoder.pth", "taesd-LICENSE.txt"]
MAX_SIDE = 640


def main(assets: Path) -> None:
    here = Path(__file__).parent
    for name in PHOTOS:
        img = Image.open(assets / "photos" / name)
        out = here / "photos" / name
        if max(img.size) <= MAX_SIDE:
            shutil.copyfile(assets / "photos" / name, out)
            continue
        scale = MAX_SIDE / max(img.size)
        small = img.convert("RGB").resize((round(img.width * scale), round(img.height * scale)), Image.LANCZOS)
        small.save(out, "JPEG", qtables=img.quantization, subsampling=JpegImagePlugin.get_sampling(img),
                   icc_profile=img.info.get("icc_profile"))  # fmt: skip
    for name in WEIGHTS:
        shutil.copyfile(assets / "weights" / name, here / "weights" / name)


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "../shared/assets"))
