"""Metrics against values computed by hand on fixed score lists (no scikit-learn)."""

from __future__ import annotations

import pytest

from sefmodel import metrics as M

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
