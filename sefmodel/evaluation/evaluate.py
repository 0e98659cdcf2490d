"""``sefmodel eval``: score benchmarks (clean and perturbed), compute metrics, write tables, JSON and plots.

Protocol (every choice is recorded in ``results.json`` under ``protocol``):

* **Scores**: :meth:`SEFDetector.score` with the detector's own preprocessing (native resolution, centre crop by
  default). An image is called generated when ``prob > 0.5``.
* **Metrics** per benchmark and per subset: accuracy, real accuracy, fake accuracy, balanced accuracy, AP, AUROC
  (:mod:`sefmodel.evaluation.metrics`), TPR at 1% and 5% FPR (the share of fakes caught when at most that share of reals
  is flagged; no interpolation between ROC points), and accuracy at a calibrated threshold; then the mean and the
  worst value of each over benchmarks. A subset pairs its fakes with its own reals and with reals that serve
  every subset.
* **Calibrated threshold** (``acc_cal``): with ``calibrate`` (a held-out benchmark, e.g. the validation split of
  the training data), the threshold that maximises balanced accuracy on it is applied to every benchmark. Without
  it, each benchmark is split by a hash of each image's key: ``calib_fraction`` of it (default 20%) fits that
  benchmark's threshold and ``acc_cal`` is measured on the rest. ``calib_fraction = 0`` turns ``acc_cal`` off.
* **Format-bias protocol** (``fake_jpeg``): ``"none"`` (default), an integer quality (every benchmark's fakes
  are JPEG-compressed at it before scoring; reals are untouched) or ``"auto"`` (each definition's recommended
  quality, e.g. 96 for GenImage). Applied before any perturbation.
* **Perturbations** (:mod:`sefmodel.evaluation.perturb`) are applied to every image, real and fake alike, and give one
  robustness curve per kind. A **robustness preset** (``robustness``, :data:`sefmodel.evaluation.perturb.PRESETS`) is a
  named list of them (``dda``: JPEG 96; ``social``: the social-media chain), reported under its name as well, so numbers
  computed under one name are comparable across papers.

**Provenance** (``results.json`` → ``provenance``, in the shape every output of the toolkit uses:
:mod:`sefdata.provenance`): what made the numbers, with every local path reduced to its name
(:mod:`sefcore.privacy`): the sha256 of the detector's weight files (``model.safetensors`` and
``backbone.safetensors``; an AEROBLADE folder's stored networks) and its config, each benchmark's name, definition
and, for a sefdata build, the sha256 of its ``manifest.json``, the seed (none: eval draws nothing at random;
perturbations are seeded by each image's key), the versions of python and of the packages that compute a score, and
the command line.

Outputs (``out`` folder), written by :mod:`sefmodel.evaluation.report.results`: ``results.json``, ``results.md``,
``results.csv``, ``scores.csv`` (every image's score under every condition) and ``plots/*.png``.
"""

from __future__ import annotations

import platform
from collections import defaultdict
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from sefcore.errors import SefError
from sefcore.hub import file_sha256
from sefcore.privacy import public_name
from sefdata.provenance import provenance
from sefmodel.evaluation import metrics as M
from sefmodel.evaluation.benchmarks import ALL, PLAIN, BenchItem, ResolvedBenchmark, resolve_bench_arg
from sefmodel.evaluation.config import EvalConfig
from sefmodel.evaluation.perturb import (
    PerturbSpec,
    Preset,
    format_bias_jpeg,
    higher_is_milder,
    parse_perturbations,
    resolve_presets,
    x_label,
)
from sefmodel.evaluation.report.results import CLEAN, PRESET_METRICS, TABLE_METRICS, write_report
from sefmodel.model.detector import SEFDetector
from sefmodel.predict import score_stream

# what computes a score: the model stack, the metrics, the image codecs the perturbations use, this package
PACKAGES = ("sef-toolkit", "torch", "transformers", "peft", "safetensors", "numpy", "scikit-learn", "pillow")
RESULTS_FORMAT = "sef-eval/1"


def _fake_quality(config: EvalConfig, bench: ResolvedBenchmark) -> int | None:
    if config.fake_jpeg == "none":
        return None
    if config.fake_jpeg == "auto":
        return bench.definition.fake_jpeg_quality if bench.definition else None
    return int(config.fake_jpeg)


# ---- scoring -------------------------------------------------------------------------------------------------


@dataclass
class Scored:
    """One benchmark's images scored under one condition."""

    probs: np.ndarray  # (N,) NaN where the image failed
    gates: np.ndarray | None  # (N, E)
    errors: dict[int, str]


@dataclass
class BenchScores:
    """Every image of one benchmark scored under every condition (clean first, then each perturbation)."""

    bench: ResolvedBenchmark
    labels: np.ndarray  # (N,) 0 real, 1 generated
    fake_quality: int | None
    conditions: dict[str, Scored]  # CLEAN or a perturbation's label -> scores


def _score_items(
    detector: SEFDetector,
    items: list[BenchItem],
    fake_quality: int | None,
    perturbation: PerturbSpec | None,
    config: EvalConfig,
    desc: str,
    progress: bool,
) -> Scored:
    def opener(item: BenchItem):
        def open_() -> Image.Image:
            image = item.open()
            if fake_quality is not None and item.label == 1:
                image = format_bias_jpeg(image, fake_quality)
            return image

        return open_

    transform = (lambda image, key: perturbation.apply(image, key)) if perturbation is not None else None
    stream = score_stream(
        detector, ((it.key, opener(it)) for it in items), config.batch_size, config.crop, transform
    )  # fmt: skip
    if progress:
        from tqdm import tqdm

        stream = tqdm(stream, total=len(items), desc=desc, unit="img", leave=False)
    probs = np.full(len(items), np.nan)
    gates = None
    errors = {}
    for result in stream:
        if result.error is not None:
            errors[result.index] = result.error
            continue
        probs[result.index] = result.prob
        if result.gate_weights is not None:
            if gates is None:
                gates = np.full((len(items), len(result.gate_weights)), np.nan)
            gates[result.index] = result.gate_weights
    return Scored(probs, gates, errors)


def _score_bench(
    detector: SEFDetector,
    bench: ResolvedBenchmark,
    perturbations: list[PerturbSpec],
    config: EvalConfig,
    progress: bool,
    log,
) -> BenchScores:
    real, fake = bench.counts()
    quality = _fake_quality(config, bench)
    log(f"{bench.name}: {real} real + {fake} generated images from {bench.source}")
    for warning in bench.warnings:
        log(f"  warning: {warning}")
    conditions = {}
    for condition in [None, *perturbations]:
        cname = CLEAN if condition is None else condition.label
        scored = _score_items(detector, bench.items, quality, condition, config, f"{bench.name} {cname}", progress)
        if condition is None and scored.errors:
            first = min(scored.errors)
            example = {"key": bench.items[first].key, "error": scored.errors[first]}
            log(f"  {len(scored.errors)} image(s) could not be read, e.g. {example}")
        conditions[cname] = scored
    return BenchScores(bench, np.array([it.label for it in bench.items]), quality, conditions)


def _calibrate(detector: SEFDetector, config: EvalConfig, progress: bool, log) -> tuple[dict[str, Any], float | None]:
    """The ``protocol.calibration`` record and, with a held-out ``calibrate`` set, the one threshold it fits."""
    if config.calibrate:
        cal = resolve_bench_arg(config.calibrate)
        labels = np.array([it.label for it in cal.items])
        scored = _score_items(detector, cal.items, _fake_quality(config, cal), None, config, "calibrate", progress)
        ok = ~np.isnan(scored.probs)
        try:
            threshold = M.calibrate_threshold(labels[ok], scored.probs[ok])
        except ValueError as e:
            raise SefError(f"calibration set {cal.name}: {e}") from None
        log(f"calibrated threshold {threshold:.4f} on {cal.name} ({ok.sum()} images)")
        return {
            "method": "held-out set",
            "set": cal.name,
            "source": cal.source,
            "n_real": int((labels[ok] == 0).sum()),
            "n_fake": int((labels[ok] == 1).sum()),
            "threshold": threshold,
            "rule": "maximises balanced accuracy on the held-out set",
        }, threshold
    if config.calib_fraction > 0:
        return {
            "method": "per-benchmark split",
            "fraction": config.calib_fraction,
            "rule": "each benchmark's threshold maximises balanced accuracy on the images whose sha256(key) falls "
            "in the first `fraction` of the hash range; acc_cal is measured on the other images",
        }, None
    return {"method": "none"}, None


# ---- metrics -------------------------------------------------------------------------------------------------


def _metrics(labels: np.ndarray, probs: np.ndarray, threshold_cal: float | None, cal_mask: np.ndarray | None) -> dict:
    ok = ~np.isnan(probs)
    out: dict[str, Any] = M.compute(labels[ok], probs[ok])
    out["acc_cal"] = None
    if threshold_cal is not None:
        keep = ok if cal_mask is None else ok & ~cal_mask
        if keep.any():
            out["acc_cal"] = M.accuracies(labels[keep], probs[keep], threshold_cal)["accuracy"]
    return out


def _subset_masks(bench: ResolvedBenchmark) -> dict[str, np.ndarray]:
    subsets = bench.subsets
    if subsets == [ALL]:
        return {}
    return {s: np.array([it.in_subset(s) for it in bench.items]) for s in subsets}


def _bench_results(
    scores: BenchScores, config: EvalConfig, global_threshold: float | None, experts: list[str]
) -> tuple[dict[str, Any], dict[str, dict]]:
    """One benchmark's ``results.json`` entry (clean metrics, subsets, calibration, failures, gate weights) and
    its overall metrics under every condition."""
    bench, labels = scores.bench, scores.labels
    definition = bench.definition if bench.definition is not PLAIN else None
    entry: dict[str, Any] = {
        "source": bench.source,
        "definition": definition.name if definition else None,
        "title": definition.title if definition else bench.name,
        "licence": definition.licence if definition else None,
        "fake_jpeg_quality": scores.fake_quality,
        "n_images": len(bench.items),
        "unmatched_files": len(bench.unmatched),
        "ignored_files": bench.ignored,
        "warnings": list(bench.warnings),
    }
    clean = scores.conditions[CLEAN]
    ok = ~np.isnan(clean.probs)
    threshold, cal_mask = global_threshold, None
    if threshold is None and config.calib_fraction > 0:
        cal_mask = np.array([M.in_hashed_split(it.key, config.calib_fraction) for it in bench.items])
        fit = ok & cal_mask
        try:
            threshold = M.calibrate_threshold(labels[fit], clean.probs[fit])
        except ValueError:
            entry["warnings"].append("calibration split lacks real or generated images: acc_cal is n/a")
    entry["threshold_cal"] = threshold
    entry["metrics"] = _metrics(labels, clean.probs, threshold, cal_mask)
    entry["subsets"] = {
        s: _metrics(labels[m], clean.probs[m], threshold, None if cal_mask is None else cal_mask[m])
        for s, m in _subset_masks(bench).items()
    }
    entry["failed"] = len(clean.errors)
    entry["errors"] = [{"key": bench.items[i].key, "error": e} for i, e in sorted(clean.errors.items())][:50]
    if clean.gates is not None:
        entry["gate_weights"] = {}
        for cls, lab in (("real", 0), ("fake", 1)):
            rows = clean.gates[(labels == lab) & ok]
            entry["gate_weights"][cls] = (
                {n: float(rows[:, j].mean()) for j, n in enumerate(experts)} if len(rows) else None
            )
    # perturbed conditions: the fixed 0.5 threshold (and AP/AUROC), no calibrated accuracy
    by_condition = {
        cname: entry["metrics"] if cname == CLEAN else _metrics(labels, scored.probs, None, None)
        for cname, scored in scores.conditions.items()
    }
    return entry, by_condition


def _results(
    detector: SEFDetector,
    config: EvalConfig,
    detector_source: str,
    scores: list[BenchScores],
    perturbations: list[PerturbSpec],
    calibration: dict[str, Any],
    global_threshold: float | None,
    presets: list[Preset],
) -> tuple[dict[str, Any], dict[str, dict[str, dict]]]:
    """The ``results.json`` content (without ``plots`` and ``model-index``, which the report adds) and the
    overall metrics of every benchmark under every condition (condition -> benchmark -> metrics)."""
    benchmarks: dict[str, Any] = {}
    per_condition: dict[str, dict[str, dict]] = defaultdict(dict)
    for bench_scores in scores:
        name = bench_scores.bench.name
        benchmarks[name], by_condition = _bench_results(bench_scores, config, global_threshold, detector.expert_names)
        for cname, metrics in by_condition.items():
            per_condition[cname][name] = metrics

    rows = [b["metrics"] for b in benchmarks.values()]
    mean, worst = M.mean_and_worst(rows, TABLE_METRICS)
    worst_of = {
        k: min(
            (n for n, b in benchmarks.items() if b["metrics"][k] is not None),
            key=lambda n: benchmarks[n]["metrics"][k],
            default=None,
        )
        for k in TABLE_METRICS
    }
    return {
        "format": RESULTS_FORMAT,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "detector": {
            "source": detector_source,
            **detector.describe(),  # backbone, experts, fusion, image_size (an AEROBLADE detector: its description)
            "processor": detector.processor.to_dict(),  # the pixels every score was computed on
        },
        "config": asdict(config),
        "host": {"python": platform.python_version(), "platform": platform.platform()},
        "benchmarks": benchmarks,
        "summary": {"mean": mean, "worst": worst, "worst_benchmark": worst_of, "benchmarks": len(rows)},
        "robustness": _robustness(perturbations, per_condition),
        "robustness_presets": _presets(presets, per_condition),
        "protocol": {
            "decision": "an image is called generated when prob > threshold",
            "threshold": 0.5,
            "tpr_at_fpr": {
                name: {"fpr": fpr, "rule": "largest TPR among ROC points with FPR <= fpr (no interpolation)"}
                for name, fpr in M.TPR_AT_FPR.items()
            },
            "calibration": calibration,
            "fake_jpeg": config.fake_jpeg,
            "crop": config.crop or detector.processor.crop,
            "perturbations": [p.label for p in perturbations],
            "perturbations_apply_to": "real and generated images alike, after the format-bias JPEG of fakes",
            "subsets": "a subset's fakes are paired with its own reals and with reals shared by all subsets",
        },
    }, per_condition


def _presets(presets: list[Preset], per_condition: dict[str, dict[str, dict]]) -> dict[str, Any]:
    """preset name -> its definition and, per perturbation, the metrics per benchmark with their mean and worst."""
    out: dict[str, Any] = {}
    for preset in presets:
        conditions = {}
        for p in preset.specs:
            benches = per_condition[p.label]
            mean, worst = M.mean_and_worst(list(benches.values()), PRESET_METRICS)
            conditions[p.label] = {"mean": mean, "worst": worst, "benchmarks": benches}
        out[preset.name] = {
            "perturbations": preset.perturbations,
            "description": preset.help,
            "applies_to": "real and generated images alike",
            "conditions": conditions,
        }
    return out


def _weights_folder(detector_source: str) -> Path | None:
    """The local folder holding the detector's weight files: RUN itself, RUN/detector, or a Hub id's cached copy."""
    from sefmodel.model.folder import CONFIG_NAME
    from sefmodel.predict import resolve_run

    if not detector_source:
        return None  # an in-memory detector
    if Path(detector_source).expanduser().is_dir():
        return Path(resolve_run(detector_source))
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(detector_source, CONFIG_NAME)
    except Exception:  # not a repo id: nothing to hash
        return None
    return Path(cached).parent if isinstance(cached, str) else None


def _provenance(
    detector: SEFDetector, detector_source: str, benches: list[ResolvedBenchmark], command: str | None
) -> dict[str, Any]:
    """What made these numbers (module docstring), free of local paths (:mod:`sefdata.provenance`)."""
    from sefmodel.model.folder import weight_files

    folder = _weights_folder(detector_source)
    weights = {name: file_sha256(folder / name) for name in weight_files(folder)} if folder is not None else {}
    benchmarks = {}
    for bench in benches:
        manifest = Path(bench.source) / "manifest.json"
        benchmarks[bench.name] = {
            "source": public_name(bench.source),
            "definition": bench.definition.name if bench.definition not in (None, PLAIN) else None,
            "manifest_sha256": file_sha256(manifest) if manifest.is_file() else None,
        }
    detector_info = {
        "source": public_name(detector_source) if detector_source else None,
        "weights_sha256": weights,
        "config": detector.config.to_dict(),
    }
    # seed None: eval draws nothing at random (perturbations are seeded by each image's key)
    return provenance({"detector": detector_info, "benchmarks": benchmarks}, seed=None, packages=PACKAGES,
                      command=command)  # fmt: skip


def _robustness(perturbations: list[PerturbSpec], per_condition: dict[str, dict[str, dict]]) -> dict[str, Any]:
    curves: dict[str, Any] = {}
    for p in perturbations:
        curve = curves.setdefault(
            p.name, {"x_label": x_label(p.name), "higher_is_milder": higher_is_milder(p.name), "points": []}
        )
        benches = per_condition[p.label]
        mean, worst = M.mean_and_worst(list(benches.values()), ("accuracy", "balanced_acc", "ap", "auroc"))
        curve["points"].append({"value": p.value, "mean": mean, "worst": worst, "benchmarks": benches})
    for curve in curves.values():
        curve["points"].sort(key=lambda pt: pt["value"])
    clean = per_condition.get(CLEAN, {})
    if clean:
        mean, _ = M.mean_and_worst(list(clean.values()), ("accuracy", "balanced_acc", "ap", "auroc"))
        for curve in curves.values():
            curve["clean_mean"] = mean
    return curves


# ---- the run -------------------------------------------------------------------------------------------------


def evaluate(
    detector: SEFDetector,
    config: EvalConfig,
    out: str | Path,
    *,
    detector_source: str = "",
    progress: bool = False,
    log=print,
    command: str | None = None,
) -> dict[str, Any]:
    """Run the evaluation and write every output into ``out``; returns the ``results.json`` content.

    Three steps: scoring (every image of every benchmark under every condition), metrics (the results) and the
    report (tables, JSON, plots). ``command`` (the command line, if any) is recorded in ``provenance``."""
    out = Path(out)
    presets = resolve_presets(config.robustness)
    perturbations = parse_perturbations([*config.perturb, *(p.perturbations for p in presets)])
    benches = [resolve_bench_arg(arg) for arg in config.benches]
    names = [b.name for b in benches]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise SefError(f"benchmark name {duplicates[0]!r} given twice; rename one with NAME=PATH")
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / "plots").mkdir(exist_ok=True)
    except OSError as e:
        raise SefError(f"cannot create the output folder {out}: {e.strerror or e}") from None

    calibration, global_threshold = _calibrate(detector, config, progress, log)
    scores = [_score_bench(detector, bench, perturbations, config, progress, log) for bench in benches]
    results, per_condition = _results(
        detector, config, detector_source, scores, perturbations, calibration, global_threshold, presets
    )  # fmt: skip
    results["provenance"] = _provenance(detector, detector_source, benches, command)
    write_report(results, scores, per_condition, out, plots=config.plots)
    return results
