"""The distill stage on tiny random backbones: one LoRA student of a fused teacher, its loss, resume, errors, CLI."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import photo_like
from conftest_model import pixels
from PIL import Image
from safetensors.torch import load_file
from sef_cli.sefmodel import app
from train_helpers import TINY_DETECTOR, tiny_train_config, write_contract_shards
from typer.testing import CliRunner

from sefmodel import SEFDetector
from sefmodel.model.combine import combine_experts
from sefmodel.model.config import DetectorConfig
from sefmodel.pipeline import score
from sefmodel.train import TrainConfig, get_task, train
from sefmodel.train.tasks import student_config


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory) -> Path:
    """A run folder whose detector/ is a fused (sef) teacher over two tiny experts with non-trivial adapters."""
    experts = []
    for i, name in enumerate(("recon", "sr")):
        torch.manual_seed(7)  # one random backbone for both experts (not the one seed 0, the run seed, draws)
        expert = SEFDetector(DetectorConfig(**{**TINY_DETECTOR, "experts": [name], "fusion": "single"}))
        g = torch.Generator().manual_seed(10 + i)
        with torch.no_grad():  # LoRA B starts at zero: give every trained tensor a value, so the experts differ
            for tensor in expert.trained_state_dict().values():
                tensor.copy_(torch.randn(tensor.shape, generator=g) * 0.5)
        experts.append(expert)
    run = tmp_path_factory.mktemp("teacher")
    combine_experts(experts, fusion="sef", gate_hidden=16).save_pretrained(run / "detector")
    return run


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("distill_shards")
    write_contract_shards(folder, 2, 4)  # fields vae (domain recon) and sr (domain sr)
    return folder


def distill_config(out: Path, data: Path, teacher: Path | str, **overrides) -> TrainConfig:
    # no detector settings: the student takes the teacher's
    return tiny_train_config(out, data, stage="distill", domain=None, teacher=str(teacher), detector={}, **overrides)


def bce(z: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of logits z against probabilities p, written out."""
    return -(p * F.logsigmoid(z) + (1 - p) * F.logsigmoid(-z)).mean()


def test_distilled_student_is_one_expert_with_the_teachers_settings_and_scores_images(teacher_run, data, tmp_path):
    result = train(distill_config(tmp_path / "run", data, teacher_run, steps=3), progress=False)
    assert result.finished and result.step == 3
    teacher = SEFDetector.from_pretrained(teacher_run / "detector")
    student = SEFDetector.from_pretrained(result.detector)
    assert student.expert_names == ["distilled"] and student.config.fusion == "single"
    assert teacher.config.fusion == "sef" and len(teacher.expert_names) == 2
    for key in ("backbone", "backbone_id", "backbone_config", "feature_layer", "feature_pool", "lora", "processor"):
        assert getattr(student.config, key) == getattr(teacher.config, key), key
    assert student.processor == teacher.processor
    # the student runs on the teacher's random backbone (copied, not a fresh draw) ...
    backbone = {k.replace(".base_layer.", "."): v for k, v in teacher.backbone_state_dict().items()}
    for key, value in student.backbone_state_dict().items():
        assert torch.equal(value, backbone[key.replace(".base_layer.", ".")]), key
    # ... and only its adapter and head trained
    torch.manual_seed(0)
    fresh = SEFDetector(student.config)
    changed = [k for k, v in student.trained_state_dict().items() if not torch.equal(v, fresh.trained_state_dict()[k])]
    assert changed and all(".lora_" in k or k.startswith("heads.distilled.") for k in changed)
    # it scores like any detector: one backbone pass, a probability per image
    images = [Image.fromarray(photo_like(48, 40, seed=s)) for s in range(3)]
    scores = score(student, images)
    assert scores.probs.shape == (3,) and bool(((scores.probs >= 0) & (scores.probs <= 1)).all())
    assert scores.experts == ["distilled"] and scores.gate_weights is None


@pytest.mark.parametrize("alpha, temperature", [(1.0, 1.0), (0.0, 1.0), (0.5, 1.0), (0.3, 2.0)])
def test_the_loss_weighs_the_labels_against_the_teachers_probabilities(teacher_run, data, tmp_path, alpha, temperature):
    cfg = distill_config(tmp_path / "run", data, teacher_run, distill_alpha=alpha, distill_temperature=temperature)
    task = get_task("distill")(cfg)
    student = task.build_detector()
    assert not task.teacher.training and not any(p.requires_grad for p in task.teacher.parameters())
    x, labels = pixels(4, seed=3), torch.tensor([0.0, 0.0, 1.0, 1.0])
    with torch.no_grad():  # the teacher's logits, from its own folder
        t = SEFDetector.from_pretrained(teacher_run / "detector")(x)["logits"]
    assert not torch.allclose(torch.sigmoid(t), labels, atol=0.1)  # soft targets that are not the labels
    z = student(x)["logits"].detach().requires_grad_(True)  # stand-in student logits: the gradient lands on z
    out = task(lambda _: {"logits": z}, {"pixels": x, "labels": labels})
    T = temperature
    expected = alpha * bce(z, labels) + (1 - alpha) * T * T * bce(z / T, torch.sigmoid(t / T))
    assert torch.allclose(out["loss"], expected, atol=1e-6)
    out["loss"].backward()
    # d/dz: alpha (sigmoid(z) - y) / B + (1 - alpha) T (sigmoid(z / T) - sigmoid(t / T)) / B
    want = (alpha * (torch.sigmoid(z) - labels) + (1 - alpha) * T * (torch.sigmoid(z / T) - torch.sigmoid(t / T))) / 4
    assert torch.allclose(z.grad, want.detach(), atol=1e-6)
    if alpha == 0.0:  # the labels play no part: the student is pulled to the teacher's probabilities only
        assert torch.allclose(z.grad, (torch.sigmoid(z) - torch.sigmoid(t)).detach() / 4, atol=1e-6)
    if alpha == 1.0:  # plain BCE on the labels, as the mixed stage trains
        assert torch.allclose(out["loss"], F.binary_cross_entropy_with_logits(z, labels), atol=1e-6)


def test_a_resumed_distill_run_equals_an_uninterrupted_one(teacher_run, data, tmp_path):
    kw = dict(steps=3, save_every=2)
    train(distill_config(tmp_path / "full", data, teacher_run, **kw), progress=False)
    cut = train(distill_config(tmp_path / "cut", data, teacher_run, **kw), progress=False, stop_after=1)
    assert not cut.finished and cut.step == 1
    resumed = train(distill_config(tmp_path / "cut", data, teacher_run, **kw), resume=True, progress=False)
    assert resumed.finished and resumed.step == 3
    a = load_file(str(tmp_path / "full" / "detector" / "model.safetensors"))
    b = load_file(str(tmp_path / "cut" / "detector" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # the teacher is part of the run's settings: another one is refused on resume
    with pytest.raises(ValueError, match=r"different configuration \(teacher\)"):
        train(distill_config(tmp_path / "cut", data, tmp_path / "other", **kw), resume=True, progress=False)


def test_student_settings_default_to_the_teachers_and_overrides_apply():
    teacher = DetectorConfig(**{**TINY_DETECTOR, "experts": ["recon", "sr"], "fusion": "sef"})
    same = student_config(teacher, {})
    assert same.experts == ["distilled"] and same.fusion == "single"
    assert same.backbone_config == teacher.backbone_config and same.lora == teacher.lora
    assert same.processor == teacher.processor and same.feature_layer == teacher.feature_layer
    resized = student_config(teacher, {"processor": {"resize": 40}})
    assert (resized.processor.size, resized.processor.resize) == (32, 40)  # merged key by key
    assert student_config(teacher, {"image_size": 16}).processor.size == 16  # a [detector] table of older runs
    pinned = dataclasses.replace(teacher, processor={"size": 32, "image_mean": [0.5] * 3, "image_std": [0.5] * 3})
    assert student_config(pinned, {}).processor.image_mean is None  # the student backbone's normalisation
    ranked = student_config(teacher, {"lora": {"rank": 2}})
    assert ranked.lora.rank == 2 and ranked.lora.blocks == teacher.lora.blocks  # merged key by key
    local = student_config(teacher, {"backbone_id": "/models/dinov2-small"})  # other weights replace the reference
    assert local.backbone_config is None and local.backbone_id == "/models/dinov2-small"


def test_config_errors_and_notes():
    with pytest.raises(ValueError, match="the distill stage needs a teacher"):
        TrainConfig(data=["x"], out="y", stage="distill")
    with pytest.raises(ValueError, match="a teacher is for the distill stage, not 'mixed'"):
        TrainConfig(stage="mixed", teacher="runs/sef")
    with pytest.raises(ValueError, match=r"distill_alpha must be in \[0, 1\]"):
        TrainConfig(stage="distill", teacher="runs/sef", distill_alpha=1.5)
    with pytest.raises(ValueError, match="distill_temperature must be > 0"):
        TrainConfig(stage="distill", teacher="runs/sef", distill_temperature=0)
    assert TrainConfig(stage="distill", teacher="runs/sef").notes == []
    assert TrainConfig(stage="mixed", distill_alpha=0.9).notes == [
        "ignoring distill_alpha: only the distill stage uses it"
    ]


def test_a_student_that_would_see_other_pixels_is_refused(teacher_run, data, tmp_path):
    # the student's own settings change the crop side
    cfg = distill_config(tmp_path / "a", data, teacher_run)
    cfg.detector = {"processor": {"size": 16}}
    with pytest.raises(ValueError, match=r"image processing differs from the teacher's \(size 16 vs 32\)"):
        train(cfg, progress=False)
    # the teacher's saved processor pins another normalisation than the student's backbone gives
    other = tmp_path / "teacher"
    shutil.copytree(teacher_run / "detector", other)
    path = other / "preprocessor_config.json"
    saved = json.loads(path.read_text())
    path.write_text(json.dumps({**saved, "image_mean": [0.5, 0.5, 0.5]}))
    with pytest.raises(ValueError, match="image processing differs from the teacher's \\(image_mean"):
        train(distill_config(tmp_path / "b", data, other), progress=False)
    assert not (tmp_path / "b" / "train_config.json").exists()


def test_cli_distills_stops_resumes_and_reports_errors(teacher_run, data, tmp_path):
    runner = CliRunner()
    conf = tmp_path / "tiny.toml"
    conf.write_text("batch_size = 4\nnum_workers = 0\nsave_every = 2\nshuffle_buffer = 4\n")
    args = ["train", "--data", str(data), "--config", str(conf), "--no-progress"]
    out = str(tmp_path / "student")
    res = runner.invoke(app, [*args, "--stage", "distill", "--teacher", str(teacher_run), "--distill-alpha", "0.2",
                              "--steps", "3", "--out", out, "--stop-after", "1"])  # fmt: skip
    assert res.exit_code == 0 and "stopped at step 1" in res.output, res.output
    assert TrainConfig.load(out).teacher == str(teacher_run) and TrainConfig.load(out).distill_alpha == 0.2
    res = runner.invoke(app, ["train", "--resume", "--out", out, "--no-progress"])
    assert res.exit_code == 0 and "trained distill for 3 steps" in res.output, res.output
    assert SEFDetector.from_pretrained(Path(out) / "detector").expert_names == ["distilled"]

    res = runner.invoke(app, [*args, "--stage", "distill", "--out", str(tmp_path / "x")])
    assert res.exit_code == 2 and "error: the distill stage needs a teacher" in res.output
    res = runner.invoke(app, [*args, "--stage", "mixed", "--teacher", str(teacher_run), "--out", str(tmp_path / "x")])
    assert res.exit_code == 2 and "error: a teacher is for the distill stage, not 'mixed'" in res.output
    res = runner.invoke(app, [*args, "--stage", "distill", "--teacher", str(tmp_path), "--out", str(tmp_path / "x")])
    assert res.exit_code == 2 and "is neither a finished training run" in res.output
    res = runner.invoke(app, [*args, "--stage", "distill", "--teacher", str(teacher_run), "--image-size", "16",
                              "--out", str(tmp_path / "x")])  # fmt: skip
    assert res.exit_code == 2 and "error: the student's image processing differs" in res.output
    assert "Traceback" not in res.output and res.output.count("\n") == 1
