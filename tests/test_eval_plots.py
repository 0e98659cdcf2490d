"""The evaluation's charts and the explain figure (matplotlib): every axes is labelled and has a legend, curves that
overlap stay distinguishable, missing values are gaps or "n/a", and the files are PNGs."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from sefmodel.evaluation.report import charts
from sefmodel.explain import Explanation, figure


def _check_labelled(fig) -> None:
    plots = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    assert plots
    for ax in plots:
        assert ax.get_xlabel() and ax.get_ylabel(), ax.get_title()
    assert any(ax.get_legend() is not None for ax in plots)


def test_overlapping_curves_differ_in_marker_or_dash_not_only_colour(tmp_path):
    xs = [30, 60, 90]
    same = [0.7, 0.8, 0.9]  # twelve benchmarks on top of each other, then a summary and a reference line
    series = [charts.Series(f"bench{i}", xs, same) for i in range(12)]
    series += [charts.Series("mean", xs, same, "summary"), charts.Series("clean", [30, 90], [0.5, 0.5], "reference")]
    panel = charts.Panel("jpeg: AP", series, "JPEG quality", f"AP {charts.SHARE}", x_ticks=xs, reverse_x=True)
    fig = charts.line_chart([panel, panel], "two panels")
    _check_labelled(fig)
    ax = fig.axes[0]
    lines = [line for line in ax.get_lines() if line.get_label() in {s.label for s in series}]
    looks = {(line.get_marker(), str(line.get_linestyle())) for line in lines[:8]}
    assert len(looks) == 8  # the first eight data curves differ in marker and dash pattern, even in grey-scale
    assert ax.xaxis_inverted() and [t.get_text() for t in ax.get_xticklabels()] == ["30", "60", "90"]
    assert {t.get_text() for t in ax.get_legend().get_texts()} >= {"bench0", "mean", "clean"}
    charts.save(fig, tmp_path / "r.png")
    with Image.open(tmp_path / "r.png") as im:
        assert im.format == "PNG" and im.width > 1000


def test_none_values_are_gaps_and_na_bars(tmp_path):
    panel = charts.Panel("ROC", [charts.Series("a", [0, 0.5, 1], [0, None, 1])], "FPR", "TPR", roc=True)
    fig = charts.line_chart([panel])
    ys = fig.axes[0].get_lines()[0].get_ydata()
    assert math.isnan(ys[1])  # a gap, not a zero
    assert fig.axes[0].get_xlim() == pytest.approx((-0.02, 1.02))
    bars = charts.bar_chart("m", ["x", "y"], {"AP": [0.5, None], "AUROC": [0.25, 0.75]}, f"value {charts.SHARE}")
    _check_labelled(bars)
    texts = [t.get_text() for t in bars.axes[0].texts]
    assert texts.count("n/a") == 1 and "0.50" in texts and "0.75" in texts


@pytest.mark.parametrize("gates", [True, False])
def test_explain_figure_has_one_heatmap_per_expert_a_colour_bar_and_labelled_bars(gates, tmp_path):
    rng = np.random.default_rng(0)
    crop = Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    maps = {n: rng.random((4, 4)) for n in ("recon", "sr", "fused")}
    ex = Explanation(crop, maps, {"recon": 0.2, "sr": 0.9}, 0.8, {"recon": 0.3, "sr": 0.7} if gates else None)
    fig = figure(ex, "title")
    heat = [ax for ax in fig.axes if len(ax.get_images()) == 2]  # crop with a heatmap over it
    assert len(heat) == 3
    extent = heat[0].get_images()[1].get_extent()
    assert extent == pytest.approx((-0.5, 63.5, 63.5, -0.5))  # the 4x4 map covers the whole 64 px crop
    assert any(ax.get_label() == "<colorbar>" for ax in fig.axes)
    bars = fig.axes[-1]
    assert bars.get_xlabel() and bars.get_ylabel() and bars.get_legend() is not None
    labels = {t.get_text() for t in bars.get_legend().get_texts()}
    assert ("gate weight" in labels) == gates and "own P(generated)" in labels
    charts.save(fig, tmp_path / "cam.png")
    with Image.open(tmp_path / "cam.png") as im:
        assert im.format == "PNG" and im.width > 4 * 256
