"""Detection metrics on score lists, on scikit-learn: the one implementation behind ``sefmodel eval`` and the
trainer's validation.

Conventions, used everywhere:

* ``labels``: 1 = generated (fake, the positive class), 0 = real. ``scores``: P(generated) in [0, 1] (any monotone
  score works for AP and AUROC). Every function takes ``(labels, scores)`` in that order, as scikit-learn does.
* An image is called generated when ``score > threshold`` (strictly; :func:`is_generated`), as in the
  CNNDetection / UnivFD evaluation code the field's numbers come from; at 0.5 a score of exactly 0.5 counts as real.
* ``accuracy`` pools every image; ``real_acc`` and ``fake_acc`` are the per-class accuracies and ``balanced_acc``
  their mean (the figure that does not move when a benchmark has more fakes than reals).
* ``ap`` is scikit-learn's ``average_precision_score`` (step-wise precision-recall area, no interpolation, one
  point per distinct score); ``auroc`` is ``roc_auc_score`` (ties count one half).
* ``tpr_fpr1`` and ``tpr_fpr5`` (:func:`tpr_at_fpr`): the share of generated images caught at an operating point
  that calls at most 1% (5%) of the reals generated: the largest TPR among the points of scikit-learn's ROC
  (every distinct score, ``drop_intermediate=False``) whose FPR is <= the target. No interpolation between
  points: when no threshold gives exactly the target FPR (few reals, or ties across the target) the point just
  below it counts, so the figure never claims an FPR the detector cannot be set to. Tied scores move together
  (one ROC point), as they do under any threshold.
* A metric that is undefined (AP and AUROC with one class missing, a per-class accuracy without that class) is
  ``None``, never NaN or 0: ``None`` is what JSON, CSV and the Markdown tables can carry (``null``, empty, ``n/a``).

scikit-learn is imported inside the functions that use it, so code that only needs :func:`is_generated` (scoring
files with ``sefmodel predict``) does not pay for importing it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

TPR_AT_FPR = {"tpr_fpr1": 0.01, "tpr_fpr5": 0.05}
"""Metric name -> the false-positive rate it reads the true-positive rate at."""
METRICS = ("accuracy", "real_acc", "fake_acc", "balanced_acc", "ap", "auroc", *TPR_AT_FPR)
"""Metric names in reporting order (``acc_cal`` and the counts are added by the evaluation)."""

ArrayLike = Sequence[float] | np.ndarray


def in_hashed_split(key: str, fraction: float) -> bool:
    """Whether ``key`` falls in the first ``fraction`` of the sha256 hash range: a split by name that stays the
    same across runs, machines and detectors (eval's calibration split, the threshold's held-out reals)."""
    digest = hashlib.sha256(key.encode()).digest()
    return int.from_bytes(digest[:8], "little") / 2**64 < fraction


def is_generated(scores: ArrayLike | float, threshold: float = 0.5) -> np.ndarray | bool:
    """The decision rule: an image is called generated when its score is strictly above ``threshold``."""
    return np.asarray(scores) > threshold


def _arrays(labels: ArrayLike, scores: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels, dtype=np.int64).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"{y.size} labels for {s.size} scores")
    if y.size and not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0 (real) or 1 (generated)")
    if np.isnan(s).any():
        raise ValueError("scores contain NaN")
    return y, s


def _both_classes(y: np.ndarray) -> bool:
    return bool((y == 1).any() and (y == 0).any())


def accuracies(labels: ArrayLike, scores: ArrayLike, threshold: float = 0.5) -> dict[str, float | None]:
    """``accuracy``, ``real_acc``, ``fake_acc``, ``balanced_acc`` at ``threshold`` (None where a class is absent)."""
    from sklearn.metrics import confusion_matrix

    y, s = _arrays(labels, scores)
    if not y.size:
        return dict.fromkeys(("accuracy", "real_acc", "fake_acc", "balanced_acc"))
    # rows: true real, true generated; columns: called real, called generated
    (tn, fp), (fn, tp) = confusion_matrix(y, is_generated(s, threshold).astype(np.int64), labels=[0, 1])
    real_acc = float(tn / (tn + fp)) if tn + fp else None
    fake_acc = float(tp / (tp + fn)) if tp + fn else None
    balanced = (real_acc + fake_acc) / 2 if real_acc is not None and fake_acc is not None else None
    return {
        "accuracy": float((tn + tp) / y.size),
        "real_acc": real_acc,
        "fake_acc": fake_acc,
        "balanced_acc": balanced,
    }


def average_precision(labels: ArrayLike, scores: ArrayLike) -> float | None:
    """scikit-learn's average precision; None unless both classes are present."""
    from sklearn.metrics import average_precision_score

    y, s = _arrays(labels, scores)
    return float(average_precision_score(y, s)) if _both_classes(y) else None


def auroc(labels: ArrayLike, scores: ArrayLike) -> float | None:
    """Area under the ROC curve (scikit-learn's ``roc_auc_score``); None unless both classes are present."""
    from sklearn.metrics import roc_auc_score

    y, s = _arrays(labels, scores)
    return float(roc_auc_score(y, s)) if _both_classes(y) else None


def roc_curve(labels: ArrayLike, scores: ArrayLike) -> tuple[np.ndarray, np.ndarray] | None:
    """False- and true-positive rates, both from 0 to 1 (scikit-learn's ``roc_curve``, collinear points dropped),
    for plotting; None unless both classes are present."""
    from sklearn.metrics import roc_curve as sk_roc_curve

    y, s = _arrays(labels, scores)
    if not _both_classes(y):
        return None
    fpr, tpr, _ = sk_roc_curve(y, s)
    return fpr, tpr


def tpr_at_fpr(labels: ArrayLike, scores: ArrayLike, fpr: float) -> float | None:
    """The largest true-positive rate among the ROC points whose false-positive rate is <= ``fpr`` (in [0, 1]);
    None unless both classes are present.

    The points are scikit-learn's ``roc_curve`` with every distinct score kept (``drop_intermediate=False``:
    dropping collinear points could drop the last point under the target). Point ``i`` calls generated the
    images with ``score >= thresholds[i]``, the same images as ``score > t`` for any ``t`` just below that
    score, so each point is an operating point of :func:`is_generated`. The first point (nothing called
    generated) has FPR 0, so the answer always exists; it is 0 when every real scores at least as high as the
    best fake."""
    from sklearn.metrics import roc_curve as sk_roc_curve

    if not 0 <= fpr <= 1:
        raise ValueError(f"fpr must be in [0, 1], got {fpr}")
    y, s = _arrays(labels, scores)
    if not _both_classes(y):
        return None
    fprs, tprs, _ = sk_roc_curve(y, s, drop_intermediate=False)
    return float(tprs[fprs <= fpr].max())


def threshold_at_fpr(real_scores: ArrayLike, fpr: float) -> float:
    """The threshold that calls at most ``fpr`` of these real images generated (``score > t``): the ``1 - fpr``
    quantile of their scores by the inverted empirical CDF, i.e. the smallest real score ``t`` with
    ``#(score > t) <= fpr * n``. It is always one of the scores; ties at it all stay real. With ``fpr * n < 1``
    it is the highest score (no real above it). Needs at least one score; ``fpr`` in [0, 1)."""
    s = np.asarray(real_scores, dtype=np.float64).ravel()
    if not s.size:
        raise ValueError("threshold_at_fpr needs at least one score")
    if not 0 <= fpr < 1:
        raise ValueError(f"fpr must be in [0, 1), got {fpr}")
    if np.isnan(s).any():
        raise ValueError("scores contain NaN")
    allowed = int(np.floor(fpr * s.size + 1e-9))  # false positives allowed; the epsilon absorbs 0.05 * 100 = 5.000001
    return float(np.sort(s)[s.size - allowed - 1])


def calibrate_threshold(labels: ArrayLike, scores: ArrayLike) -> float:
    """The threshold that maximises balanced accuracy on a held-out set (``score > t`` is generated).

    Candidates are 0.5 and the midpoints between consecutive distinct scores (plus one just below the lowest and
    one just above the highest), so ties never sit on the threshold. Among equally good thresholds the one
    closest to 0.5 wins (a stable, unsurprising choice). Needs both classes.

    The rates come from scikit-learn's ``roc_curve`` at every distinct score ``d`` (``score >= d``), which calls
    the same images generated as ``score > t`` for ``t`` between ``d`` and the next lower distinct score; that
    makes the search O(n log n) however many distinct scores there are.
    """
    from sklearn.metrics import roc_curve as sk_roc_curve

    y, s = _arrays(labels, scores)
    if not _both_classes(y):
        raise ValueError("threshold calibration needs both real and generated images")
    fpr, tpr, _ = sk_roc_curve(y, s, drop_intermediate=False)
    distinct = np.unique(s)[::-1]  # high to low, as roc_curve's thresholds after its leading "nothing called" point
    below = np.r_[distinct[1:], distinct[-1] - 2e-6]
    candidates = np.r_[distinct[0] + 1e-6, (distinct + below) / 2]  # aligned with fpr / tpr
    balanced = (tpr + 1 - fpr) / 2
    at_half = accuracies(y, s, 0.5)["balanced_acc"]
    candidates, balanced = np.r_[0.5, candidates[::-1]], np.r_[at_half, balanced[::-1]]  # low to high after 0.5
    best = np.flatnonzero(np.isclose(balanced, balanced.max(), rtol=0, atol=1e-12))
    return float(candidates[best[np.argmin(np.abs(candidates[best] - 0.5))]])


def compute(labels: ArrayLike, scores: ArrayLike, threshold: float = 0.5) -> dict[str, float | int | None]:
    """Every metric of :data:`METRICS` at ``threshold`` plus ``n_real`` and ``n_fake``."""
    y, s = _arrays(labels, scores)
    out: dict[str, float | int | None] = dict(accuracies(y, s, threshold))
    out["ap"] = average_precision(y, s)
    out["auroc"] = auroc(y, s)
    for name, fpr in TPR_AT_FPR.items():
        out[name] = tpr_at_fpr(y, s, fpr)
    out["n_real"] = int((y == 0).sum())
    out["n_fake"] = int((y == 1).sum())
    return out


def detection_metrics(
    labels: ArrayLike,
    scores: ArrayLike,
    domain: ArrayLike | None = None,
    domains: Sequence[str] | None = None,
) -> dict[str, float | int | None]:
    """:func:`compute` at 0.5 plus ``n``; with ``domain`` (per image: the index of its fake domain, -1 for reals)
    and ``domains`` (names by index) also ``ap/<name>`` (the reals vs that domain's fakes), ``fake_acc/<name>`` and
    ``map``, the mean of the per-domain APs (None if any is undefined). This is the trainer's validation.

    ``ap`` pools every image, so its chance level is the fraction of fakes (2/3 when each real comes with two
    fakes); each ``ap/<name>`` compares equal numbers of reals and fakes (chance 0.5), as do ``map``'s terms."""
    y, s = _arrays(labels, scores)
    out = compute(y, s)
    out["n"] = int(y.size)
    if domain is None or domains is None:
        return out
    domain = np.asarray(domain).ravel()
    real = y == 0
    per_domain = []
    for i, name in enumerate(domains):
        mine = domain == i
        if mine.any():
            keep = real | mine
            out[f"ap/{name}"] = average_precision(y[keep], s[keep])
            out[f"fake_acc/{name}"] = accuracies(y[mine], s[mine])["fake_acc"]
            per_domain.append(out[f"ap/{name}"])
    if per_domain:
        out["map"] = float(np.mean(per_domain)) if None not in per_domain else None
    return out


def mean_and_worst(rows: Sequence[dict], keys: Sequence[str]) -> tuple[dict, dict]:
    """Mean and minimum of each key over ``rows``, skipping rows where it is None (None if all are)."""
    mean, worst = {}, {}
    for key in keys:
        values = [r[key] for r in rows if r.get(key) is not None]
        mean[key] = float(np.mean(values)) if values else None
        worst[key] = float(np.min(values)) if values else None
    return mean, worst
