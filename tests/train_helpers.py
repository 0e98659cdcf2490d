"""Shared by the tests/test_train_*.py files (imported explicitly): tiny shards built with sefdata and tiny random
generators, and training configs on the tiny backbones of conftest_model. Everything offline, CPU, seconds."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import photo_like
from conftest_model import SIZE, TINY
from PIL import Image

from sefdata.build import build
from sefdata.config import BuildConfig
from sefmodel.train import TrainConfig
from sefmodel.train.augment import AugmentConfig

TINY_DETECTOR = {"backbone": "dinov2", "backbone_config": TINY["dinov2"], "processor": {"size": SIZE},
                 "lora": {"rank": 4, "blocks": "last:2"}, "gate_hidden": 16}  # fmt: skip


def write_photos(folder: Path, count: int, seed: int, size: tuple[int, int] = (48, 40)) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        Image.fromarray(photo_like(*size, seed=seed + i)).save(folder / f"img{seed + i:04d}.png")
    return folder


def build_shards(out: Path, photos: Path, gens: list[str], shard_size: int) -> Path:
    build(BuildConfig(sources=[str(photos)], out=str(out), gen=gens, shard_size=shard_size, batch_size=4),
          progress=False)  # fmt: skip
    return out


@pytest.fixture(scope="module")
def tiny_gens(tiny_sr_file, tiny_taesd_files) -> list[str]:
    enc, dec = tiny_taesd_files
    return [f"taesd:encoder={enc},decoder={dec}", f"sr:weights={tiny_sr_file},scale=2"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory, tiny_gens) -> dict[str, Path]:
    """train: 16 samples in 8 shards; val: 6 samples (other photos) in 2 shards. Fields real, taesd, sr."""
    root = tmp_path_factory.mktemp("train_shards")
    train = build_shards(root / "train", write_photos(root / "photos_train", 16, 0), tiny_gens, 2)
    val = build_shards(root / "val", write_photos(root / "photos_val", 6, 100), tiny_gens, 3)
    return {"train": train, "val": val}


def tiny_train_config(out: Path, data: Path, **overrides) -> TrainConfig:
    kwargs = dict(
        data=[str(data)], out=str(out), stage="expert", domain="recon", detector=dict(TINY_DETECTOR), steps=4,
        batch_size=4, lr=1e-3, warmup=0.25, num_workers=0, shuffle_buffer=4, augment=AugmentConfig(),
        val_every=2, save_every=2, log_every=1,
    )  # fmt: skip
    kwargs.update(overrides)
    if kwargs.get("stage") == "fusion":
        kwargs["detector"] = {"gate_hidden": 16}
    return TrainConfig(**kwargs)


def write_contract_shards(folder: Path, shards: int, per_shard: int, fakes: tuple[str, ...] = ("vae", "sr"),
                          identical: bool = False, size: tuple[int, int] = (40, 36)) -> list[str]:  # fmt: skip
    """Shards written directly in the data contract's layout (no generator): ``real.png`` + one PNG per fake field
    + ``json``. ``identical=True`` stores the real's bytes as every fake, so any difference after augmentation can
    only come from the augmentation itself."""
    import io
    import json

    from webdataset import TarWriter

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for s in range(shards):
        path = folder / f"shard-{s:06d}.tar"
        with TarWriter(str(path), encoder=False) as tar:
            for i in range(per_shard):
                n = s * per_shard + i
                images = {"real": photo_like(*size, seed=1000 + n)}
                for j, name in enumerate(fakes):
                    images[name] = images["real"] if identical else photo_like(*size, seed=5000 + 10 * n + j)
                sample = {"__key__": f"s{n:04d}"}
                for name, pixels in images.items():
                    buf = io.BytesIO()
                    Image.fromarray(pixels).save(buf, "PNG")
                    sample[f"{name}.png"] = buf.getvalue()
                sample["json"] = json.dumps({"key": f"s{n:04d}"}).encode()
                tar.write(sample)
        paths.append(str(path))
    return paths
