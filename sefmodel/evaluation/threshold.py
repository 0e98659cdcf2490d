"""A decision threshold from real images alone, stored with the detector (``threshold.json``).

The case: a user has a folder of their own real images and no generated ones, and wants the detector to flag at
most a chosen share of such images (the false-positive rate, FPR). :func:`sefmodel.predict.calibrate_on_reals`
scores the folder; :func:`fit_threshold` puts the threshold at the ``1 - fpr`` quantile of the scores
(:func:`sefmodel.evaluation.metrics.threshold_at_fpr`), so at most ``fpr`` of these reals score above it. It also
estimates the FPR the procedure reaches on reals it did not see: it fits a second threshold on a hashed 80% of the
images and measures it on the other 20% (with a 95% Clopper-Pearson interval).
The stored threshold is the one fitted on all images.

``threshold.json`` lies beside ``config.json`` in the detector folder; ``save_pretrained`` writes it again and
``from_pretrained`` reads it (:mod:`sefmodel.model.folder`), so it travels with the detector, to the Hub too.
``sefmodel predict`` and ``serve`` use it as their default threshold; an explicit ``--threshold`` wins. It holds
counts and rates, never a path. A threshold belongs to the weights it was fitted with: saving a detector without
one removes a stale file.

:class:`UncertainBand` (``--uncertain LOW,HIGH``) lets ``predict`` and ``serve`` answer ``uncertain`` instead of
forcing a decision when ``LOW <= prob <= HIGH``; outside the band the threshold decides as usual.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from sefcore.errors import SefError
from sefmodel.evaluation import metrics as M

if TYPE_CHECKING:
    from sefmodel.model.detector import SEFDetector

THRESHOLD_NAME = "threshold.json"
THRESHOLD_FORMAT = "sef-threshold/1"
DEFAULT_THRESHOLD = 0.5
"""The decision threshold when neither ``--threshold`` nor ``threshold.json`` gives one."""
HOLDOUT = 0.2
"""Share of the reals (by a hash of their names) held out to estimate the FPR a threshold reaches."""


@dataclass
class CalibratedThreshold:
    """The content of ``threshold.json``."""

    fpr: float
    """The target false-positive rate, in (0, 1)."""
    threshold: float
    """Called generated when prob > threshold; fitted on all ``n_images`` reals."""
    n_images: int
    """Real images scored (unreadable ones are left out and counted in ``n_failed``)."""
    heldout: dict[str, Any]
    """The estimate on unseen reals: ``n_fit``, ``n_test``, ``threshold`` (fitted on the fit part), ``fpr`` (its
    rate on the test part; None without test images) and ``fpr_ci95`` ([low, high], Clopper-Pearson)."""
    n_failed: int = 0
    """Files in the folder that could not be read or scored."""
    crop: str | None = None
    """The crop mode the scores were computed with (the threshold fits that mode)."""
    warnings: list[str] = field(default_factory=list)
    """Caveats, e.g. too few images to resolve the target FPR."""
    format: str = THRESHOLD_FORMAT
    method: str = "the (1 - fpr) quantile (inverted CDF) of the scores of real images: at most fpr of them score above"

    def __post_init__(self) -> None:
        check_fpr(self.fpr)
        if not 0 <= self.threshold <= 1:
            raise ValueError(f"{THRESHOLD_NAME}: threshold must be in [0, 1], got {self.threshold}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CalibratedThreshold:
        if data.get("format") != THRESHOLD_FORMAT:
            raise ValueError(f"{THRESHOLD_NAME}: unknown format {data.get('format')!r} (expected {THRESHOLD_FORMAT})")
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})

    def save(self, folder: str | Path) -> Path:
        path = Path(folder) / THRESHOLD_NAME
        path.write_text(json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, folder: str | Path) -> CalibratedThreshold | None:
        """The folder's ``threshold.json``, or None if it has none."""
        path = Path(folder) / THRESHOLD_NAME
        if not path.is_file():
            return None
        return cls.from_dict(json.loads(path.read_text(encoding="utf-8")))


def check_fpr(fpr: float) -> None:
    """Refuse a false-positive-rate target outside (0, 1), before any image is scored."""
    if not 0 < fpr < 1:
        raise SefError(f"--calibrate-fpr must be in (0, 1), got {fpr}")


def fit_threshold(
    keys: list[str], scores: np.ndarray, fpr: float, holdout: float = HOLDOUT, **extra: Any
) -> CalibratedThreshold:
    """The threshold for ``fpr`` from the scores of real images named ``keys`` (names decide the held-out split,
    so it is stable across runs and detectors), with its held-out FPR estimate. ``extra``: more fields."""
    from scipy.stats import binomtest

    check_fpr(fpr)
    scores = np.asarray(scores, dtype=np.float64)
    if len(keys) != scores.size:
        raise ValueError(f"{len(keys)} keys for {scores.size} scores")
    if not scores.size:
        raise SefError("no real image could be scored: nothing to calibrate on")
    test = np.array([M.in_hashed_split(k, holdout) for k in keys])
    fit = ~test
    heldout: dict[str, Any] = {"fraction": holdout, "n_fit": int(fit.sum()), "n_test": int(test.sum()),
                               "threshold": None, "fpr": None, "fpr_ci95": None}  # fmt: skip
    if fit.any() and test.any():
        t_fit = M.threshold_at_fpr(scores[fit], fpr)
        false_pos = int(M.is_generated(scores[test], t_fit).sum())
        ci = binomtest(false_pos, int(test.sum())).proportion_ci(0.95)
        heldout.update(threshold=t_fit, fpr=false_pos / int(test.sum()), fpr_ci95=[float(ci.low), float(ci.high)])
    warnings = list(extra.pop("warnings", []))
    if scores.size * fpr < 1:
        warnings.append(
            f"{scores.size} images cannot resolve an FPR of {fpr:g} (that needs at least {int(np.ceil(1 / fpr))}): "
            "the threshold is the highest real score, and the FPR on new reals is likely above the target"
        )
    return CalibratedThreshold(
        fpr=fpr, threshold=M.threshold_at_fpr(scores, fpr), n_images=int(scores.size), heldout=heldout,
        warnings=warnings, **extra,
    )  # fmt: skip


def decision_threshold(detector: SEFDetector, explicit: float | None = None) -> tuple[float, str]:
    """The threshold to decide with and where it comes from: ``explicit`` (``--threshold``) if given, else the
    detector's ``threshold.json``, else 0.5."""
    if explicit is not None:
        return float(explicit), "--threshold"
    stored = detector.calibrated_threshold
    if stored is not None:
        return float(stored.threshold), f"{THRESHOLD_NAME} (FPR {stored.fpr:g} on {stored.n_images} reals)"
    return DEFAULT_THRESHOLD, "default"


LABELS = ("real", "generated", "uncertain")


@dataclass(frozen=True)
class UncertainBand:
    """Probabilities ``low <= prob <= high`` (both ends included) are labelled ``uncertain``."""

    low: float
    high: float

    def __post_init__(self) -> None:
        if not 0 <= self.low <= self.high <= 1:
            raise SefError(f"--uncertain must be LOW,HIGH with 0 <= LOW <= HIGH <= 1, got {self.low},{self.high}")

    @classmethod
    def parse(cls, text: str | None) -> UncertainBand | None:
        """``"0.3,0.7"`` -> the band; None or ``""`` -> None."""
        if not text:
            return None
        parts = text.split(",")
        try:
            low, high = (float(p) for p in parts)
        except ValueError:
            raise SefError(f"--uncertain must be LOW,HIGH (two probabilities), got {text!r}") from None
        return cls(low, high)

    def contains(self, prob: float) -> bool:
        return self.low <= prob <= self.high


def label(prob: float, threshold: float, band: UncertainBand | None = None) -> str:
    """``uncertain`` inside ``band``, else ``generated`` when prob > threshold, else ``real``."""
    if band is not None and band.contains(prob):
        return "uncertain"
    return "generated" if M.is_generated(prob, threshold) else "real"
