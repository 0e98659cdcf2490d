"""One image processor: training, validation, scoring and Grad-CAM see the same pixels; saved with the detector."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from conftest import photo_like
from conftest_model import randomize_trained, tiny_detector
from PIL import Image
from train_helpers import TINY_DETECTOR, tiny_train_config, write_contract_shards

from sefmodel import ImageProcessor, SEFDetector
from sefmodel.augment import AugmentConfig
from sefmodel.data import EvalStream, PairStream, iter_samples
from sefmodel.metrics import detection_metrics

DOMAINS = {"recon": ["vae"], "sr": ["sr"]}
# (47, 40): the free room 15 x 8 is odd along x, where a rounded and a floored centre differ; (20, 50): narrower
# than the 32-px crop (padded or upscaled); (80, 36): several crops along x for crop="multi"
SIZES = [(47, 40), (20, 50), (80, 36)]
SETTINGS = [
    pytest.param("dinov2", {}, id="vit-native"),
    pytest.param("dinov2", {"resize": 40, "small": "upscale"}, id="vit-resize-upscale"),
    pytest.param("mobilenet_v2", {"resize": 36}, id="cnn-resize"),
    pytest.param("resnet", {"crop": "multi"}, id="cnn-multi"),
]


def _shards(folder, size, count=2) -> list[str]:
    return write_contract_shards(folder, 1, count, size=size)


def _scored_pixels(detector: SEFDetector, images, crop=None) -> torch.Tensor:
    """The tensors score() feeds the detector, caught on their way in."""
    seen = []
    handle = detector.register_forward_pre_hook(lambda module, args: seen.append(args[0].clone()))
    try:
        detector.score(images, batch_size=64, crop=crop)
    finally:
        handle.remove()
    return torch.cat(seen)


@pytest.mark.parametrize(("family", "settings"), SETTINGS)
def test_validation_feeds_the_detector_exactly_what_score_feeds_it(tmp_path, family, settings):
    detector = tiny_detector(family, **settings)
    for i, size in enumerate(SIZES):
        urls = _shards(tmp_path / str(i), size)
        stream = EvalStream(urls, DOMAINS, batch=64, processor=detector.processor)
        (batch,) = list(stream)
        # the stream holds real, vae, sr per sample; score the same decoded images in the same order
        images = [img for s in iter_samples(urls[0]) for f in ("real", "vae", "sr")
                  for img in [Image.open(io.BytesIO(s[f"{f}.png"]))]]  # fmt: skip
        scored = _scored_pixels(detector, images)
        assert torch.equal(batch["pixels"], scored), size
        counts = torch.bincount(batch["image"]).tolist()
        assert counts == [len(detector.processor(img)) for img in images]


def test_validation_averages_crops_per_image_like_score(tmp_path):
    detector = randomize_trained(tiny_detector("dinov2", crop="multi"))
    urls = _shards(tmp_path, (80, 32), count=3)
    batch = next(iter(EvalStream(urls, DOMAINS, batch=64, processor=detector.processor)))
    assert len(batch["pixels"]) == 3 * 3 * 3 and len(batch["labels"]) == 3 * 3  # 3 crops along x, 1 along y
    with torch.no_grad():
        probs = detector(batch["pixels"])["logits"].sigmoid()
    per_image = torch.zeros(len(batch["labels"])).index_add_(0, batch["image"], probs) / 3
    images = [Image.open(io.BytesIO(s[f"{f}.png"])) for s in iter_samples(urls[0]) for f in ("real", "vae", "sr")]
    torch.testing.assert_close(per_image, detector.score(images).probs)


def test_the_trainer_validates_on_the_probabilities_score_gives(tmp_path):
    """The best checkpoint is picked on validation metrics: they must be eval's, crop by crop."""
    from sefmodel.train.trainer import Trainer

    train = tmp_path / "train"
    write_contract_shards(train, 2, 2)
    val = tmp_path / "val"
    write_contract_shards(val, 1, 4, size=(47, 40))
    detector_settings = {**TINY_DETECTOR, "resize": 32, "crop": "multi"}
    cfg = tiny_train_config(tmp_path / "run", train, val_data=[str(val)], domains=DOMAINS, detector=detector_settings,
                            cpu=True)  # fmt: skip
    trainer = Trainer(cfg, progress=False)
    randomize_trained(trainer.detector)
    metrics = trainer._validate()
    images, labels, domain = [], [], []
    for s in iter_samples(str(val / "shard-000000.tar")):
        for field, d in (("real", -1), ("vae", 0)):
            images.append(Image.open(io.BytesIO(s[f"{field}.png"])))
            labels.append(int(d >= 0))
            domain.append(d)
    scores = trainer.detector.score(images)
    assert scores.num_crops[0] == 2  # 47x40 resized to 38x32: two crops along x
    expected = detection_metrics(labels, scores.probs.numpy(), domain, ["recon"])
    assert metrics["ap"] == pytest.approx(expected["ap"]) and metrics["n"] == expected["n"]
    assert metrics["accuracy"] == pytest.approx(expected["accuracy"])


@pytest.mark.parametrize(
    ("settings", "size"),
    [({"resize": 32}, (48, 48)), ({"small": "upscale"}, (20, 20)), ({}, (20, 24))],
    ids=["resize", "upscale", "pad"],
)
def test_training_pixels_follow_the_processor_rules(tmp_path, settings, size):
    """Without augmentation, a training crop of an image that the processor turns into exactly one crop is that
    crop: resize and small-image rules apply in training as they do when scoring."""
    detector = tiny_detector("dinov2", **settings)
    urls = write_contract_shards(tmp_path, 1, 2, size=size)
    stream = PairStream(urls, DOMAINS, pairs=2, processor=detector.processor, augment=AugmentConfig.off(),
                        shuffle_buffer=1)  # fmt: skip
    batch = next(iter(stream))
    reals = {s["__key__"]: Image.open(io.BytesIO(s["real.png"])) for s in iter_samples(urls[0])}
    for i, key in enumerate(batch["keys"]):
        assert torch.equal(batch["pixels"][i], _scored_pixels(detector, [reals[key]])[0])


def test_processor_is_derived_per_backbone_family():
    vit, cnn = tiny_detector("clip"), tiny_detector("mobilenet_v2", resize=48, small="upscale", crop="multi")
    assert vit.processor.image_mean == (0.48145466, 0.4578275, 0.40821073)  # CLIP statistics
    assert cnn.processor.image_mean == cnn.processor.image_std == (0.5, 0.5, 0.5)  # MobileNetV2: [-1, 1]
    assert (cnn.processor.size, cnn.processor.resize, cnn.processor.small, cnn.processor.crop) == (
        32,
        48,
        "upscale",
        "multi",
    )
    assert vit.image_size == vit.processor.size == 32


@pytest.mark.parametrize("family", ["dinov2", "mobilenet_v2"])
def test_the_processor_is_saved_with_the_detector_and_read_back(tmp_path, family):
    detector = randomize_trained(tiny_detector(family, resize=40))
    detector.save_pretrained(tmp_path / "det")
    saved = json.loads((tmp_path / "det" / "preprocessor_config.json").read_text())
    assert saved["size"] == 32 and saved["resize"] == 40 and saved["processor_class"] == "ImageProcessor"
    assert saved["image_mean"] == list(detector.backbone.image_mean)
    loaded = SEFDetector.from_pretrained(tmp_path / "det")
    assert loaded.processor == detector.processor
    assert "preprocessor_config.json" in (tmp_path / "det" / "README.md").read_text()


def test_a_folder_without_a_processor_file_derives_it_from_config_json(tmp_path):
    detector = randomize_trained(tiny_detector("resnet", resize=36, crop="multi"))
    detector.save_pretrained(tmp_path / "det")
    (tmp_path / "det" / "preprocessor_config.json").unlink()  # as saved before the processor existed
    loaded = SEFDetector.from_pretrained(tmp_path / "det")
    assert loaded.processor == detector.processor
    image = Image.fromarray(photo_like(70, 50, seed=4))
    assert torch.equal(loaded.score(image).probs, detector.score(image).probs)


def test_the_saved_normalisation_is_the_one_used_and_disagreements_are_refused(tmp_path):
    detector = randomize_trained(tiny_detector())
    detector.save_pretrained(tmp_path / "det")
    path = tmp_path / "det" / "preprocessor_config.json"
    saved = json.loads(path.read_text())
    path.write_text(json.dumps({**saved, "image_mean": [0.5, 0.5, 0.5]}))
    loaded = SEFDetector.from_pretrained(tmp_path / "det")
    assert loaded.processor.image_mean == (0.5, 0.5, 0.5)  # pinned in the file, not re-derived from the backbone
    image = Image.fromarray(photo_like(40, 40, seed=5))
    assert not torch.equal(loaded.preprocess(image), detector.preprocess(image))
    path.write_text(json.dumps({**saved, "resize": 64}))
    with pytest.raises(ValueError, match=r"disagrees with the detector config.*resize 64 vs None"):
        SEFDetector.from_pretrained(tmp_path / "det")
    path.write_text(json.dumps({**saved, "sharpen": True}))
    with pytest.raises(ValueError, match=r"unknown image processor keys \['sharpen'\]"):
        SEFDetector.from_pretrained(tmp_path / "det")


def test_experts_processed_differently_do_not_combine():
    recon = tiny_detector(experts=["recon"], fusion="single")
    sr = tiny_detector(experts=["sr"], fusion="single", resize=64)
    with pytest.raises(ValueError, match=r"differently processed images.*resize"):
        SEFDetector.from_experts([recon, sr])


def test_grad_cam_explains_the_crop_the_processor_makes():
    from sefmodel.explain import grad_cam

    detector = randomize_trained(tiny_detector("dinov2", resize=40))
    image = Image.fromarray(photo_like(90, 60, seed=6))
    explanation = grad_cam(detector, image)
    pixels = detector.processor(image, crop="center")[0]
    assert explanation.crop.size == (32, 32)
    assert torch.equal(detector.processor.normalize(explanation.crop), pixels)  # to_image inverts normalize
    assert explanation.prob == pytest.approx(float(detector.score(image, crop="center").probs[0]), abs=1e-5)


def test_normalize_pads_with_the_mean_and_rejects_oversized_pixels():
    processor = ImageProcessor(size=8, image_mean=(0.5, 0.5, 0.5), image_std=(0.5, 0.5, 0.5))
    x = processor.normalize(np.full((4, 6, 3), 255, dtype=np.uint8))
    assert x.shape == (3, 8, 8) and torch.all(x[:, 2:6, 1:7] == 1.0) and x.abs().sum() == 4 * 6 * 3
    assert processor.to_image(x).getpixel((0, 0)) == (128, 128, 128)  # padding shows as the mean colour
    with pytest.raises(ValueError, match="at most 8 a side"):
        processor.normalize(np.zeros((9, 8, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="small-image rule"):
        ImageProcessor(small="stretch")
    assert ImageProcessor.from_dict(processor.to_dict()) == processor
