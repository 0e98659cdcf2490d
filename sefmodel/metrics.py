"""Detection metrics on score lists, in numpy (no scikit-learn).

Conventions, used everywhere in ``sefmodel eval``:

* ``labels``: 1 = generated (fake, the positive class), 0 = real. ``scores``: P(generated) in [0, 1] (any monotone
  score works for AP and AUROC).
* An image is called generated when ``score > threshold`` (strictly), as in the CNNDetection / UnivFD evaluation
  code the field's numbers come from; at 0.5 a score of exactly 0.5 counts as real.
* ``accuracy`` pools every image; ``real_acc`` and ``fake_acc`` are the per-class accuracies and ``balanced_acc``
  their mean (the figure that does not move when a benchmark has more fakes than reals).
* ``ap`` is average precision as scikit-learn defines it (step-wise precision-recall area, no interpolation, one
  point per distinct score). ``auroc`` is the Mann-Whitney probability that a random fake outscores a random
  real, ties counting one half. Both are ``None`` when one class is missing: they are undefined, not 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

METRICS = ("accuracy", "real_acc", "fake_acc", "balanced_acc", "ap", "auroc")
"""Metric names in reporting order (``acc_cal`` and the counts are added by the evaluation)."""


def _arrays(labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels, dtype=np.int64).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"{y.size} labels for {s.size} scores")
    if y.size and not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0 (real) or 1 (generated)")
    if np.isnan(s).any():
        raise ValueError("scores contain NaN")
    return y, s


def accuracies(labels, scores, threshold: float = 0.5) -> dict[str, float | None]:
    """``accuracy``, ``real_acc``, ``fake_acc``, ``balanced_acc`` at ``threshold`` (None where a class is absent)."""
    y, s = _arrays(labels, scores)
    pred = s > threshold
    correct = pred == (y == 1)
    real, fake = y == 0, y == 1
    real_acc = float(correct[real].mean()) if real.any() else None
    fake_acc = float(correct[fake].mean()) if fake.any() else None
    balanced = (real_acc + fake_acc) / 2 if real_acc is not None and fake_acc is not None else None
    return {
        "accuracy": float(correct.mean()) if y.size else None,
        "real_acc": real_acc,
        "fake_acc": fake_acc,
        "balanced_acc": balanced,
    }


def average_precision(labels, scores) -> float | None:
    """AP = sum over distinct score thresholds of (R_n - R_{n-1}) * P_n, thresholds from high to low."""
    y, s = _arrays(labels, scores)
    if not (y == 1).any() or not (y == 0).any():
        return None
    order = np.argsort(-s, kind="mergesort")
    y, s = y[order], s[order]
    last = np.r_[np.nonzero(np.diff(s))[0], y.size - 1]  # last index of each run of equal scores
    tps = np.cumsum(y)[last]
    fps = last + 1 - tps
    precision = tps / (tps + fps)
    recall = tps / tps[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, tied values sharing the mean of their ranks."""
    order = np.argsort(values, kind="mergesort")
    sorted_vals = values[order]
    starts = np.r_[0, np.nonzero(np.diff(sorted_vals))[0] + 1]
    ends = np.r_[starts[1:], values.size]
    ranks = np.empty(values.size, dtype=np.float64)
    for start, end in zip(starts, ends, strict=True):
        ranks[order[start:end]] = (start + 1 + end) / 2  # mean of ranks start+1 .. end
    return ranks


def auroc(labels, scores) -> float | None:
    """Area under the ROC curve (Mann-Whitney U / (n_fake * n_real), ties count 1/2)."""
    y, s = _arrays(labels, scores)
    n_fake, n_real = int((y == 1).sum()), int((y == 0).sum())
    if not n_fake or not n_real:
        return None
    ranks = _average_ranks(s)
    u = ranks[y == 1].sum() - n_fake * (n_fake + 1) / 2
    return float(u / (n_fake * n_real))


def roc_curve(labels, scores) -> tuple[np.ndarray, np.ndarray]:
    """False- and true-positive rates (both from 0 to 1) at every distinct threshold, for plotting."""
    y, s = _arrays(labels, scores)
    n_fake, n_real = int((y == 1).sum()), int((y == 0).sum())
    if not n_fake or not n_real:
        return np.array([0.0, 1.0]), np.array([0.0, 1.0])
    order = np.argsort(-s, kind="mergesort")
    y, s = y[order], s[order]
    last = np.r_[np.nonzero(np.diff(s))[0], y.size - 1]
    tps = np.cumsum(y)[last]
    fps = last + 1 - tps
    return np.r_[0.0, fps / n_real], np.r_[0.0, tps / n_fake]


def calibrate_threshold(labels, scores) -> float:
    """The threshold that maximises balanced accuracy on a held-out set (``score > t`` is generated).

    Candidates are 0.5 and the midpoints between consecutive distinct scores (plus one just below the lowest and
    one just above the highest), so ties never sit on the threshold. Among equally good thresholds the one
    closest to 0.5 wins (a stable, unsurprising choice). Needs both classes.
    """
    y, s = _arrays(labels, scores)
    if not (y == 1).any() or not (y == 0).any():
        raise ValueError("threshold calibration needs both real and generated images")
    distinct = np.unique(s)
    candidates = np.r_[0.5, (distinct[:-1] + distinct[1:]) / 2, distinct[0] - 1e-6, distinct[-1] + 1e-6]
    pred = s[None, :] > candidates[:, None]
    real_acc = (~pred[:, y == 0]).mean(axis=1)
    fake_acc = pred[:, y == 1].mean(axis=1)
    balanced = (real_acc + fake_acc) / 2
    best = np.flatnonzero(np.isclose(balanced, balanced.max(), rtol=0, atol=1e-12))
    return float(candidates[best[np.argmin(np.abs(candidates[best] - 0.5))]])


def compute(labels, scores, threshold: float = 0.5) -> dict[str, float | int | None]:
    """Every metric of :data:`METRICS` at ``threshold`` plus ``n_real`` and ``n_fake``."""
    y, s = _arrays(labels, scores)
    out: dict[str, float | int | None] = dict(accuracies(y, s, threshold))
    out["ap"] = average_precision(y, s)
    out["auroc"] = auroc(y, s)
    out["n_real"] = int((y == 0).sum())
    out["n_fake"] = int((y == 1).sum())
    return out


def mean_and_worst(rows: Sequence[dict], keys: Sequence[str]) -> tuple[dict, dict]:
    """Mean and minimum of each key over ``rows``, skipping rows where it is None (None if all are)."""
    mean, worst = {}, {}
    for key in keys:
        values = [r[key] for r in rows if r.get(key) is not None]
        mean[key] = float(np.mean(values)) if values else None
        worst[key] = float(np.min(values)) if values else None
    return mean, worst
