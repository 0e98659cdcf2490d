"""Re-create the demo kit in examples/ from the shared assets (how it was made; not needed to run the demo).

Usage: python examples/make_kit.py [ASSETS_DIR]   (default: ../shared/assets)

Photos larger than 640 px are downscaled (Lanczos); PNGs stay PNG. JPEGs are re-encoded with their *own*
quantisation tables and chroma subsampling, so the kit still exercises the `match` encoding policy with real camera
tables.

The MobileNetV2 backbone is converted to a smaller transformers folder (see ``convert_backbone``): the ImageNet
classifier head is dropped (``MobileNetV2Model`` has none) and the weights are stored as fp16 safetensors; the
config says ``dtype: float32``, so transformers loads it back as float32 (CPU training needs fp32).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path

from PIL import Image, JpegImagePlugin

PHOTOS = ["chelsea.png", "coffee.png", "rocket.jpg", "hubble_deep_field.jpg", "retina.jpg", "astronaut.png",
          "ihc.png", "kodim03.png", "kodim04.png", "kodim07.png"]  # fmt: skip
WEIGHTS = ["realesr-animevideov3.pth", "taef2_encoder.pth", "taef2_decoder.pth", "taesd-LICENSE.txt"]
BACKBONE = "mobilenet_v2_1.0_224"
MAX_SIDE = 640


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def convert_backbone(source: Path, out: Path) -> None:
    """The shared fp32 MobileNetV2 (with classifier) -> ``out``: backbone only, fp16 tensors, fp32 load dtype."""
    import torch
    from transformers import MobileNetV2Model

    model = MobileNetV2Model.from_pretrained(source, dtype=torch.float32, use_safetensors=True)
    model.half().save_pretrained(out, safe_serialization=True)
    config = json.loads((out / "config.json").read_text())
    config["dtype"] = "float32"  # tensors are fp16 on disk; loading upcasts them
    for key in ("id2label", "label2id", "architectures"):
        config.pop(key, None)  # no classifier head here
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    shutil.copyfile(source / "preprocessor_config.json", out / "preprocessor_config.json")
    shutil.copyfile(source / "LICENSE-coral-test_data.txt", out / "LICENSE-coral-test_data.txt")
    print(f"{out / 'model.safetensors'}: sha256 {sha256(out / 'model.safetensors')}")


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
        if img.format == "PNG":
            small.save(out, "PNG")
            continue
        small.save(out, "JPEG", qtables=img.quantization, subsampling=JpegImagePlugin.get_sampling(img),
                   icc_profile=img.info.get("icc_profile"))  # fmt: skip
    for name in WEIGHTS:
        shutil.copyfile(assets / "weights" / name, here / "weights" / name)
    convert_backbone(assets / "weights" / BACKBONE, here / "weights" / BACKBONE)


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "../shared/assets"))
