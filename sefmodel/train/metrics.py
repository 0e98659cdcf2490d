"""Detection metrics on scores (probability of "generated") and labels (0 real, 1 generated), numpy only."""

from __future__ import annotations

import numpy as np


def average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the precision-recall curve as a step function (scikit-learn's ``average_precision_score``):
    ``sum_n (R_n - R_{n-1}) P_n`` over distinct score thresholds, high to low. NaN without positives."""
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels, dtype=np.float64)
    positives = labels.sum()
    if positives == 0:
        return float("nan")
    order = np.argsort(-scores, kind="mergesort")
    scores, labels = scores[order], labels[order]
    last_of_tie = np.r_[np.diff(scores) != 0, True]  # thresholds: the end of each run of equal scores
    tp = np.cumsum(labels)[last_of_tie]
    predicted = (np.arange(len(labels)) + 1)[last_of_tie]
    precision, recall = tp / predicted, tp / positives
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def detection_metrics(
    probs: np.ndarray, labels: np.ndarray, domain: np.ndarray | None = None, domains: list[str] | None = None
) -> dict[str, float]:
    """``ap``, ``acc`` (at 0.5), ``real_acc``, ``fake_acc``, ``n``; with ``domain`` (per image, -1 for reals) and
    ``domains`` (names by index) also ``ap/<name>`` (reals vs that domain's fakes), ``fake_acc/<name>`` and ``map``,
    the mean of the per-domain APs.

    ``ap`` pools every image, so its chance level is the fraction of fakes (2/3 when each real comes with two
    fakes); each ``ap/<name>`` compares equal numbers of reals and fakes (chance 0.5), as do ``map``'s terms."""
    probs, labels = np.asarray(probs, dtype=np.float64), np.asarray(labels)
    pred = probs >= 0.5
    real, fake = labels == 0, labels == 1
    out = {
        "ap": average_precision(probs, labels),
        "acc": float(np.mean(pred == fake)) if len(labels) else float("nan"),
        "real_acc": float(np.mean(~pred[real])) if real.any() else float("nan"),
        "fake_acc": float(np.mean(pred[fake])) if fake.any() else float("nan"),
        "n": len(labels),
    }
    if domain is not None and domains is not None:
        domain = np.asarray(domain)
        per_domain = []
        for i, name in enumerate(domains):
            keep = real | (domain == i)
            if (domain == i).any():
                out[f"ap/{name}"] = average_precision(probs[keep], labels[keep])
                out[f"fake_acc/{name}"] = float(np.mean(pred[domain == i]))
                per_domain.append(out[f"ap/{name}"])
        if per_domain:
            out["map"] = float(np.mean(per_domain))
    return out
