"""Metrics against values computed by hand on fixed score lists, and against scikit-learn's own functions on
random scores with ties and with a class missing."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn import metrics as skm

from sefmodel.evaluation import metrics as M

# sorted by score: 0.9 F, 0.8 R, 0.4 F, 0.35 F, 0.1 R  (F = generated, R = real)
LABELS = [0, 1, 1, 0, 1]
SCORES = [0.1, 0.4, 0.35, 0.8, 0.9]


def test_accuracies_at_threshold_by_hand():
    acc = M.accuracies(LABELS, SCORES, 0.5)
    # predicted generated (> 0.5): 0.8 (real: wrong), 0.9 (fake: right); fakes 0.4, 0.35 missed; real 0.1 right
    assert acc["accuracy"] == pytest.approx(2 / 5)
    assert acc["real_acc"] == pytest.approx(1 / 2)
    assert acc["fake_acc"] == pytest.approx(1 / 3)
    assert acc["balanced_acc"] == pytest.approx((1 / 2 + 1 / 3) / 2)
    assert M.accuracies([0, 1], [0.5, 0.5])["fake_acc"] == 0.0  # exactly 0.5 counts as real


def test_average_precision_by_hand():
    # precision at each fake: 1/1 (recall 1/3), 2/3 (recall 2/3), 3/4 (recall 1)
    assert M.average_precision(LABELS, SCORES) == pytest.approx((1 + 2 / 3 + 3 / 4) / 3)
    # a tie between a fake and a real is one threshold: precision 1/2 at recall 1
    assert M.average_precision([1, 0], [0.7, 0.7]) == pytest.approx(0.5)
    assert M.average_precision([1, 1, 0], [0.9, 0.2, 0.5]) == pytest.approx((1 + 2 / 3) / 2)


def test_auroc_by_hand_with_ties():
    # fake-real pairs won: 0.4>0.1, 0.35>0.1, 0.9>0.1, 0.9>0.8 -> 4 of 6
    assert M.auroc(LABELS, SCORES) == pytest.approx(4 / 6)
    assert M.auroc([0, 1, 0, 1], [0.3, 0.3, 0.1, 0.9]) == pytest.approx((0.5 + 1 + 1 + 1) / 4)
    assert M.auroc([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]) == 1.0


def test_undefined_metrics_are_none_not_zero():
    assert M.average_precision([1, 1], [0.2, 0.3]) is None
    assert M.auroc([0, 0], [0.2, 0.3]) is None
    only_fakes = M.compute([1, 1], [0.2, 0.9])
    assert only_fakes["fake_acc"] == 0.5 and only_fakes["real_acc"] is None and only_fakes["balanced_acc"] is None
    assert only_fakes["n_fake"] == 2 and only_fakes["n_real"] == 0


def test_calibrated_threshold_maximises_balanced_accuracy():
    assert M.calibrate_threshold([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]) == pytest.approx(0.25)
    assert M.calibrate_threshold([0, 1], [0.2, 0.9]) == 0.5  # 0.5 already separates: the closest to 0.5 wins
    t = M.calibrate_threshold(LABELS, SCORES)
    assert M.accuracies(LABELS, SCORES, t)["balanced_acc"] == pytest.approx(max(
        M.accuracies(LABELS, SCORES, c)["balanced_acc"] for c in (0.0, 0.2, 0.375, 0.6, 0.85, 1.0)
    ))  # fmt: skip
    with pytest.raises(ValueError, match="both"):
        M.calibrate_threshold([1, 1], [0.1, 0.2])


def test_tpr_at_fpr_by_hand():
    # 10 reals 0.0..0.9, 4 fakes; FPR 1% of 10 reals is 0 false positives, 5% too; 10% allows one
    reals = [i / 10 for i in range(10)]
    fakes = [0.95, 0.85, 0.5, 0.05]
    labels, scores = [0] * 10 + [1] * 4, reals + fakes
    assert M.tpr_at_fpr(labels, scores, 0.01) == pytest.approx(1 / 4)  # only 0.95 above every real
    assert M.tpr_at_fpr(labels, scores, 0.05) == pytest.approx(1 / 4)  # no threshold gives FPR 0.05: 0 counts
    assert M.tpr_at_fpr(labels, scores, 0.1) == pytest.approx(2 / 4)  # > 0.8: real 0.9 flagged, fakes 0.95, 0.85
    assert M.tpr_at_fpr(labels, scores, 0.15) == pytest.approx(2 / 4)  # the point just below the target
    assert M.tpr_at_fpr(labels, scores, 1.0) == 1.0
    # a tie of a fake with the top real moves as one point: catching the fake flags the real
    assert M.tpr_at_fpr([0, 0, 1, 1], [0.1, 0.8, 0.8, 0.9], 0.0) == pytest.approx(1 / 2)
    assert M.tpr_at_fpr([0, 0, 1, 1], [0.1, 0.8, 0.8, 0.9], 0.5) == 1.0
    assert M.tpr_at_fpr([0, 1], [0.7, 0.7], 0.5) == 0.0  # every real ties the best fake
    assert M.tpr_at_fpr([1, 1], [0.2, 0.3], 0.01) is None  # needs both classes
    with pytest.raises(ValueError, match="fpr"):
        M.tpr_at_fpr(labels, scores, 1.5)
    out = M.compute(labels, scores)
    assert (out["tpr_fpr1"], out["tpr_fpr5"]) == (pytest.approx(1 / 4), pytest.approx(1 / 4))


def test_roc_curve_ends_and_mean_worst():
    fpr, tpr = M.roc_curve(LABELS, SCORES)
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0, 0, 1, 1)
    mean, worst = M.mean_and_worst([{"ap": 0.5}, {"ap": 0.9}, {"ap": None}], ["ap"])
    assert mean["ap"] == pytest.approx(0.7) and worst["ap"] == 0.5


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="labels"):
        M.accuracies([0, 2], [0.1, 0.2])
    with pytest.raises(ValueError, match="2 labels for 3 scores"):
        M.auroc([0, 1], [0.1, 0.2, 0.3])


# ---- against scikit-learn on random scores -------------------------------------------------------------------


def _random_case(seed: int, n: int, levels: int | None, fake_share: float = 0.5):
    """Labels and scores; with ``levels`` the scores take only that many values (0, 1/(levels-1), ... 1), so
    many fakes and reals tie, some of them exactly at 0.5 when ``levels`` is odd."""
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < fake_share).astype(int)
    raw = np.clip(rng.normal(0.4 + 0.2 * labels, 0.25), 0, 1)
    scores = raw if levels is None else np.round(raw * (levels - 1)) / (levels - 1)
    return labels, scores


CASES = [(seed, n, levels) for seed in range(6) for n, levels in ((7, 3), (40, 5), (200, 11), (500, None))]


@pytest.mark.parametrize(("seed", "n", "levels"), CASES)
def test_metrics_equal_scikit_learn_on_random_scores_with_ties(seed, n, levels):
    labels, scores = _random_case(seed, n, levels)
    if labels.min() == labels.max():
        labels[0] = 1 - labels[0]
    assert M.average_precision(labels, scores) == pytest.approx(skm.average_precision_score(labels, scores))
    assert M.auroc(labels, scores) == pytest.approx(skm.roc_auc_score(labels, scores))
    for threshold in (0.5, 0.3, 0.75):
        pred = (scores > threshold).astype(int)  # the documented rule: strictly above is generated
        acc = M.accuracies(labels, scores, threshold)
        assert acc["accuracy"] == pytest.approx(skm.accuracy_score(labels, pred))
        assert acc["fake_acc"] == pytest.approx(skm.recall_score(labels, pred, pos_label=1))
        assert acc["real_acc"] == pytest.approx(skm.recall_score(labels, pred, pos_label=0))
        assert acc["balanced_acc"] == pytest.approx(skm.balanced_accuracy_score(labels, pred))
    fpr, tpr = M.roc_curve(labels, scores)
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0, 0, 1, 1) and (np.diff(fpr) >= 0).all()
    # TPR at a fixed FPR: brute force over every threshold of the decision rule (score > t)
    cuts = np.r_[np.unique(scores) - 1e-9, np.inf]
    real, fake = scores[labels == 0], scores[labels == 1]
    for target in (0.0, 0.01, 0.05, 0.2):
        best = max((fake > t).mean() for t in cuts if (real > t).mean() <= target)
        assert M.tpr_at_fpr(labels, scores, target) == pytest.approx(best)
    assert np.trapezoid(tpr, fpr) == pytest.approx(skm.roc_auc_score(labels, scores))  # the curve is the AUROC's


@pytest.mark.parametrize(("seed", "n", "levels"), CASES)
def test_calibrated_threshold_is_the_best_candidate_closest_to_half(seed, n, levels):
    labels, scores = _random_case(seed, n, levels, fake_share=0.3)
    if labels.min() == labels.max():
        labels[0] = 1 - labels[0]
    distinct = np.unique(scores)
    candidates = np.r_[0.5, (distinct[:-1] + distinct[1:]) / 2, distinct[0] - 1e-6, distinct[-1] + 1e-6]
    balanced = np.array([skm.balanced_accuracy_score(labels, scores > c) for c in candidates])
    best = candidates[np.isclose(balanced, balanced.max(), rtol=0, atol=1e-12)]
    t = M.calibrate_threshold(labels, scores)
    assert skm.balanced_accuracy_score(labels, scores > t) == pytest.approx(balanced.max())
    assert abs(t - 0.5) == pytest.approx(np.abs(best - 0.5).min())
    assert t == 0.5 or not np.isin(t, scores)  # only 0.5 itself may sit on a score (which then counts as real)


@pytest.mark.parametrize("missing", [0, 1])
def test_a_missing_class_gives_none_everywhere_and_json_stays_valid(missing):
    labels, scores = _random_case(3, 30, 5)
    keep = labels != missing
    labels, scores = labels[keep], scores[keep]
    present = "fake_acc" if missing == 0 else "real_acc"
    absent = "real_acc" if missing == 0 else "fake_acc"
    out = M.compute(labels, scores)
    pred = (scores > 0.5).astype(int)
    assert out[present] == pytest.approx(skm.accuracy_score(labels, pred)) == pytest.approx(out["accuracy"])
    assert out[absent] is None and out["balanced_acc"] is None and out["ap"] is None and out["auroc"] is None
    assert M.roc_curve(labels, scores) is None
    json.dumps(out, allow_nan=False)  # None, never NaN: results.json and metrics.jsonl stay valid JSON
    assert M.accuracies([], [])["accuracy"] is None


def test_detection_metrics_per_domain_against_scikit_learn():
    rng = np.random.default_rng(0)
    labels, scores = _random_case(1, 90, 7)
    domain = np.where(labels == 1, rng.integers(0, 2, labels.size), -1)  # two fake domains, -1 for reals
    m = M.detection_metrics(labels, scores, domain, ["recon", "sr"])
    assert m["n"] == 90 and m["n_real"] == int((labels == 0).sum())
    assert m["ap"] == pytest.approx(skm.average_precision_score(labels, scores))
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(labels, scores > 0.5))
    per = []
    for i, name in enumerate(["recon", "sr"]):
        keep = (labels == 0) | (domain == i)
        per.append(skm.average_precision_score(labels[keep], scores[keep]))
        assert m[f"ap/{name}"] == pytest.approx(per[-1])
        assert m[f"fake_acc/{name}"] == pytest.approx(np.mean(scores[domain == i] > 0.5))
    assert m["map"] == pytest.approx(np.mean(per))
    # a validation batch without reals: per-domain APs and their mean are undefined, and say so
    fakes = M.detection_metrics(labels[labels == 1], scores[labels == 1], domain[labels == 1], ["recon", "sr"])
    assert fakes["ap/recon"] is None and fakes["map"] is None and fakes["fake_acc/sr"] is not None
    json.dumps(fakes, allow_nan=False)
