"""One image processor: training, validation, scoring and Grad-CAM see the same pixels; saved with the detector."""

from __future__ import annotations

import io
import json
import re

import numpy as np
import pytest
import torch
from conftest import photo_like
from conftest_model import randomize_trained, tiny_config, tiny_detector
from PIL import Image
from train_helpers import TINY_DETECTOR, tiny_train_config, write_contract_shards

from sefcore.errors import SefError
from sefmodel import DetectorConfig, ImageProcessor, SEFDetector
from sefmodel.evaluation.metrics import detection_metrics
from sefmodel.model.combine import combine_experts
from sefmodel.pipeline import score
from sefmodel.train.augment import AugmentConfig
from sefmodel.train.data import EvalStream, PairStream, iter_samples

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
        score(detector, images, batch_size=64, crop=crop)
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
    torch.testing.assert_close(per_image, score(detector, images).probs)


def test_the_trainer_validates_on_the_probabilities_score_gives(tmp_path):
    """The best checkpoint is picked on validation metrics: they must be eval's, crop by crop."""
    from sefmodel.train.trainer import Trainer

    train = tmp_path / "train"
    write_contract_shards(train, 2, 2)
    val = tmp_path / "val"
    write_contract_shards(val, 1, 4, size=(47, 40))
    detector_settings = {**TINY_DETECTOR, "processor": {**TINY_DETECTOR["processor"], "resize": 32, "crop": "multi"}}
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
    scores = score(trainer.detector, images)
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


# config.json as written before the image processor owned its settings: every DetectorConfig field, these flat
OLD_FLAT_KEYS = {"image_size": 32, "crop": "multi", "crops_per_side": 3, "resize": 36, "small": "pad"}


def _as_saved_before_the_move(folder, keep_processor_file: bool) -> None:
    path = folder / "config.json"
    data = json.loads(path.read_text())
    assert "processor" not in data and not set(OLD_FLAT_KEYS) & set(data)  # one copy on disk: the processor file
    path.write_text(json.dumps({**data, **OLD_FLAT_KEYS}))
    if not keep_processor_file:  # older still: saved before preprocessor_config.json existed
        (folder / "preprocessor_config.json").unlink()


@pytest.mark.parametrize("keep_processor_file", [False, True], ids=["config-only", "config-and-processor"])
def test_a_detector_saved_before_the_processor_owned_its_settings_loads_and_scores_the_same(
    tmp_path, keep_processor_file
):
    detector = randomize_trained(tiny_detector("resnet", resize=36, crop="multi"))
    detector.save_pretrained(tmp_path / "det")
    _as_saved_before_the_move(tmp_path / "det", keep_processor_file)
    loaded = SEFDetector.from_pretrained(tmp_path / "det")
    assert loaded.processor == detector.processor and loaded.processor.crop == "multi"
    images = [Image.fromarray(photo_like(70, 50, seed=4)), Image.fromarray(photo_like(20, 44, seed=5))]
    scores, expected = score(loaded, images), score(detector, images)
    assert scores.num_crops == expected.num_crops == [4, 6]  # multi-crop after the short side went to 36 px
    assert torch.equal(scores.probs, expected.probs)
    loaded.save_pretrained(tmp_path / "again")  # saving it again writes the new layout
    assert not set(OLD_FLAT_KEYS) & set(json.loads((tmp_path / "again" / "config.json").read_text()))


def test_an_old_config_with_the_backbone_default_crop_side_still_takes_the_backbones(tmp_path):
    detector = randomize_trained(tiny_detector(size=None))
    detector.save_pretrained(tmp_path / "det")
    path = tmp_path / "det" / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **OLD_FLAT_KEYS, "image_size": None, "crop": "center",
                                "resize": None}))  # fmt: skip
    (tmp_path / "det" / "preprocessor_config.json").unlink()
    loaded = SEFDetector.from_pretrained(tmp_path / "det")
    assert loaded.processor == detector.processor and loaded.processor.size == detector.backbone.input_size


def test_the_processor_file_is_the_one_copy_of_the_settings(tmp_path):
    detector = randomize_trained(tiny_detector())
    detector.save_pretrained(tmp_path / "det")
    path = tmp_path / "det" / "preprocessor_config.json"
    saved = json.loads(path.read_text())
    path.write_text(json.dumps({**saved, "image_mean": [0.5, 0.5, 0.5]}))
    loaded = SEFDetector.from_pretrained(tmp_path / "det")
    assert loaded.processor.image_mean == (0.5, 0.5, 0.5)  # pinned in the file, not re-derived from the backbone
    image = Image.fromarray(photo_like(40, 40, seed=5))
    assert not torch.equal(loaded.preprocess(image), detector.preprocess(image))
    path.write_text(json.dumps({**saved, "resize": 64}))  # nothing else to agree with: the file is the setting
    loaded = SEFDetector.from_pretrained(tmp_path / "det")
    assert loaded.processor.resize == 64 and loaded.config.processor is loaded.processor
    path.write_text(json.dumps({**saved, "sharpen": True}))
    with pytest.raises(ValueError, match=r"unknown image processor keys \['sharpen'\]"):
        SEFDetector.from_pretrained(tmp_path / "det")


def test_experts_processed_differently_do_not_combine():
    recon = tiny_detector(experts=["recon"], fusion="single")
    sr = tiny_detector(experts=["sr"], fusion="single", resize=64)
    with pytest.raises(ValueError, match=r"differently processed images.*resize"):
        combine_experts([recon, sr])


def test_grad_cam_explains_the_crop_the_processor_makes():
    from sefmodel.explain import grad_cam

    detector = randomize_trained(tiny_detector("dinov2", resize=40))
    image = Image.fromarray(photo_like(90, 60, seed=6))
    explanation = grad_cam(detector, image)
    pixels = detector.processor(image, crop="center")[0]
    assert explanation.crop.size == (32, 32)
    assert torch.equal(detector.processor.normalize(explanation.crop), pixels)  # to_image inverts normalize
    assert explanation.prob == pytest.approx(float(score(detector, image, crop="center").probs[0]), abs=1e-5)


def test_normalize_pads_with_the_mean_and_rejects_oversized_pixels():
    processor = ImageProcessor(size=8, image_mean=(0.5, 0.5, 0.5), image_std=(0.5, 0.5, 0.5))
    x = processor.normalize(np.full((4, 6, 3), 255, dtype=np.uint8))
    assert x.shape == (3, 8, 8) and torch.all(x[:, 2:6, 1:7] == 1.0) and x.abs().sum() == 4 * 6 * 3
    assert processor.to_image(x).getpixel((0, 0)) == (128, 128, 128)  # padding shows as the mean colour
    with pytest.raises(ValueError, match="at most 8 a side"):
        processor.normalize(np.zeros((9, 8, 3), dtype=np.uint8))
    with pytest.raises(SefError, match="small-image rule"):
        ImageProcessor(small="stretch")
    assert ImageProcessor.from_dict(processor.to_dict()) == processor


# ---- one owner of the settings ----------------------------------------------------------------------------------


def test_the_config_holds_its_processor_and_round_trips_it():
    config = tiny_config("mobilenet_v2", resize=48, small="upscale", crop="multi", crops_per_side=2)
    assert config.processor == ImageProcessor(size=32, resize=48, small="upscale", crop="multi", crops_per_side=2)
    assert config.processor.image_mean is None  # unset: the detector takes the backbone's
    assert "processor" not in config.to_dict()  # config.json's content: the processor is saved beside it
    assert DetectorConfig.from_dict(json.loads(json.dumps(config.to_dict())), processor=config.processor) == config
    detector = SEFDetector(config)
    assert detector.processor is detector.config.processor and detector.processor.image_mean == (0.5, 0.5, 0.5)
    assert config.processor.image_mean is None  # the caller's config is not filled in
    unset = ImageProcessor(crop="multi")
    assert ImageProcessor.from_dict(json.loads(json.dumps(unset.to_dict()))) == unset
    with pytest.raises(SefError, match="leaves size, image_mean, image_std unset"):
        unset(Image.new("RGB", (40, 40)))


def test_old_flat_settings_and_the_processor_cannot_both_be_given():
    base = tiny_config().to_dict()
    config = DetectorConfig.from_dict({**base, **OLD_FLAT_KEYS})
    assert config.processor == ImageProcessor(size=32, resize=36, crop="multi")  # an older [detector] table too
    with pytest.raises(ValueError, match="under processor, not also as image_size, resize"):
        DetectorConfig.from_dict({**base, "processor": {"size": 32}, "image_size": 32, "resize": 36})
    with pytest.raises(TypeError, match="image_size"):
        DetectorConfig(image_size=32)  # type: ignore[call-arg]


@pytest.mark.parametrize(
    ("settings", "match"),
    [
        ({"crop": "random"}, "unknown crop mode 'random'; known: center, multi"),
        ({"small": "stretch"}, "unknown small-image rule 'stretch'; known: pad, upscale"),
        ({"size": 0}, "image processor size must be an integer >= 1, got 0"),
        ({"resize": 1.5}, "image processor resize must be an integer >= 1"),
        ({"crops_per_side": None}, "image processor crops_per_side must be an integer >= 1"),
        ({"image_std": [1, 0, 1]}, "image_std must be positive"),
        ({"image_mean": [0.5]}, "image_mean must be three numbers"),
    ],
)
def test_processor_settings_are_validated_once_by_the_processor(settings, match):
    for make in (lambda: ImageProcessor(**settings), lambda: tiny_config(**settings),
                 lambda: DetectorConfig(processor=settings)):  # fmt: skip
        with pytest.raises(SefError, match=re.escape(match)):
            make()


CROP_ERROR = "unknown crop mode 'random'; known: center, multi"


def test_a_bad_crop_mode_is_one_sef_error_from_every_entry_point(tmp_path):
    from sefmodel.evaluation.evaluate import EvalConfig
    from sefmodel.model.aeroblade import AerobladeConfig
    from sefmodel.predict import score_stream
    from sefmodel.serve.app import ServeConfig

    detector = tiny_detector()
    image = Image.new("RGB", (40, 40))
    old = tiny_config().to_dict()
    entry_points = {
        "ImageProcessor": lambda: ImageProcessor(crop="random"),
        "DetectorConfig": lambda: DetectorConfig(processor={"crop": "random"}),
        "old config.json": lambda: DetectorConfig.from_dict({**old, "crop": "random"}),
        "score": lambda: score(detector, image, crop="random"),
        "preprocess": lambda: detector.preprocess(image, crop="random"),
        "score_stream": lambda: list(score_stream(detector, [("a", lambda: image)], crop="random")),
        "EvalConfig": lambda: EvalConfig(benches=["bench"], crop="random"),
        "ServeConfig": lambda: ServeConfig(crop="random"),
        "AerobladeConfig": lambda: AerobladeConfig(crop="random"),
    }
    for name, call in entry_points.items():
        with pytest.raises(SefError) as caught:
            call()
        assert str(caught.value) == CROP_ERROR, name


def test_a_bad_crop_flag_is_one_error_line_from_every_command(tmp_path):
    from sef_cli.sefmodel import app
    from typer.testing import CliRunner

    tiny_detector().save_pretrained(tmp_path / "det")
    Image.new("RGB", (40, 40)).save(tmp_path / "a.png")
    det, png = str(tmp_path / "det"), str(tmp_path / "a.png")
    for args in (["predict", det, png], ["eval", det, "-b", str(tmp_path), "--no-progress"], ["serve", det]):
        result = CliRunner().invoke(app, [*args, "--crop", "random", "--device", "cpu"])
        assert (result.exit_code, result.output.strip().splitlines()) == (2, [f"error: {CROP_ERROR}"]), args
