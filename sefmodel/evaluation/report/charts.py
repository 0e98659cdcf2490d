"""Charts of an evaluation (and of an explanation), drawn with matplotlib.

Two kinds of chart cover an evaluation: grouped bars (metrics per benchmark) and panels of lines (ROC curves,
robustness curves). Lines cycle colour, marker and dash pattern together, so curves that lie on top of each other
stay distinguishable, also in grey-scale print.

matplotlib is imported inside the chart functions (``sefmodel`` commands that draw nothing never load it), and the
figures are :class:`matplotlib.figure.Figure` objects rendered by the Agg backend without pyplot: no global
backend switch, no figure registry to leak, safe in threads and notebooks. Restyle with matplotlib's own
``rcParams`` or ``matplotlib.style.context(...)`` around the call.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from sefcore.markdown import fmt

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

DPI = 120
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
DASHES = ("-", "--", "-.", ":")
SHARE = "(share, 0-1)"
"""Unit of every metric plotted here: accuracies, AP and AUROC are shares between 0 and 1."""


@dataclass
class Series:
    """One line: ``ys[i]`` at ``xs[i]``; None values leave a gap.

    ``role``: ``"data"`` (cycled colour, marker and dash), ``"summary"`` (thick black, e.g. the mean over
    benchmarks) or ``"reference"`` (thin grey dashes without markers, e.g. the clean mean).
    """

    label: str
    xs: Sequence[float]
    ys: Sequence[float | None]
    role: Literal["data", "summary", "reference"] = "data"


@dataclass
class Panel:
    """One axes of a line chart."""

    title: str
    series: Sequence[Series]
    x_label: str
    y_label: str
    x_ticks: Sequence[float] | None = None
    reverse_x: bool = False
    """High x values on the left (e.g. JPEG quality: the mildest setting first)."""
    roc: bool = False
    """A ROC plot: both axes 0-1, square, with the chance diagonal."""


def new_figure(width: float, height: float) -> Figure:
    """A figure (inches) with constrained layout, rendered off-screen by Agg when saved."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def save(figure: Figure, path: str | Path) -> None:
    """Write ``figure`` to ``path`` (format from the suffix, e.g. PNG) on a white background."""
    figure.savefig(path, dpi=DPI, facecolor="white")


def _values(ys: Sequence[float | None]) -> list[float]:
    return [math.nan if y is None else float(y) for y in ys]


def _style(index: int, series: Series) -> dict:
    if series.role == "summary":
        return {"color": "black", "linewidth": 2.8, "marker": "o", "markersize": 6, "linestyle": "-", "zorder": 3}
    if series.role == "reference":
        return {"color": "0.45", "linewidth": 1.4, "linestyle": (0, (5, 3)), "marker": None, "zorder": 1}
    return {
        "color": f"C{index % 10}",
        "marker": MARKERS[index % len(MARKERS)],
        "linestyle": DASHES[index % len(DASHES)],
        "linewidth": 1.6,
        "markersize": 5,
        "zorder": 2,
        # long curves (ROC) get a marker every tenth of the axes diagonal instead of at every point
        **({"markevery": 0.1} if len(series.xs) > 15 else {}),
    }


def _share_axis(ax: Axes, axis: str = "y") -> None:
    ticks = [0, 0.2, 0.4, 0.6, 0.8, 1.0]
    if axis == "y":
        ax.set_ylim(-0.02, 1.02)
        ax.set_yticks(ticks)
    else:
        ax.set_xlim(-0.02, 1.02)
        ax.set_xticks(ticks)


def _draw_panel(ax: Axes, panel: Panel) -> None:
    data = 0
    for series in panel.series:
        style = _style(data, series)
        data += series.role == "data"
        ax.plot(series.xs, _values(series.ys), label=series.label, **style)
    if panel.roc:
        ax.plot([0, 1], [0, 1], color="0.6", linewidth=1, linestyle=":", label="chance", zorder=0)
        _share_axis(ax, "x")
        ax.set_aspect("equal")
    if panel.x_ticks is not None:
        ax.set_xticks(list(panel.x_ticks), [f"{t:g}" for t in panel.x_ticks])
    if panel.reverse_x:
        ax.invert_xaxis()
    _share_axis(ax, "y")
    ax.grid(True, color="0.9", linewidth=0.8)
    ax.set_axisbelow(True)
    ax.set_title(panel.title)
    ax.set_xlabel(panel.x_label)
    ax.set_ylabel(panel.y_label)
    if panel.roc:  # the corner a useful detector's curve stays away from, as scikit-learn's RocCurveDisplay does
        ax.legend(loc="lower right", fontsize="small", framealpha=0.9)
    else:
        ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1), borderaxespad=0, frameon=False, fontsize="small")


def line_chart(
    panels: Sequence[Panel], title: str | None = None, panel_size: tuple[float, float] = (6.4, 4.2)
) -> Figure:
    """Panels side by side, each with its own legend on its right."""
    width, height = panel_size
    fig = new_figure(width * len(panels), height)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, panel in zip(axes, panels, strict=True):
        _draw_panel(ax, panel)
    if title:
        fig.suptitle(title)
    return fig


def bar_chart(title: str, groups: Sequence[str], series: dict[str, Sequence[float | None]], y_label: str) -> Figure:
    """Grouped bars: one group per x category, one bar per entry of ``series`` (``series[name][i]`` is group i's
    value, None drawn as "n/a"); values are printed above the bars while there is room."""
    import numpy as np

    n = len(series)
    slot = 0.42 * n + 0.5  # inches per group
    fig = new_figure(max(6.4, 2.2 + len(groups) * slot), 4.6)
    ax = fig.subplots()
    width = 0.8 / max(1, n)
    centers = np.arange(len(groups))
    show_values = len(groups) * n <= 40
    for j, (name, ys) in enumerate(series.items()):
        xs = centers - 0.4 + width * (j + 0.5)
        values = _values(ys)
        bars = ax.bar(xs, np.nan_to_num(values, nan=0.0), width * 0.92, label=name, color=f"C{j % 10}")
        if show_values:
            labels = [fmt(None if math.isnan(v) else v, 2) for v in values]
            ax.bar_label(bars, labels=labels, padding=2, fontsize=7)
    ax.set_xticks(centers, list(groups))
    if max((len(g) for g in groups), default=0) * 0.08 > slot:  # ~0.08 inch per character at the default size
        ax.tick_params(axis="x", labelrotation=30)
        for label in ax.get_xticklabels():
            label.set_horizontalalignment("right")
    _share_axis(ax, "y")
    ax.set_ylim(0, 1.12)  # room for the value labels above a bar at 1
    ax.grid(True, axis="y", color="0.9", linewidth=0.8)
    ax.set_axisbelow(True)
    ax.set_title(title)
    ax.set_xlabel("benchmark")
    ax.set_ylabel(y_label)
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1), borderaxespad=0, frameon=False, fontsize="small")
    return fig
