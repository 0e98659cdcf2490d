"""A threshold from real images alone (``sefmodel calibrate``): the quantile rule by hand, its FPR on unseen reals
within sampling error, and the stored ``threshold.json`` travelling with the detector into predict, serve,
save/load and publish."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import photo_like
from PIL import Image
from sef_cli.sefmodel import app
from typer.testing import CliRunner

from sefcore.errors import SefError
from sefmodel import SEFDetector
from sefmodel.evaluation import metrics as M
from sefmodel.evaluation.threshold import (
    THRESHOLD_NAME,
    CalibratedThreshold,
    UncertainBand,
    decision_threshold,
    fit_threshold,
    label,
)
from sefmodel.pipeline import score

runner = CliRunner()


def test_threshold_at_fpr_by_hand():
    scores = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
    assert M.threshold_at_fpr(scores, 0.1) == 0.9  # one real of ten (1.0) above
    assert M.threshold_at_fpr(scores, 0.25) == 0.8  # 2.5 allowed: two above
    assert M.threshold_at_fpr(scores, 0.05) == 1.0  # fewer than one allowed: the highest score, none above
    assert M.threshold_at_fpr(scores, 0.0) == 1.0
    # ties at the threshold stay real: three 0.5s, FPR 0.4 allows two of five above, only 0.9 is
    assert M.threshold_at_fpr([0.1, 0.5, 0.5, 0.5, 0.9], 0.4) == 0.5
    for n, fpr in ((100, 0.05), (1000, 0.01), (7, 0.3), (1, 0.5)):  # the inverted-CDF quantile
        s = np.round(np.random.default_rng(n).random(n), 2)
        t = M.threshold_at_fpr(s, fpr)
        assert t == np.quantile(s, 1 - fpr, method="inverted_cdf")
        assert (s > t).mean() <= fpr
    with pytest.raises(ValueError, match="fpr"):
        M.threshold_at_fpr(scores, 1.0)


@pytest.mark.parametrize("fpr", [0.01, 0.05])
def test_real_only_threshold_reaches_its_fpr_on_unseen_reals(fpr):
    """Synthetic real scores (a Beta distribution, as a detector's P(generated) on reals looks): the threshold
    fitted on 5000 reals flags fpr of 50000 fresh reals within sampling error, and the held-out estimate's 95%
    interval contains the target."""
    rng = np.random.default_rng(int(fpr * 1000))
    scores = rng.beta(2, 8, 5000)
    keys = [f"photos/{i:05d}.jpg" for i in range(scores.size)]
    cal = fit_threshold(keys, scores, fpr)
    fresh = rng.beta(2, 8, 50_000)
    # the order statistic flags (k+1)/(n+1) of new reals on average, with a spread of about sqrt(fpr/n)
    assert (fresh > cal.threshold).mean() == pytest.approx(fpr, abs=4 * np.sqrt(fpr / scores.size) + 0.002)
    h = cal.heldout
    assert h["n_fit"] + h["n_test"] == 5000 and 800 < h["n_test"] < 1200  # a hashed 20%
    assert h["fpr_ci95"][0] <= fpr <= h["fpr_ci95"][1]
    assert h["fpr"] == pytest.approx(fpr, abs=4 * np.sqrt(fpr / h["n_test"]))
    assert cal.n_images == 5000 and not cal.warnings
    # the split depends on the names only: the same keys give the same estimate
    assert fit_threshold(keys, scores, fpr).heldout == h


def test_too_few_reals_say_so():
    cal = fit_threshold(["a.png", "b.png", "c.png"], np.array([0.2, 0.4, 0.3]), 0.01)
    assert cal.threshold == 0.4 and "cannot resolve" in cal.warnings[0]
    with pytest.raises(Exception, match="in \\(0, 1\\)"):
        fit_threshold(["a.png"], np.array([0.2]), 0.0)


# ---- end to end on a tiny random detector -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def reals(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("my_reals")
    for i in range(40):
        folder = root / ("holiday" if i % 2 else "work")
        folder.mkdir(exist_ok=True)
        Image.fromarray(photo_like(36 + i % 5, 34, seed=500 + i)).save(folder / f"{i:02d}.png")
    (root / "work" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    return root


@pytest.fixture(scope="module")
def calibrated(tiny_run, reals) -> Path:
    result = runner.invoke(
        app, ["calibrate", str(tiny_run), "--calibrate-on", str(reals), "--calibrate-fpr", "0.1", "--no-progress",
              "--device", "cpu"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "held-out FPR" in result.stdout and THRESHOLD_NAME in result.stdout
    return tiny_run / "detector"


def _real_probs(detector: SEFDetector, reals: Path) -> np.ndarray:
    paths = sorted(p for p in reals.rglob("*.png") if p.name != "broken.png")
    return score(detector, [Image.open(p).convert("RGB") for p in paths]).probs.numpy().astype(np.float64)


def test_calibrate_stores_the_quantile_of_the_reals_and_no_path(calibrated, reals, tmp_path):
    text = (calibrated / THRESHOLD_NAME).read_text()
    stored = json.loads(text)
    assert str(reals) not in text and "holiday" not in text and str(calibrated) not in text  # counts, no names
    probs = _real_probs(SEFDetector.from_pretrained(calibrated), reals)
    # computed independently: the 4th highest of 40 scores leaves at most 4 (10%) above it
    assert stored["threshold"] == pytest.approx(np.sort(probs)[-5], abs=1e-6)
    assert stored["fpr"] == 0.1 and stored["n_images"] == 40 and stored["n_failed"] == 1
    h = stored["heldout"]
    assert h["n_fit"] + h["n_test"] == 40 and h["n_test"] > 0 and 0 <= h["fpr"] <= 1
    assert (probs > stored["threshold"]).sum() <= 4


def test_predict_and_serve_default_to_the_stored_threshold(calibrated, reals):
    detector = SEFDetector.from_pretrained(calibrated)
    stored = CalibratedThreshold.load(calibrated)
    assert detector.calibrated_threshold == stored
    assert decision_threshold(detector) == (stored.threshold, f"{THRESHOLD_NAME} (FPR 0.1 on 40 reals)")
    assert decision_threshold(detector, 0.3) == (0.3, "--threshold")

    result = runner.invoke(app, ["predict", str(calibrated), str(reals / "work"), "--device", "cpu"])
    records = [json.loads(line) for line in result.stdout.splitlines()]
    scored = [r for r in records if "prob" in r]
    assert len(scored) == 20 and f"threshold {stored.threshold:.6g}" in result.output
    probs = {p.name: float(v) for p, v in zip(sorted((reals / "work").glob("[0-9]*.png")),
                                              _real_probs(detector, reals / "work"), strict=True)}  # fmt: skip
    for r in scored:
        assert r["label"] == ("generated" if probs[Path(r["path"]).name] > stored.threshold else "real")
    explicit = runner.invoke(app, ["predict", str(calibrated), str(reals / "work"), "--threshold", "0", "--device",
                                   "cpu"])  # fmt: skip
    assert {json.loads(line)["label"] for line in explicit.stdout.splitlines() if "prob" in line} == {"generated"}

    from sefmodel.serve.app import Scorer, ServeConfig, detector_info

    assert detector_info(Scorer(detector, ServeConfig()), None)["threshold"] == stored.threshold
    assert detector_info(Scorer(detector, ServeConfig(threshold=0.25)), None)["threshold"] == 0.25


def test_threshold_travels_with_save_load_and_publish_and_goes_with_new_weights(calibrated, tmp_path):
    detector = SEFDetector.from_pretrained(calibrated)
    detector.save_pretrained(tmp_path / "copy")
    assert json.loads((tmp_path / "copy" / THRESHOLD_NAME).read_text()) == json.loads(
        (calibrated / THRESHOLD_NAME).read_text()
    )
    from sefmodel.publish import publish

    staged = publish(calibrated, "me/sef-tiny", dry_run=True, staging=tmp_path / "stage")
    assert THRESHOLD_NAME in staged.files
    assert str(tmp_path) not in (tmp_path / "stage" / THRESHOLD_NAME).read_text()
    # a detector without a threshold saved over the folder removes the stale file: it was fitted to other weights
    detector.calibrated_threshold = None
    detector.save_pretrained(tmp_path / "copy")
    assert not (tmp_path / "copy" / THRESHOLD_NAME).exists()
    assert SEFDetector.from_pretrained(tmp_path / "copy").calibrated_threshold is None


def test_calibrate_errors_are_one_line(tiny_run, tmp_path):
    bad = runner.invoke(app, ["calibrate", str(tiny_run), "--calibrate-on", str(tmp_path), "--device", "cpu"])
    assert bad.exit_code == 2 and "no image files" in bad.output
    bad = runner.invoke(app, ["calibrate", "me/remote", "--calibrate-on", str(tmp_path)])
    assert bad.exit_code == 2 and "local detector folder" in bad.output
    bad = runner.invoke(app, ["calibrate", str(tiny_run), "--calibrate-on", str(tmp_path), "--calibrate-fpr", "1"])
    assert bad.exit_code == 2 and "(0, 1)" in bad.output


# ---- the uncertain band -------------------------------------------------------------------------------------------


def test_uncertain_band_by_hand():
    band = UncertainBand.parse("0.3,0.7")
    assert (band.low, band.high) == (0.3, 0.7) and UncertainBand.parse(None) is None
    assert [label(p, 0.5, band) for p in (0.1, 0.3, 0.5, 0.7, 0.71)] == [
        "real", "uncertain", "uncertain", "uncertain", "generated"
    ]  # fmt: skip
    assert [label(p, 0.5) for p in (0.5, 0.51)] == ["real", "generated"]  # no band: the threshold decides
    assert label(0.2, 0.1, UncertainBand(0.5, 0.6)) == "generated"  # outside the band the threshold still decides
    for bad in ("0.7,0.3", "0.2", "a,b", "0.1,1.5"):
        with pytest.raises(SefError, match="--uncertain"):
            UncertainBand.parse(bad)


def test_predict_and_serve_report_the_uncertain_band(tiny_run, reals):
    detector = SEFDetector.from_pretrained(tiny_run / "detector")
    folder = reals / "holiday"
    paths = sorted(folder.glob("*.png"))
    probs = _real_probs(detector, folder)
    low, high = float(np.sort(probs)[5]), float(np.sort(probs)[12])  # eight images inside, both ends included
    result = runner.invoke(app, ["predict", str(tiny_run), str(folder), "--threshold", "0.5", "--uncertain",
                                 f"{low!r},{high!r}", "--device", "cpu"])  # fmt: skip
    assert result.exit_code == 0, result.output
    labels = [json.loads(line)["label"] for line in result.stdout.splitlines()]
    expected = ["uncertain" if low <= p <= high else ("generated" if p > 0.5 else "real") for p in probs]
    assert labels == expected and labels.count("uncertain") == 8
    bad = runner.invoke(app, ["predict", str(tiny_run), str(folder), "--uncertain", "0.9,0.1"])
    assert bad.exit_code == 2 and "--uncertain" in bad.output

    from sefmodel.serve.app import Scorer, ServeConfig, detector_info

    config = ServeConfig(threshold=0.5, uncertain=f"{low!r},{high!r}")
    scorer = Scorer(detector, config)
    assert detector_info(scorer, None)["uncertain"] == [low, high]
    try:
        with contextlib.ExitStack() as stack:
            uploads = [(p.name, stack.enter_context(p.open("rb"))) for p in paths]
            records = scorer.score(uploads, heatmaps=False)
    finally:
        scorer.close()
    assert [r["label"] for r in records] == expected
    with pytest.raises(SefError, match="--uncertain"):
        ServeConfig(uncertain="0.5")
