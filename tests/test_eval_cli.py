"""sefmodel eval / predict / explain on a tiny random detector saved to a temporary folder (offline, seconds)."""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import photo_like, scoring_inputs
from conftest_model import SIZE
from PIL import Image
from sef_cli.sefmodel import app
from typer.testing import CliRunner

from sefmodel import SEFDetector
from sefmodel.pipeline import score

runner = CliRunner()


@pytest.fixture(scope="module")
def run_dir(tiny_run) -> Path:
    return tiny_run


@pytest.fixture(scope="module")
def detector(run_dir) -> SEFDetector:
    return SEFDetector.from_pretrained(run_dir / "detector")


def _bench(root: Path, layout=("real", "fake"), subsets=("a", "b"), n=3) -> Path:
    for s, subset in enumerate(subsets):
        for label_i, folder in enumerate(layout):
            for i in range(n):
                path = root / subset / folder / f"{i}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                pixels = photo_like(40 + i, 36, seed=100 * s + 10 * label_i + i)
                if label_i:
                    pixels = (pixels // 2 + 60).astype(np.uint8)  # fakes differ, so scores differ
                Image.fromarray(pixels).save(path)
    return root


# ---- predict -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mixed_folder(tmp_path_factory) -> Path:
    root = scoring_inputs(tmp_path_factory.mktemp("predict"))
    assert Image.open(root / "sixteen.png").mode == "I;16"
    Image.fromarray(photo_like(10000, 64, 4)).save(root / "wide.png")
    Image.fromarray(photo_like(10000, 8, 5)).save(root / "thin.png")
    (root / "notes.txt").write_text("not an image: not picked up from a folder")
    return root


def test_predict_scores_good_files_and_reports_the_bad_one(run_dir, detector, mixed_folder, tmp_path):
    out = tmp_path / "scores.jsonl"
    result = runner.invoke(
        app, ["predict", str(run_dir), str(mixed_folder), "--out", str(out), "--batch-size", "2", "--device", "cpu"]
    )
    assert result.exit_code == 1, result.output  # documented: 1 = some inputs failed, the others written
    assert "error: " in result.output and "corrupt.jpg" in result.output
    records = {Path(r["path"]).name: r for r in map(json.loads, out.read_text().splitlines())}
    assert sorted(records) == ["cmyk.jpg", "corrupt.jpg", "good.png", "sixteen.png", "thin.png", "wide.png"]
    assert set(records["corrupt.jpg"]) == {"path", "error"} and "truncated" in records["corrupt.jpg"]["error"]
    for name in ("good.png", "cmyk.jpg", "sixteen.png", "wide.png", "thin.png"):
        r = records[name]
        assert 0 < r["prob"] < 1 and r["label"] in ("real", "generated") and r["num_crops"] == 1
        assert sum(r["gate_weights"].values()) == pytest.approx(1, abs=1e-5)
        assert r["label"] == ("generated" if r["prob"] > 0.5 else "real")
    # the 10000-px-wide image is center-cropped at native resolution, never resized as a whole
    wide = Image.open(mixed_folder / "wide.png")
    left = (wide.width - SIZE) // 2
    crop = wide.crop((left, (wide.height - SIZE) // 2, left + SIZE, (wide.height - SIZE) // 2 + SIZE))
    assert records["wide.png"]["prob"] == pytest.approx(float(score(detector, crop).probs[0]), abs=1e-5)
    thin = Image.open(mixed_folder / "thin.png")  # 8 px high: padded to the crop, width cropped
    strip = thin.crop(((thin.width - SIZE) // 2, 0, (thin.width - SIZE) // 2 + SIZE, 8))
    assert records["thin.png"]["prob"] == pytest.approx(float(score(detector, strip).probs[0]), abs=1e-5)


def test_predict_csv_exit_codes(run_dir, mixed_folder, tmp_path):
    good = [str(mixed_folder / "good.png"), str(mixed_folder / "sixteen.png")]
    result = runner.invoke(app, ["predict", str(run_dir), *good, "--format", "csv", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert [Path(r["path"]).name for r in rows] == ["good.png", "sixteen.png"]
    assert set(rows[0]) == {"path", "prob", "label", "gate_recon", "gate_sr", "num_crops", "error"}
    assert runner.invoke(app, ["predict", str(tmp_path / "nothing"), *good]).exit_code == 2
    assert runner.invoke(app, ["predict", str(run_dir), *good, "--format", "xml"]).exit_code == 2
    (tmp_path / "empty").mkdir()
    result = runner.invoke(app, ["predict", str(run_dir), str(tmp_path / "empty")])
    assert result.exit_code == 2 and "no image files" in result.output
    missing = runner.invoke(app, ["predict", str(run_dir), str(tmp_path / "gone.png"), *good])
    assert missing.exit_code == 1 and "no such file" in missing.output
    assert "Exit status: 0 every input was scored; 1" in runner.invoke(app, ["predict", "--help"]).output


@pytest.mark.parametrize("command", ["predict", "explain", "eval"])
def test_threads_option_sets_torch_threads_and_refuses_negative(command, run_dir, mixed_folder, tmp_path):
    import torch

    good = str(mixed_folder / "good.png")
    args = {"predict": [good], "explain": [good, "--out", str(tmp_path / "cam.png")],
            "eval": ["--bench", str(tmp_path / "nothing"), "--out", str(tmp_path / "e")]}[command]  # fmt: skip
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        result = runner.invoke(app, [command, str(run_dir), *args, "--device", "cpu", "--threads", "1"])
        assert torch.get_num_threads() == 1, result.output
    finally:
        torch.set_num_threads(before)
    bad = runner.invoke(app, [command, str(run_dir), *args, "--threads", "-1"])
    assert bad.exit_code == 2 and "--threads must be >= 0, got -1" in bad.output
    assert "Traceback" not in bad.output


# ---- eval ----------------------------------------------------------------------------------------------------


def test_eval_writes_tables_json_and_plots(run_dir, tmp_path):
    plain = _bench(tmp_path / "plain")
    numbered = _bench(tmp_path / "aigc" / "test", layout=("0_real", "1_fake"), subsets=("progan", "sd14"))
    result = runner.invoke(
        app,
        [
            "eval",
            str(run_dir),
            "--bench",
            str(plain),
            "--bench",
            f"aigcdetectbenchmark={numbered.parent}",
            "--perturb",
            "jpeg:90,jpeg:60",
            "--perturb",
            "blur:1",
            "--fake-jpeg",
            "auto",
            "--no-progress",
            "--batch-size",
            "4",
            "--device",
            "cpu",
        ],
    )
    assert result.exit_code == 0, result.output
    out = run_dir / "eval"  # default output folder of a local RUN
    results = json.loads((out / "results.json").read_text())
    assert list(results["benchmarks"]) == ["plain", "aigcdetectbenchmark"]
    aigc = results["benchmarks"]["aigcdetectbenchmark"]
    assert aigc["fake_jpeg_quality"] == 96 and results["benchmarks"]["plain"]["fake_jpeg_quality"] is None
    assert sorted(aigc["subsets"]) == ["progan", "sd14"] and aigc["metrics"]["n_real"] == 6
    for key in ("accuracy", "real_acc", "fake_acc", "ap", "auroc"):
        values = [b["metrics"][key] for b in results["benchmarks"].values()]
        assert results["summary"]["mean"][key] == pytest.approx(np.mean(values))
        assert results["summary"]["worst"][key] == pytest.approx(min(values))
    assert [p["value"] for p in results["robustness"]["jpeg"]["points"]] == [60, 90]
    assert set(aigc["gate_weights"]) == {"real", "fake"}

    # metrics agree with the per-image scores written beside them
    from sefmodel.evaluation import metrics as M

    rows = [r for r in csv.DictReader((out / "scores.csv").open()) if r["benchmark"] == "plain"]
    clean = [r for r in rows if r["condition"] == "clean"]
    labels, probs = [int(r["label"]) for r in clean], [float(r["prob"]) for r in clean]
    assert results["benchmarks"]["plain"]["metrics"]["ap"] == pytest.approx(M.average_precision(labels, probs))
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(labels, probs, drop_intermediate=False)
    for key, target in (("tpr_fpr1", 0.01), ("tpr_fpr5", 0.05)):
        assert results["benchmarks"]["plain"]["metrics"][key] == pytest.approx(tpr[fpr <= target].max())
        values = [b["metrics"][key] for b in results["benchmarks"].values()]
        assert results["summary"]["mean"][key] == pytest.approx(np.mean(values))
        assert results["summary"]["worst"][key] == pytest.approx(min(values))
        assert all(m[key] is not None for m in aigc["subsets"].values())  # per subset (generator) too
    assert {r["condition"] for r in rows} == {"clean", "jpeg:90", "jpeg:60", "blur:1"}

    report = (out / "results.md").read_text()
    linked = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report)
    assert set(linked) == {
        "plots/benchmarks.png",
        "plots/roc.png",
        "plots/robustness_jpeg.png",
        "plots/robustness_blur.png",
    }
    for rel in linked:
        with Image.open(out / rel) as im:
            im.load()
            assert im.format == "PNG" and im.width > 400 and im.height > 300
            assert len(np.unique(np.asarray(im.convert("L")))) > 10  # something was drawn
    table = list(csv.DictReader((out / "results.csv").open()))
    assert {"plain", "aigcdetectbenchmark", "mean", "worst"} <= {r["benchmark"] for r in table}
    assert {"tpr_fpr1", "tpr_fpr5"} <= set(table[0]) and "TPR@1%FPR" in report and "TPR@5%FPR" in report

    from huggingface_hub.repocard_data import model_index_to_eval_results

    name, evals = model_index_to_eval_results(results["model-index"])
    assert name == str(run_dir) and {e.dataset_type for e in evals} == {"plain", "aigcdetectbenchmark"}


def test_eval_calibration_set_and_errors(run_dir, tmp_path):
    bench = _bench(tmp_path / "b", subsets=("x",), n=4)
    calib = _bench(tmp_path / "cal", subsets=("x",), n=4)
    (bench / "x" / "fake" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    (bench / "manifest.json").write_text('{"name": "a sefdata build"}\n')  # as a sefdata build has one
    out = tmp_path / "out"
    result = runner.invoke(
        app,
        [
            "eval",
            str(run_dir / "detector"),
            "--bench",
            f"mine={bench}",
            "--calibrate",
            str(calib),
            "--out",
            str(out),
            "--no-plots",
            "--no-progress",
            "--device",
            "cpu",
        ],
    )
    assert result.exit_code == 0, result.output
    results = json.loads((out / "results.json").read_text())
    cal = results["protocol"]["calibration"]
    assert cal["method"] == "held-out set" and cal["n_real"] == 4
    entry = results["benchmarks"]["mine"]
    assert entry["failed"] == 1 and entry["errors"][0]["key"] == "x/fake/broken.png"
    assert entry["metrics"]["n_fake"] == 4  # the unreadable file is reported, not scored
    assert entry["metrics"]["acc_cal"] is not None and results["plots"] == {}
    assert "broken.png" in (out / "results.md").read_text()

    # provenance: what made the numbers, recomputed here, and no local path in it
    import hashlib
    import importlib.metadata
    import shlex

    import sklearn

    from sefcore.privacy import json_local_paths

    prov = results["provenance"]
    weights = {
        f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted((run_dir / "detector").glob("*.safetensors"))
    }
    assert "model.safetensors" in weights and prov["detector"]["weights_sha256"] == weights
    assert prov["detector"]["source"] == "detector"
    saved = json.loads((run_dir / "detector" / "config.json").read_text())
    assert prov["detector"]["config"] == saved  # the tiny detector's backbone is built from config: no path in it
    assert prov["benchmarks"]["mine"] == {
        "source": "b",
        "definition": None,
        "manifest_sha256": hashlib.sha256((bench / "manifest.json").read_bytes()).hexdigest(),
    }
    assert prov["seed"] is None
    assert prov["packages"]["torch"] == torch.__version__ and prov["packages"]["numpy"] == np.__version__
    assert prov["packages"]["scikit-learn"] == sklearn.__version__
    assert prov["packages"]["sef-toolkit"] == importlib.metadata.version("sef-toolkit")
    # the options in --help's order: eval's (EvalConfig's), the runtime block's, the command's own
    assert shlex.split(prov["command"]) == [
        "sefmodel", "eval", "detector", "--bench", "mine=b", "--calibrate", "cal", "--no-plots", "--device", "cpu",
        "--out", "out", "--no-progress",
    ]  # fmt: skip
    assert json_local_paths(prov) == [] and json_local_paths({"command": f"eval {bench}"})  # the check can fail
    bad = runner.invoke(app, ["eval", str(run_dir), "--bench", str(bench), "--fake-jpeg", "200"])
    assert bad.exit_code == 2 and "--fake-jpeg" in bad.output
    bad = runner.invoke(app, ["eval", str(run_dir), "--bench", f"genimage={bench}", "--out", str(out)])
    assert bad.exit_code == 2 and "no image under" in bad.output


def test_eval_robustness_presets_are_reported_by_name(run_dir, tmp_path):
    """--robustness dda and social each give a named condition, scored on reals and fakes alike."""
    bench = _bench(tmp_path / "b", subsets=("x",), n=4)
    out = tmp_path / "out"
    args = ["eval", str(run_dir), "--bench", f"mine={bench}", "--out", str(out), "--no-plots", "--no-progress"]
    result = runner.invoke(
        app, [*args, "--robustness", "dda", "-r", "social", "--perturb", "jpeg:96", "--device", "cpu"]
    )
    assert result.exit_code == 0, result.output
    results = json.loads((out / "results.json").read_text())
    presets = results["robustness_presets"]
    assert list(presets) == ["dda", "social"] and results["config"]["robustness"] == ["dda", "social"]
    assert list(presets["dda"]["conditions"]) == ["jpeg:96"]
    assert list(presets["social"]["conditions"]) == ["socialchain:1080"]
    rows = list(csv.DictReader((out / "scores.csv").open()))
    assert [r["condition"] for r in rows if r["key"] == "x/real/0.png"] == ["clean", "jpeg:96", "socialchain:1080"]

    from sefmodel.evaluation import metrics as M

    for name, label in (("dda", "jpeg:96"), ("social", "socialchain:1080")):
        scored = [r for r in rows if r["condition"] == label]
        labels, probs = [int(r["label"]) for r in scored], [float(r["prob"]) for r in scored]
        metrics = presets[name]["conditions"][label]
        assert metrics["benchmarks"]["mine"]["ap"] == pytest.approx(M.average_precision(labels, probs))
        assert metrics["mean"]["ap"] == pytest.approx(metrics["benchmarks"]["mine"]["ap"])
        clean = {r["key"]: float(r["prob"]) for r in rows if r["condition"] == "clean"}
        for cls in ("real", "fake"):  # both classes are perturbed
            assert any(abs(float(r["prob"]) - clean[r["key"]]) > 1e-6 for r in scored if f"/{cls}/" in r["key"])
    report = (out / "results.md").read_text()
    assert "## Robustness preset `dda`" in report and "## Robustness preset `social`" in report
    table = list(csv.DictReader((out / "results.csv").open()))
    assert {"jpeg:96", "socialchain:1080"} <= {r["condition"] for r in table}
    bad = runner.invoke(app, [*args, "--robustness", "twitter"])
    assert bad.exit_code == 2 and "unknown robustness preset 'twitter'; known: dda, social" in bad.output


# ---- explain -------------------------------------------------------------------------------------------------


def test_explain_per_expert_grad_cam(run_dir, detector, tmp_path, mixed_folder):
    from sefmodel.explain import grad_cam

    image = Image.open(mixed_folder / "good.png")
    ex = grad_cam(detector, image)
    grid = SIZE // detector.backbone.patch_size
    assert set(ex.maps) == {"recon", "sr", "fused"}
    for heat in ex.maps.values():
        assert heat.shape == (grid, grid) and heat.min() >= 0 and heat.max() == pytest.approx(1)
    assert not np.allclose(ex.maps["recon"], ex.maps["sr"])  # the experts' adapters differ, so do their maps
    assert ex.prob == pytest.approx(float(score(detector, image).probs[0]), abs=1e-5)
    assert sum(ex.gate_weights.values()) == pytest.approx(1)
    assert ex.expert_probs["sr"] == pytest.approx(
        torch.sigmoid(detector(detector.preprocess(image), expert="sr")["logits"][0]).item(), abs=1e-5
    )
    out = tmp_path / "cam.png"
    result = runner.invoke(app, ["explain", str(run_dir), str(mixed_folder / "wide.png"), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "gate recon" in result.output
    with Image.open(out) as fig:
        assert fig.width > 4 * 256 and fig.height > 256
    bad = runner.invoke(app, ["explain", str(run_dir), str(mixed_folder / "corrupt.jpg"), "--out", str(out)])
    assert bad.exit_code == 2 and "corrupt" in bad.output
