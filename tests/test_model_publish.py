"""sefmodel publish: the staged folder loads with from_pretrained and scores identically; the card's YAML carries
the evaluation as structured results; the upload receives that folder (network replaced at the HfApi boundary)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import FakeHubApi, photo_like
from conftest_model import randomize_trained, tiny_detector
from huggingface_hub import ModelCard
from PIL import Image
from sef_cli.sefmodel import app
from typer.testing import CliRunner

from sefcore.errors import SefError
from sefmodel import SEFDetector
from sefmodel.pipeline import score
from sefmodel.publish import publish


@pytest.fixture(scope="module")
def evaluated_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("run")
    randomize_trained(tiny_detector()).save_pretrained(run / "detector")
    (run / "train_config.json").write_text(json.dumps({"data": "hf://datasets/me/aligned/data/shard-{000..009}.tar"}))
    bench = run.parent / "bench"
    for label in ("real", "fake"):
        (bench / label).mkdir(parents=True)
        for i in range(3):
            pixels = photo_like(40, 36, seed=i + (10 if label == "fake" else 0))
            Image.fromarray(pixels if label == "real" else pixels // 2 + 60).save(bench / label / f"{i}.png")
    result = CliRunner().invoke(app, ["eval", str(run), "--bench", f"tiny={bench}", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    return run


def test_published_folder_loads_and_scores_identically(evaluated_run, tmp_path):
    staged = publish(evaluated_run, "me/sef-tiny", dry_run=True, staging=tmp_path / "stage")
    assert {"README.md", "config.json", "model.safetensors", "eval/results.json", "eval/results.md"} <= set(
        staged.files
    )
    images = [Image.fromarray(photo_like(48, 40, seed=s)) for s in range(3)]
    original = score(SEFDetector.from_pretrained(evaluated_run / "detector"), images)
    reloaded = score(SEFDetector.from_pretrained(staged.folder), images)
    assert torch.equal(original.probs, reloaded.probs)
    assert torch.equal(original.gate_weights, reloaded.gate_weights)


def test_model_card_carries_base_model_datasets_and_eval_results(evaluated_run, tmp_path):
    staged = publish(evaluated_run, "me/sef-tiny", dry_run=True, staging=tmp_path / "stage", license="mit")
    card = ModelCard.load(staged.folder / "README.md")
    assert card.data.license == "mit" and card.data.library_name == "sef-toolkit"
    assert card.data.datasets == ["me/aligned"] and card.data.pipeline_tag == "image-classification"
    results = json.loads((evaluated_run / "eval" / "results.json").read_text())
    expected_ap = results["benchmarks"]["tiny"]["metrics"]["ap"]
    by_type = {r.metric_name: r.metric_value for r in card.data.eval_results}
    assert by_type["Average precision"] == pytest.approx(expected_ap, abs=1e-4)
    assert "Intended use and limits" in card.text and "eval/results.md" in card.text


def test_upload_receives_the_staged_folder_and_bad_input_is_refused(evaluated_run, tmp_path):
    api = FakeHubApi()
    staged = publish(evaluated_run, "me/sef-tiny", api=api, staging=tmp_path / "stage")
    assert [name for name, _ in api.calls] == ["create_repo", "upload_folder"]
    assert api.calls[0][1]["repo_type"] == "model" and api.calls[1][1]["folder_path"] == str(staged.folder)
    with pytest.raises(SefError, match="USER/NAME"):
        publish(evaluated_run, "nope", dry_run=True)
    with pytest.raises(SefError, match="not a local run"):
        publish(tmp_path / "missing", "me/x", dry_run=True)


def test_cli_dry_run(evaluated_run, tmp_path):
    result = CliRunner().invoke(
        app, ["publish", str(evaluated_run), "--repo", "me/x", "--dry-run", "--staging", str(tmp_path / "s")]
    )
    assert result.exit_code == 0, result.output
    assert "model.safetensors" in result.output and "README.md" in result.output


def test_card_lists_local_training_data_and_says_where_the_backbone_is(evaluated_run, tmp_path):
    """A fusion run's card names its own and its experts' data (local builds by name, never by path); a random
    test backbone is stored as backbone.safetensors and the card says so; staged eval files carry no local path."""
    from sefcore.privacy import file_local_paths

    expert = tmp_path / "runs" / "recon"
    expert.mkdir(parents=True)
    (expert / "train_config.json").write_text(json.dumps({"data": [str(tmp_path / "shards" / "coco-aligned")]}))
    run = tmp_path / "runs" / "sef"
    randomize_trained(tiny_detector()).save_pretrained(run / "detector")
    (run / "train_config.json").write_text(json.dumps({"data": ["hf://datasets/me/aligned/data/x.tar"],
                                                       "experts": [str(expert)]}))  # fmt: skip
    (run / "eval").mkdir()
    for name in ("results.json", "results.md", "results.csv"):
        (run / "eval" / name).write_text((evaluated_run / "eval" / name).read_text())
    assert file_local_paths(run / "eval" / "results.json")  # the run's own report names where things lay
    staged = publish(run, "me/sef-tiny", dry_run=True, staging=tmp_path / "stage")
    card = (staged.folder / "README.md").read_text()
    assert "[me/aligned](https://huggingface.co/datasets/me/aligned)" in card and "`coco-aligned`" in card
    assert str(tmp_path) not in card
    assert "backbone.safetensors" in staged.files and "stored here too (`backbone.safetensors`)" in card
    for name in ("eval/results.json", "eval/results.md", "eval/results.csv"):
        assert file_local_paths(staged.folder / name) == [], name


@pytest.fixture(scope="module")
def local_backbone_run(tmp_path_factory) -> tuple[Path, Path]:
    """A run whose detector was trained on a backbone loaded from an absolute local folder (`--backbone-id DIR`)."""
    from conftest_model import TINY

    from sefmodel import DetectorConfig
    from sefmodel.model.backbones import get_backbone_class

    root = tmp_path_factory.mktemp("alice")
    torch.manual_seed(0)
    folder = root / "models" / "dinov2-tiny"
    get_backbone_class("dinov2").from_config(TINY["dinov2"]).model.save_pretrained(folder)
    config = DetectorConfig(backbone_id=str(folder), processor={"size": 32}, lora={"rank": 4, "blocks": "last:2"},
                            gate_hidden=8)  # fmt: skip
    run = root / "run"
    randomize_trained(SEFDetector(config)).save_pretrained(run / "detector")
    return run, folder


def _sent(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_a_local_backbone_is_published_by_its_folder_name_as_a_local_copy(local_backbone_run, tmp_path):
    run, folder = local_backbone_run
    staged = publish(run, "me/sef-tiny", dry_run=True, staging=tmp_path / "stage")
    for name, data in _sent(staged.folder).items():
        assert str(folder).encode() not in data and str(folder.parent).encode() not in data, name
    config = json.loads((staged.folder / "config.json").read_text())
    assert config["backbone_id"] == "dinov2-tiny" and config["backbone_revision"] is None
    card = ModelCard.load(staged.folder / "README.md")
    assert card.data.base_model is None  # a folder name is not a Hub model to link to
    assert "a local copy of the weights in a folder named `dinov2-tiny`" in card.text
    assert 'backbone_id="FOLDER_OR_HUB_ID"' in card.text
    # the published folder still scores as the run's detector, given the same weights
    images = [Image.fromarray(photo_like(48, 40, seed=s)) for s in range(2)]
    original = score(SEFDetector.from_pretrained(run / "detector"), images)
    reloaded = score(SEFDetector.from_pretrained(staged.folder, backbone_id=str(folder)), images)
    assert torch.equal(original.probs, reloaded.probs)


def test_base_model_names_the_hub_id_of_a_local_backbone(local_backbone_run, tmp_path):
    run, folder = local_backbone_run
    result = CliRunner().invoke(app, ["publish", str(run), "--repo", "me/x", "--dry-run", "--staging",
                                      str(tmp_path / "s"), "--base-model", "facebook/dinov2-small"])  # fmt: skip
    assert result.exit_code == 0, result.output
    config = json.loads((tmp_path / "s" / "config.json").read_text())
    assert config["backbone_id"] == "facebook/dinov2-small"
    card = ModelCard.load(tmp_path / "s" / "README.md")
    assert card.data.base_model == "facebook/dinov2-small" and "local copy" not in card.text
    for name, data in _sent(tmp_path / "s").items():
        assert str(folder).encode() not in data, name
    # the evaluation report names the backbone as config.json does
    evaluated = tmp_path / "evaluated"
    shutil.copytree(run, evaluated)
    (evaluated / "eval").mkdir()
    (evaluated / "eval" / "results.json").write_text(json.dumps({"detector": {"backbone_id": str(folder)}}))
    (evaluated / "eval" / "results.md").write_text(f"detector on `{folder}`\n")
    staged = publish(evaluated, "me/x", dry_run=True, staging=tmp_path / "e", base_model="facebook/dinov2-small")
    report = json.loads((staged.folder / "eval" / "results.json").read_text())
    assert report["detector"]["backbone_id"] == "facebook/dinov2-small"
    assert (staged.folder / "eval" / "results.md").read_text() == "detector on `facebook/dinov2-small`\n"
    for bad in (str(folder), "../models/dinov2-tiny", "not an id"):
        with pytest.raises(SefError, match="--base-model .*OWNER/NAME"):
            publish(run, "me/x", dry_run=True, staging=tmp_path / "t", base_model=bad)


def test_a_hub_cache_snapshot_is_published_as_its_hub_id(local_backbone_run, tmp_path):
    from sefmodel.publish import public_backbone

    commit = "0123456789abcdef0123456789abcdef01234567"
    snapshot = f"/home/alice/.cache/huggingface/hub/models--facebook--dinov2-small/snapshots/{commit}"
    backbone = public_backbone(snapshot, None)
    assert (backbone.id, backbone.revision, backbone.local_copy) == ("facebook/dinov2-small", commit, False)
    assert public_backbone("facebook/dinov2-large", "abc").id == "facebook/dinov2-large"
    assert public_backbone("~/models/dinov2-large", None).id == "dinov2-large"
    with pytest.raises(SefError, match="already"):
        public_backbone("facebook/dinov2-large", None, base_model="facebook/dinov2-small")


def test_a_planted_path_in_a_staged_run_file_is_refused(evaluated_run, tmp_path):
    """Plots are copied as they are: a text file among them naming a local path stops the publish, by name."""
    plots = evaluated_run / "eval" / "plots"
    had_plots = plots.is_dir()
    plots.mkdir(exist_ok=True)
    (plots / "notes.txt").write_text("made from /home/alice/bench/real\n")
    api = FakeHubApi()
    try:
        with pytest.raises(SefError, match=r"^eval/plots/notes\.txt holds a local path") as err:
            publish(evaluated_run, "me/sef-tiny", api=api, staging=tmp_path / "stage")
    finally:
        (plots / "notes.txt").unlink()
        if not had_plots:
            plots.rmdir()
    assert "\n" not in str(err.value) and api.calls == []


# ---- the golden set ------------------------------------------------------------------------------------------


def test_publish_stages_a_golden_set_scored_by_the_staged_detector(evaluated_run, tmp_path):
    from sefcore.privacy import file_local_paths
    from sefmodel.evaluation.golden import GoldenSet, tensors_sha256

    bench = evaluated_run.parent / "bench"
    result = CliRunner().invoke(app, ["publish", str(evaluated_run), "--repo", "me/sef-tiny", "--dry-run",
                                      "--staging", str(tmp_path / "s"), "--golden", str(bench),
                                      "--golden-count", "4"])  # fmt: skip
    assert result.exit_code == 0, result.output
    staged = tmp_path / "s"
    golden = GoldenSet.load(staged)
    assert [i.label for i in golden.images] == ["real", "fake", "real", "fake"]
    assert {f"golden/{i.file}" for i in golden.images} | {"golden/golden.json"} <= set(result.output.split())
    assert golden.provenance["detector"]["tensors_sha256"] == tensors_sha256(staged)
    assert golden.provenance["source"] == {"name": "bench", "kind": "images"}
    assert golden.provenance["command"] == "sefmodel publish"
    assert file_local_paths(staged / "golden" / "golden.json") == []
    card = ModelCard.load(staged / "README.md")
    assert "`sefmodel check me/sef-tiny` scores the 4 small images in `golden/`" in card.text
    # what users download reproduces
    check = CliRunner().invoke(app, ["check", str(staged)])
    assert check.exit_code == 0 and "reproduced: all 4" in check.output, check.output


def test_publish_takes_the_golden_set_from_the_detector_then_the_validation_shards(evaluated_run, tmp_path):
    from train_helpers import write_contract_shards

    from sefmodel.evaluation.golden import GoldenSet

    run = tmp_path / "run"
    shutil.copytree(evaluated_run, run)
    val = tmp_path / "data" / "val"
    write_contract_shards(val, shards=2, per_shard=2)
    (run / "train_config.json").write_text(json.dumps({"data": "hf://datasets/me/a/x.tar", "val_data": [str(val)]}))
    staged = publish(run, "me/x", dry_run=True, staging=tmp_path / "a", golden_count=4)
    assert staged.notes == ["golden set: 4 images from the run's validation shards, scored again"]
    assert [i.origin for i in staged.golden.images][:2] == ["shard-000000.tar:s0000/real", "shard-000000.tar:s0000/sr"]
    assert staged.golden.provenance["source"]["name"] == "val" and "golden/golden.json" in staged.files

    detector = SEFDetector.from_pretrained(run / "detector")
    detector.save_pretrained(run / "detector", golden=evaluated_run.parent / "bench", golden_count=2)
    staged = publish(run, "me/x", dry_run=True, staging=tmp_path / "b")
    assert staged.notes == ["golden set: 2 images from the detector's golden set, scored again"]
    assert [i.sha256 for i in staged.golden.images] == [i.sha256 for i in GoldenSet.load(run / "detector").images]

    # a default that cannot be used is said, and the detector is published without a golden set
    shutil.rmtree(run / "detector" / "golden")
    shutil.rmtree(val)
    staged = publish(run, "me/x", dry_run=True, staging=tmp_path / "c")
    assert staged.golden is None and not any(f.startswith("golden/") for f in staged.files)
    assert staged.notes[0].startswith("no golden set: the run's validation shards could not be used")


def test_publish_without_a_golden_source_says_how_to_add_one_and_a_bad_one_stops_it(evaluated_run, tmp_path):
    staged = publish(evaluated_run, "me/x", dry_run=True, staging=tmp_path / "a")
    assert staged.golden is None and staged.notes == [
        "no golden set: give --golden SOURCE (held-out shards or images) so that users can run `sefmodel check` on "
        "the published detector"
    ]
    assert "Reproducing" not in (staged.folder / "README.md").read_text()
    api = FakeHubApi()
    with pytest.raises(SefError, match="golden source .*missing: no such file or folder"):
        publish(evaluated_run, "me/x", api=api, staging=tmp_path / "b", golden=str(tmp_path / "missing"))
    assert api.calls == []
    args = ["publish", str(evaluated_run), "--repo", "me/x", "--dry-run", "--staging", str(tmp_path / "c"),
            "--golden", str(tmp_path), "--golden-count", "0"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and "1 to 64 images, not 0" in result.output, result.output
