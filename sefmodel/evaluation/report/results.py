"""The files ``sefmodel eval`` writes from its results (:mod:`sefmodel.evaluation.evaluate` computes them):
``results.md`` (:func:`markdown`), ``results.csv``, ``scores.csv``, ``results.json`` with its Hub ``model-index``
(:func:`model_index`) and ``plots/*.png`` (drawn by :mod:`sefmodel.evaluation.report.charts`).

The names the results and their tables share live here: :data:`CLEAN`, the metric columns (:data:`TABLE_METRICS`,
:data:`PRESET_METRICS`) and their headers (:data:`HEADERS`); the evaluation imports them from here, so this module
never imports the evaluation (its score types only for type checking) and the two form no import circle.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from sefcore.markdown import fmt, md_table
from sefmodel.evaluation import metrics as M
from sefmodel.evaluation.benchmarks import ALL
from sefmodel.evaluation.report import charts

if TYPE_CHECKING:
    from sefmodel.evaluation.evaluate import BenchScores

CLEAN = "clean"
"""The condition without perturbation, as the results, tables and CSV files name it."""
TABLE_METRICS = (*M.METRICS, "acc_cal")
"""The metrics of every benchmark in the results and the columns of the tables, in order."""
PRESET_METRICS = tuple(k for k in TABLE_METRICS if k != "acc_cal")  # a perturbed condition has no calibration
HEADERS = {
    "accuracy": "acc@0.5",
    "real_acc": "real acc",
    "fake_acc": "fake acc",
    "balanced_acc": "bal. acc",
    "ap": "AP",
    "auroc": "AUROC",
    "tpr_fpr1": "TPR@1%FPR",
    "tpr_fpr5": "TPR@5%FPR",
    "acc_cal": "acc@cal",
}


def write_report(
    results: dict[str, Any], scores: list[BenchScores], per_condition: dict[str, dict[str, dict]], out: Path,
    plots: bool = True,
) -> None:  # fmt: skip
    """Add ``plots`` and ``model-index`` to ``results`` and write every file of the report into ``out``."""
    results["plots"] = _plots(results, scores, out) if plots else {}
    results["model-index"] = model_index(results, results["detector"]["source"] or "sef-detector")
    gated = any(c.gates is not None for s in scores for c in s.conditions.values())
    experts = results["detector"]["experts"] if gated else []
    _write_scores_csv(out / "scores.csv", scores, experts)
    _write_results_csv(out / "results.csv", results, per_condition)
    (out / "results.md").write_text(markdown(results), encoding="utf-8")
    (out / "results.json").write_text(json.dumps(results, indent=2, allow_nan=False) + "\n", encoding="utf-8")


def _plots(results: dict, scores: list[BenchScores], out: Path) -> dict[str, str]:
    plots: dict[str, str] = {}
    benches = results["benchmarks"]
    names = list(benches)
    groups = [*names, "mean"] if len(names) > 1 else names
    bars = {}
    for key in ("accuracy", "real_acc", "fake_acc", "ap", "auroc"):
        ys = [benches[n]["metrics"][key] for n in names]
        if len(names) > 1:
            ys.append(results["summary"]["mean"][key])
        bars[HEADERS[key]] = ys
    figure = charts.bar_chart("Metrics per benchmark (clean)", groups, bars, f"metric value {charts.SHARE}")
    charts.save(figure, out / "plots" / "benchmarks.png")
    plots["benchmarks"] = "plots/benchmarks.png"

    roc = []
    for s in scores:
        clean = s.conditions[CLEAN]
        ok = ~np.isnan(clean.probs)
        curve = M.roc_curve(s.labels[ok], clean.probs[ok]) if ok.any() else None
        if curve is not None:  # undefined without both classes
            auroc = benches[s.bench.name]["metrics"]["auroc"]
            roc.append(charts.Series(f"{s.bench.name} (AUROC {auroc:.3f})", curve[0], curve[1]))
    if roc:
        panel = charts.Panel(
            "ROC curves (clean)", roc, "false positive rate (share of reals called generated)",
            "true positive rate (share of generated images caught)", roc=True,
        )  # fmt: skip
        charts.save(charts.line_chart([panel], panel_size=(6.0, 5.6)), out / "plots" / "roc.png")
        plots["roc"] = "plots/roc.png"

    for name, curve in results["robustness"].items():
        xs = [pt["value"] for pt in curve["points"]]
        panels = []
        for metric in ("balanced_acc", "ap"):
            lines = [charts.Series(n, xs, [pt["benchmarks"][n][metric] for pt in curve["points"]]) for n in names]
            if len(names) > 1:
                lines.append(charts.Series("mean", xs, [pt["mean"][metric] for pt in curve["points"]], "summary"))
            clean = curve.get("clean_mean", {}).get(metric)
            if clean is not None:
                lines.append(charts.Series("clean (mean)", [min(xs), max(xs)], [clean, clean], "reference"))
            panels.append(
                charts.Panel(
                    f"{name}: {HEADERS[metric]}", lines, curve["x_label"], f"{HEADERS[metric]} {charts.SHARE}",
                    x_ticks=sorted(set(xs)), reverse_x=curve["higher_is_milder"],
                )
            )  # fmt: skip
        figure = charts.line_chart(panels, f"Robustness to {name} (reals and fakes perturbed alike; threshold 0.5)")
        charts.save(figure, out / "plots" / f"robustness_{name}.png")
        plots[f"robustness_{name}"] = f"plots/robustness_{name}.png"
    return plots


def model_index(results: dict, model_name: str) -> list[dict]:
    """Hub model-card ``model-index`` entries: one result per benchmark (clean), as huggingface_hub parses them."""
    names = {
        "accuracy": ("accuracy", "Accuracy (threshold 0.5)"),
        "real_acc": ("accuracy", "Real accuracy"),
        "fake_acc": ("accuracy", "Fake accuracy"),
        "balanced_acc": ("accuracy", "Balanced accuracy"),
        "ap": ("average_precision", "Average precision"),
        "auroc": ("roc_auc", "AUROC"),
        "tpr_fpr1": ("tpr_at_fpr", "TPR at 1% FPR"),
        "tpr_fpr5": ("tpr_at_fpr", "TPR at 5% FPR"),
        "acc_cal": ("accuracy", "Accuracy (calibrated threshold)"),
    }
    out = []
    for bench, entry in results["benchmarks"].items():
        metrics = [
            {"type": names[k][0], "name": names[k][1], "value": round(entry["metrics"][k], 4)}
            for k in TABLE_METRICS
            if entry["metrics"].get(k) is not None
        ]
        if metrics:
            out.append(
                {
                    "task": {"type": "image-classification", "name": "AI-generated image detection"},
                    "dataset": {"name": entry["title"], "type": entry["definition"] or bench},
                    "metrics": metrics,
                }
            )
    return [{"name": model_name, "results": out}]


def _write_scores_csv(path: Path, scores: list[BenchScores], experts: list[str]) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["benchmark", "subset", "key", "label", "condition", "prob", *[f"gate_{e}" for e in experts],
                         "error"])  # fmt: skip
        for s in scores:
            for cname, scored in s.conditions.items():
                for i, item in enumerate(s.bench.items):
                    prob = "" if np.isnan(scored.probs[i]) else round(float(scored.probs[i]), 6)
                    gates = [round(g, 6) for g in scored.gates[i].tolist()] if scored.gates is not None else []
                    writer.writerow([s.bench.name, item.subset, item.key, item.label, cname, prob, *gates,
                                     scored.errors.get(i, "")])  # fmt: skip


def _write_results_csv(path: Path, results: dict, per_condition: dict) -> None:
    cols = ["benchmark", "subset", "condition", "n_real", "n_fake", *TABLE_METRICS]
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(cols)

        def write(bench: str, subset: str, condition: str, m: dict) -> None:
            writer.writerow([bench, subset, condition, *["" if m.get(c) is None else m.get(c) for c in cols[3:]]])

        for name, entry in results["benchmarks"].items():
            write(name, ALL, CLEAN, entry["metrics"])
            for subset, m in entry["subsets"].items():
                write(name, subset, CLEAN, m)
        for stat in ("mean", "worst"):
            write(stat, ALL, CLEAN, results["summary"][stat])
        for condition, benches in per_condition.items():
            if condition == CLEAN:
                continue
            for name, m in benches.items():
                write(name, ALL, condition, m)


def _metric_row(label: str, m: dict) -> list[str]:
    return [label, fmt(m.get("n_real")), fmt(m.get("n_fake")), *[fmt(m[k]) for k in TABLE_METRICS]]


def markdown(results: dict) -> str:
    """The human-readable report: summary table, plots, per-subset tables, robustness tables, problems."""
    det = results["detector"]
    proto = results["protocol"]
    cal = proto["calibration"]
    lines = [
        "# Evaluation report",
        "",
        f"Detector `{det['source'] or 'in-memory'}`: "
        + (det["description"] if det.get("description") else
           f"backbone `{det['backbone']}` (`{det['backbone_id'] or 'random, built from config'}`), experts "
           f"{', '.join(f'`{e}`' for e in det['experts'])}, fusion `{det['fusion']}`")
        + f", crop `{proto['crop']}` of {det['image_size']} px. Created {results['created']}.",
        "",
        f"An image is called generated when its probability is > 0.5 (`acc@0.5`). `acc@cal` uses a calibrated "
        f"threshold ({cal['method']}"
        + (f": {cal['threshold']:.4f} from `{cal['set']}`" if cal.get("threshold") is not None else "")
        + (f", {cal['fraction']:.0%} of each benchmark fits its threshold, the rest is measured" if "fraction" in cal
           else "")
        + f"). Format-bias protocol (JPEG of fakes): `{proto['fake_jpeg']}`. `TPR@1%FPR` and `TPR@5%FPR`: the "
        "share of generated images caught at the best threshold that flags at most 1% (5%) of the reals.",
        "",
        "## Summary",
        "",
    ]  # fmt: skip
    header = ["benchmark", "real", "fake", *[HEADERS[k] for k in TABLE_METRICS]]
    rows = [_metric_row(n, e["metrics"]) for n, e in results["benchmarks"].items()]
    if len(rows) > 1:
        s = results["summary"]
        rows.append(["**mean**", "", "", *[fmt(s["mean"][k]) for k in TABLE_METRICS]])
        rows.append(["**worst**", "", "", *[fmt(s["worst"][k]) for k in TABLE_METRICS]])
        rows.append(["(worst on)", "", "", *[s["worst_benchmark"][k] or "" for k in TABLE_METRICS]])
    lines += [md_table(header, rows), ""]
    plots = results.get("plots", {})
    if "benchmarks" in plots:
        lines += [f"![metrics per benchmark]({plots['benchmarks']})", ""]
    if "roc" in plots:
        lines += [f"![ROC curves]({plots['roc']})", ""]
    for name, entry in results["benchmarks"].items():
        text = f"Source: `{entry['source']}`"
        if entry["definition"]:
            text += f" (layout `manifests/benchmarks/{entry['definition']}.toml`; licence: {entry['licence']})"
        elif not entry["source"].startswith("hf:"):
            text += " (plain real/fake folder layout)"
        if entry["fake_jpeg_quality"]:
            text += f"; fakes JPEG-compressed at quality {entry['fake_jpeg_quality']} before scoring"
        if entry.get("threshold_cal") is not None:
            text += f"; calibrated threshold {entry['threshold_cal']:.4f}"
        lines += [f"## {name}", "", text + ".", ""]
        if entry["subsets"]:
            sub_rows = [_metric_row(s, m) for s, m in entry["subsets"].items()]
            lines += [md_table(["subset", "real", "fake", *header[3:]], sub_rows), ""]
        if entry.get("gate_weights"):
            gate_rows = [
                [cls, *[fmt(w) for w in g.values()]] for cls, g in entry["gate_weights"].items() if g is not None
            ]
            experts = results["detector"]["experts"]
            lines += ["Mean gate weights:", "", md_table(["images", *experts], gate_rows), ""]
        for warning in entry["warnings"]:
            lines.append(f"- warning: {warning}")
        if entry["failed"]:
            lines.append(f"- {entry['failed']} image(s) could not be read and were left out, e.g.:")
            lines += [f"  - `{e['key']}`: {e['error']}" for e in entry["errors"][:5]]
        lines.append("")
    for name, preset in results.get("robustness_presets", {}).items():
        lines += [f"## Robustness preset `{name}`", "", f"{preset['description']} (`{preset['perturbations']}`); "
                  "threshold 0.5 for the accuracies.", ""]  # fmt: skip
        head = ["perturbation", "benchmark", *[HEADERS[k] for k in PRESET_METRICS]]
        rows = []
        for label, condition in preset["conditions"].items():
            named = list(condition["benchmarks"].items())
            if len(named) > 1:
                named += [("**mean**", condition["mean"]), ("**worst**", condition["worst"])]
            rows += [[f"`{label}`", bench, *[fmt(m[k]) for k in PRESET_METRICS]] for bench, m in named]
        lines += [md_table(head, rows), ""]
    if results["robustness"]:
        lines += ["## Robustness", "", "Perturbations apply to reals and fakes alike; threshold 0.5.", ""]
        for name, curve in results["robustness"].items():
            lines += [f"### {name} ({curve['x_label']})", ""]
            benches = list(results["benchmarks"])
            head = ["value", *[f"{b} bal. acc / AP" for b in benches]]
            if len(benches) > 1:
                head.append("mean bal. acc / AP")
            rows = []
            clean = curve.get("clean_mean")
            if clean:
                row = ["clean", *[
                    f"{fmt(results['benchmarks'][b]['metrics']['balanced_acc'])} / "
                    f"{fmt(results['benchmarks'][b]['metrics']['ap'])}" for b in benches
                ]]  # fmt: skip
                if len(benches) > 1:
                    row.append(f"{fmt(clean['balanced_acc'])} / {fmt(clean['ap'])}")
                rows.append(row)
            for pt in curve["points"]:
                row = [f"{pt['value']:g}"] + [
                    f"{fmt(pt['benchmarks'][b]['balanced_acc'])} / {fmt(pt['benchmarks'][b]['ap'])}" for b in benches
                ]
                if len(benches) > 1:
                    row.append(f"{fmt(pt['mean']['balanced_acc'])} / {fmt(pt['mean']['ap'])}")
                rows.append(row)
            lines += [md_table(head, rows), ""]
            if f"robustness_{name}" in plots:
                lines += [f"![robustness to {name}]({plots[f'robustness_{name}']})", ""]
    lines += [
        "## Files",
        "",
        "`results.json` (everything here, machine readable; its `model-index` can go into a Hub model card), "
        "`results.csv` (one row per benchmark, subset and condition), `scores.csv` (every image's probability).",
        "",
    ]
    return "\n".join(lines)
