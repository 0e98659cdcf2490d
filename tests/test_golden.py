"""A detector's golden set (sefmodel golden / check, save_pretrained(golden=...)) on a tiny random detector: the round
trip, a check that passes on this machine and fails when a weight changes, and one clear line for every bad input."""

from __future__ import annotations

import hashlib
import json
import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import photo_like
from conftest_model import SIZE, randomize_trained, tiny_detector
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from sef_cli.sefmodel import app
from train_helpers import write_contract_shards
from typer.testing import CliRunner

from sefcore.errors import SefError
from sefcore.privacy import json_local_paths
from sefmodel import SEFDetector
from sefmodel.evaluation.golden import DEFAULT_TOLERANCE, GOLDEN_DIR, GOLDEN_FILE, GoldenSet, golden_candidates
from sefmodel.pipeline import score

runner = CliRunner()


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _labelled_folder(root: Path, n: int = 5) -> Path:
    """real/ and fake/ images larger than the detector's crop (so the stored crop is the centre of each)."""
    for label in ("real", "fake"):
        (root / label).mkdir(parents=True)
        for i in range(n):
            pixels = photo_like(SIZE + 20, SIZE + 8, seed=i + (50 if label == "fake" else 0))
            Image.fromarray(pixels).save(root / label / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    return _labelled_folder(tmp_path_factory.mktemp("golden-src") / "photos")


@pytest.fixture
def run(tmp_path, images) -> Path:
    """A run folder whose detector carries a golden set of 6 images from a labelled folder."""
    run = tmp_path / "run"
    randomize_trained(tiny_detector()).save_pretrained(run / "detector", golden=images, golden_count=6)
    return run


def _lines(output: str, prefix: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith(prefix)]


def test_golden_set_round_trip(run, images):
    folder = run / "detector" / GOLDEN_DIR
    data = json.loads((folder / GOLDEN_FILE).read_text())
    assert data["format"] == "sef-golden/1" and data["tolerance"] == DEFAULT_TOLERANCE == 1e-4
    assert data["device"] == "cpu" and data["dtype"] == "float32" and data["crop"] == "center"
    files = [item["file"] for item in data["images"]]
    assert sorted(p.name for p in folder.glob("*.png")) == sorted(files) and len(files) == 6
    assert [item["label"] for item in data["images"]] == ["real", "fake"] * 3  # reals and fakes in turn
    detector = SEFDetector.from_pretrained(run / "detector")
    for item in data["images"]:
        path = folder / item["file"]
        assert item["sha256"] == _sha(path)
        origin = images / item["origin"]  # the stored file is the centre crop of the source, nothing resampled
        source = np.asarray(Image.open(origin).convert("RGB"))
        top, left = (source.shape[0] - SIZE) // 2, (source.shape[1] - SIZE) // 2
        assert np.array_equal(np.asarray(Image.open(path)), source[top : top + SIZE, left : left + SIZE])
        # the recorded probability is this detector's on the stored file (scored here independently, in a batch)
        prob = score(detector, [path], crop="center").probs[0].item()
        assert abs(item["prob"] - prob) <= 1e-6
    prov = data["provenance"]
    weight_files = ("backbone.safetensors", "model.safetensors")
    assert prov["detector"]["weights_sha256"] == {name: _sha(run / "detector" / name) for name in weight_files}
    assert list(prov["detector"]["tensors_sha256"]) == list(weight_files)
    assert prov["source"] == {"name": "photos", "kind": "images"} and prov["seed"] is None
    for name in ("python", "torch", "transformers", "peft", "numpy", "pillow", "sef-toolkit"):
        assert prov["packages"][name], name
    assert prov["packages"]["torch"] == torch.__version__ and data["platform"]["machine"]
    assert json_local_paths(data) == []
    loaded = GoldenSet.load(run / "detector")
    assert [i.file for i in loaded.images] == files and loaded.to_dict() == data


def test_check_passes_on_the_same_machine(run):
    result = runner.invoke(app, ["check", str(run), "--threads", "1"])
    assert result.exit_code == 0, result.output
    assert len(_lines(result.output, "ok ")) == 6 and not _lines(result.output, "FAILED")
    assert "reproduced: all 6 golden images within 1e-04" in result.output and "NOT" not in result.output


def test_check_fails_with_a_clear_line_when_a_weight_is_altered(run):
    weights = run / "detector" / "model.safetensors"
    with safe_open(str(weights), framework="pt") as f:
        meta = f.metadata()
    tensors = load_file(str(weights))
    head = next(k for k in tensors if k.startswith("fusion."))
    tensors[head] = tensors[head] + 0.5
    save_file(tensors, str(weights), metadata=meta)
    result = runner.invoke(app, ["check", str(run)])
    assert result.exit_code == 1, result.output
    failed = _lines(result.output, "FAILED")
    assert failed and all("differs by" in line and "over the tolerance 1e-04" in line for line in failed)
    assert "NOT reproduced" in result.output
    assert "weight files are not those the golden set was made with" in result.output
    assert "every recorded package version matches this install" in result.output


def test_check_lists_the_package_versions_that_differ(run):
    path = run / "detector" / GOLDEN_DIR / GOLDEN_FILE
    data = json.loads(path.read_text())
    data["provenance"]["packages"]["torch"] = "0.0.1"
    data["images"][0]["prob"] = abs(data["images"][0]["prob"] - 0.25)  # as another install would have scored it
    path.write_text(json.dumps(data))
    result = runner.invoke(app, ["check", str(run)])
    assert result.exit_code == 1, result.output
    assert len(_lines(result.output, "FAILED")) == 1 and "differs by 2.5e-01" in result.output
    assert f"torch {torch.__version__} (recorded: 0.0.1)" in result.output
    assert "weight files" not in result.output  # the weights are the recorded ones
    # a looser tolerance, asked for, accepts it
    result = runner.invoke(app, ["check", str(run), "--tolerance", "0.3"])
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (None, "has no golden set (golden/golden.json): make one with `sefmodel golden RUN SOURCE`"),
        ("{not json", "is not valid JSON"),
        ('{"format": "sef-golden/9", "images": []}', "format 'sef-golden/9' is not 'sef-golden/1'"),
        ('{"format": "sef-golden/1", "images": []}', "'images' must be a non-empty list"),
        ('{"format": "sef-golden/1", "images": [{"file": "a.png", "sha256": "x"}]}', "images[0] has no valid 'prob'"),
        ('{"format": "sef-golden/1", "images": [{"file": "../config.json", "sha256": "x", "prob": 0.5}]}',
         "not a file inside golden/"),
        ('{"format": "sef-golden/1", "images": [{"file": "a.png", "sha256": "x", "prob": 2}]}', "outside [0, 1]"),
        ('{"format": "sef-golden/1", "tolerance": -1, "images": [{"file": "a.png", "sha256": "x", "prob": 0.5}]}',
         "tolerance -1 is not a number >= 0"),
        ("[1, 2]", "expected a JSON object"),
    ],
)  # fmt: skip
def test_a_missing_or_damaged_golden_json_is_one_line(run, damage, message):
    path = run / "detector" / GOLDEN_DIR / GOLDEN_FILE
    if damage is None:
        shutil.rmtree(path.parent)
    else:
        path.write_text(damage)
    result = runner.invoke(app, ["check", str(run)])
    assert result.exit_code == 2, result.output
    errors = _lines(result.output, "error:")
    assert len(errors) == 1 and message in errors[0], result.output
    assert "Traceback" not in result.output and not _lines(result.output, "ok ")


def test_a_missing_or_changed_image_fails_alone(run):
    folder = run / "detector" / GOLDEN_DIR
    data = json.loads((folder / GOLDEN_FILE).read_text())
    first, second = data["images"][0]["file"], data["images"][1]["file"]
    (folder / first).unlink()
    Image.fromarray(photo_like(SIZE, SIZE, seed=99)).save(folder / second)
    result = runner.invoke(app, ["check", str(run)])
    assert result.exit_code == 1, result.output
    failed = _lines(result.output, "FAILED")
    assert [line.split()[1] for line in failed] == [first, second]
    assert "missing" in failed[0] and "file changed" in failed[1]
    assert len(_lines(result.output, "ok ")) == 4 and "NOT reproduced: 2 of 6" in result.output


def test_bad_check_options_are_one_line(run, tmp_path):
    for args, message in (
        (["check", str(run), "--tolerance", "-1"], "--tolerance must be a number >= 0"),
        (["check", str(tmp_path / "nowhere")], "nowhere"),
        (["check", str(run), "--device", "cuda:7"] if not torch.cuda.is_available() else ["check", "x/y/z"], ""),
    ):
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (args, result.output)
        errors = _lines(result.output, "error:")
        assert len(errors) == 1 and message in errors[0], result.output


def test_golden_command_writes_a_set_from_a_build_and_records_its_provenance(tmp_path, monkeypatch):
    write_contract_shards(tmp_path / "work" / "held-out", shards=3, per_shard=2, fakes=("vae", "sr"))
    build = tmp_path / "work" / "held-out"
    urls = sorted(p.name for p in build.glob("*.tar"))
    (build / "manifest.json").write_text(json.dumps({"shardlist": [{"url": u, "nsamples": 2} for u in urls],
                                                     "sef": {"fields": ["real", "vae", "sr"]}}))  # fmt: skip
    run = tmp_path / "work" / "run"
    randomize_trained(tiny_detector()).save_pretrained(run / "detector")
    monkeypatch.chdir(tmp_path / "work")
    result = runner.invoke(app, ["golden", str(run.resolve()), "../work/held-out", "--count", "7"])
    assert result.exit_code == 0, result.output
    assert "golden set: 7 images (4 real, 3 fake)" in result.output
    data = json.loads((run / "detector" / GOLDEN_DIR / GOLDEN_FILE).read_text())
    # one sample per shard in turn (its real and one fake, the fakes in turn), then the other fakes
    assert [i["origin"] for i in data["images"]] == [
        "shard-000000.tar:s0000/real", "shard-000000.tar:s0000/vae", "shard-000001.tar:s0002/real",
        "shard-000001.tar:s0002/sr", "shard-000002.tar:s0004/real", "shard-000002.tar:s0004/vae",
        "shard-000000.tar:s0001/real",
    ]  # fmt: skip
    prov = data["provenance"]
    assert prov["source"] == {"name": "held-out", "kind": "sefdata build",
                              "manifest_sha256": _sha(build / "manifest.json")}  # fmt: skip
    assert shlex.split(prov["command"]) == ["sefmodel", "golden", "run", "held-out", "--count", "7"]
    assert json_local_paths(data) == []  # the absolute and ../ paths were reduced to names
    assert Image.open(run / "detector" / GOLDEN_DIR / data["images"][0]["file"]).size == (SIZE, SIZE)
    assert runner.invoke(app, ["check", str(run)]).exit_code == 0


def test_other_fakes_fill_a_set_that_one_fake_per_sample_leaves_short(tmp_path):
    paths = write_contract_shards(tmp_path / "s", shards=2, per_shard=1, fakes=("vae", "sr", "taesd"))
    picked = golden_candidates(paths, count=5, size=SIZE)
    assert [c.origin for c in picked.candidates] == [
        "shard-000000.tar:s0000/real",
        "shard-000000.tar:s0000/sr",
        "shard-000001.tar:s0001/real",
        "shard-000001.tar:s0001/taesd",
        "shard-000000.tar:s0000/taesd",
    ]  # fmt: skip  (no manifest: the fields in the order of the first sample's tar members)
    assert picked.source["kind"] == "shards" and picked.source["manifest_sha256"] is None


def test_bad_golden_sources_are_one_line(tmp_path, images):
    det = tmp_path / "det"
    detector = randomize_trained(tiny_detector())
    detector.save_pretrained(det)
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.txt").write_text("not a source")
    for source, count, message in (
        (tmp_path / "missing", 8, "no such file or folder"),
        (tmp_path / "notes.txt", 8, "expected a folder of images, a sefdata build folder or .tar shards"),
        (tmp_path / "empty", 8, "no image files"),
        (images, 0, "1 to 64 images, not 0"),
        (images, 65, "1 to 64 images, not 65"),
        ([], 8, "no images given"),
    ):
        with pytest.raises(SefError, match=message.replace("(", r"\(").replace(")", r"\)")):
            golden_candidates(source, count, SIZE)
    result = runner.invoke(app, ["golden", str(det), str(tmp_path / "empty")])
    assert result.exit_code == 2 and len(_lines(result.output, "error:")) == 1, result.output
    result = runner.invoke(app, ["golden", "someone/detector", str(images)])
    assert result.exit_code == 2 and "local detector folder" in result.output, result.output
    result = runner.invoke(app, ["golden", str(det), str(images), "--tolerance", "-0.1"])
    assert result.exit_code == 2 and "tolerance must be a number >= 0" in result.output, result.output
    with pytest.raises(ValueError, match="push_to_hub"):
        detector.save_pretrained(tmp_path / "x", golden=images, push_to_hub=True)
    assert not (det / GOLDEN_DIR).exists()  # nothing half-written by the refusals


def test_an_unreadable_image_is_left_out_and_said_so(tmp_path):
    root = _labelled_folder(tmp_path / "src", n=2)
    (root / "real" / "0.png").write_bytes(b"")
    (root / "fake" / "9.png").write_text("not an image")
    picked = golden_candidates(root, count=6, size=SIZE)  # 2 reals and 3 fakes asked for, 1 and 2 readable
    assert [c.origin for c in picked.candidates] == ["real/1.png", "fake/0.png", "fake/1.png"]
    assert picked.warnings == [
        "real/0.png: empty (zero-byte) file",
        "fake/9.png: not an image Pillow can read (unknown format or damaged header)",
    ]
    unlabelled = tmp_path / "plain"
    unlabelled.mkdir()
    for i in range(5):
        Image.fromarray(photo_like(20, 24, seed=i)).save(unlabelled / f"{i}.png")
    picked = golden_candidates(unlabelled, count=2, size=SIZE)  # spread over the folder; smaller than the crop: kept
    assert [(c.origin, c.label, c.image.size) for c in picked.candidates] == [("0.png", None, (20, 24)),
                                                                              ("2.png", None, (20, 24))]  # fmt: skip
    with pytest.warns(UserWarning, match="golden set: real/0.png: empty"):
        randomize_trained(tiny_detector()).save_pretrained(tmp_path / "det", golden=root, golden_count=4)


def test_a_golden_set_is_dropped_with_other_weights_and_kept_with_the_same(run, images, tmp_path):
    folder = run / "detector"
    detector = SEFDetector.from_pretrained(folder)
    detector.save_pretrained(folder)  # the same weights: the set still belongs to them
    assert (folder / GOLDEN_DIR / GOLDEN_FILE).is_file()
    assert runner.invoke(app, ["check", str(run)]).exit_code == 0
    randomize_trained(detector, seed=7).save_pretrained(folder)  # trained on: the set is stale
    assert not (folder / GOLDEN_DIR).exists()
    # another golden set is a source too: its images, labels and origins, scored again by this detector
    other = tmp_path / "other"
    randomize_trained(tiny_detector(), seed=3).save_pretrained(other, golden=images, golden_count=4)
    detector.save_pretrained(folder, golden=other / GOLDEN_DIR)
    mine, theirs = GoldenSet.load(folder), GoldenSet.load(other)
    same = [(i.sha256, i.label, i.origin) for i in theirs.images]
    assert [(i.sha256, i.label, i.origin) for i in mine.images] == same
    assert [i.prob for i in mine.images] != [i.prob for i in theirs.images]
    assert mine.provenance["source"] == theirs.provenance["source"]
    assert runner.invoke(app, ["check", str(folder)]).exit_code == 0


def test_check_reads_a_hub_detector_with_its_golden_set(run, monkeypatch):
    """A Hub id resolves to its snapshot, whose download includes golden/*.png (network replaced)."""
    import huggingface_hub

    seen = {}

    def listing(self, repo_id, revision=None, token=None):
        return sorted(p.relative_to(run / "detector").as_posix() for p in (run / "detector").rglob("*") if p.is_file())

    def snapshot(repo_id, **kwargs):
        seen.update(kwargs)
        return str(run / "detector")

    monkeypatch.setattr(huggingface_hub.HfApi, "list_repo_files", listing)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot)
    monkeypatch.setattr("sefcore.hub.require_hub_repo", lambda *a, **k: None)
    monkeypatch.setattr("sef_cli.sefmodel._check_ref", lambda *a, **k: None)
    result = runner.invoke(app, ["check", "someone/detector"])
    assert result.exit_code == 0, result.output
    assert "golden/*.png" in seen["allow_patterns"] and "reproduced: all 6" in result.output
