"""PNG charts drawn with Pillow alone (no plotting dependency) and the Markdown tables of an evaluation.

Charts are drawn at twice their size and downsampled with a Lanczos filter, which anti-aliases lines and text.
Three kinds are enough for an evaluation report: grouped bars (metrics per benchmark), line charts (robustness
curves, ROC curves) and side-by-side panels of either.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFont

PALETTE = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
)  # fmt: skip
SCALE = 2  # supersampling factor
_GRID = "#dddddd"
_AXIS = "#333333"


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size * SCALE)
    except TypeError:  # Pillow built without FreeType: a fixed bitmap font, still legible
        return ImageFont.load_default()


@dataclass
class Series:
    """One line (or one bar colour): ``ys[i]`` at ``xs[i]``; None values leave a gap."""

    label: str
    xs: Sequence[float]
    ys: Sequence[float | None]
    width: float = 2.0
    dashed: bool = False
    markers: bool = True
    color: str | None = None


class _Canvas:
    def __init__(self, width: int, height: int) -> None:
        self.width, self.height = width, height
        self.image = Image.new("RGB", (width * SCALE, height * SCALE), "white")
        self.draw = ImageDraw.Draw(self.image)

    def text(self, xy, text, size=12, anchor="la", fill=_AXIS, angle: float = 0.0) -> None:
        x, y = xy[0] * SCALE, xy[1] * SCALE
        font = _font(size)
        if not angle:
            self.draw.text((x, y), text, font=font, fill=fill, anchor=anchor)
            return
        box = self.draw.textbbox((0, 0), text, font=font, anchor="lt")
        tile = Image.new("L", (box[2] + 4, box[3] + 4), 0)
        ImageDraw.Draw(tile).text((2, 2), text, font=font, fill=255, anchor="lt")
        tile = tile.rotate(angle, expand=True, resample=Image.Resampling.BICUBIC)
        # anchor "rt"-like: the rotated label ends at (x, y)
        self.image.paste(Image.new("RGB", tile.size, fill), (int(x - tile.width), int(y)), tile)

    def text_width(self, text: str, size: int = 12) -> float:
        box = self.draw.textbbox((0, 0), text, font=_font(size))
        return (box[2] - box[0]) / SCALE

    def line(self, points, fill, width=1.0, dashed=False) -> None:
        pts = [(x * SCALE, y * SCALE) for x, y in points]
        w = max(1, round(width * SCALE))
        if not dashed:
            self.draw.line(pts, fill=fill, width=w, joint="curve")
            return
        dash = 6 * SCALE
        for (x0, y0), (x1, y1) in itertools.pairwise(pts):
            length = math.hypot(x1 - x0, y1 - y0)
            steps = max(1, int(length // dash))
            for k in range(0, steps, 2):
                a, b = k / steps, min(1.0, (k + 1) / steps)
                self.draw.line([(x0 + (x1 - x0) * a, y0 + (y1 - y0) * a), (x0 + (x1 - x0) * b, y0 + (y1 - y0) * b)],
                               fill=fill, width=w)  # fmt: skip

    def rect(self, box, fill, outline=None) -> None:
        self.draw.rectangle([v * SCALE for v in box], fill=fill, outline=outline, width=SCALE)

    def dot(self, xy, fill, radius=3.0) -> None:
        x, y, r = xy[0] * SCALE, xy[1] * SCALE, radius * SCALE
        self.draw.ellipse([x - r, y - r, x + r, y + r], fill=fill)

    def result(self) -> Image.Image:
        return self.image.resize((self.width, self.height), Image.Resampling.LANCZOS)


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    span = hi - lo
    if span <= 0:
        return [lo]
    raw = span / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    return [round(first + i * step, 10) for i in range(int((hi - first) / step + 1e-9) + 1)]


def _fmt_tick(v: float) -> str:
    return f"{v:g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.1e}"


class _Axes:
    """Plot area with y grid, ticks, title and a legend column on the right."""

    def __init__(self, canvas, box, title, x_label, y_label, y_range, legend: list[tuple], bottom_pad: float = 0):
        self.c = canvas
        left, top, right, bottom = box
        legend_w = 0
        if legend:
            legend_w = max(canvas.text_width(label, 11) for label, _, _ in legend) + 40
        self.x0, self.y0 = left + 56, top + 34
        self.x1, self.y1 = right - 12 - legend_w, bottom - 46 - bottom_pad
        self.y_lo, self.y_hi = y_range
        canvas.text(((self.x0 + self.x1) / 2, top + 8), title, 14, "mt")
        canvas.text(((self.x0 + self.x1) / 2, bottom - 6), x_label, 12, "md")
        canvas.text((self.x0 - 44, self.y0 - 18), y_label, 11, "la")
        for t in _ticks(self.y_lo, self.y_hi):
            y = self.y(t)
            canvas.line([(self.x0, y), (self.x1, y)], _GRID, 1)
            canvas.text((self.x0 - 6, y), _fmt_tick(t), 11, "rm")
        canvas.line([(self.x0, self.y0), (self.x0, self.y1), (self.x1, self.y1)], _AXIS, 1.2)
        for i, (label, color, dashed) in enumerate(legend):
            lx, ly = self.x1 + 16, self.y0 + 6 + i * 20
            canvas.line([(lx, ly), (lx + 18, ly)], color, 3, dashed=dashed)
            canvas.text((lx + 24, ly), label, 11, "lm")

    def y(self, v: float) -> float:
        v = min(max(v, self.y_lo), self.y_hi)
        return self.y1 - (v - self.y_lo) / (self.y_hi - self.y_lo) * (self.y1 - self.y0)


def _color(i: int, series: Series) -> str:
    return series.color or PALETTE[i % len(PALETTE)]


def line_chart(
    title: str,
    series: Sequence[Series],
    x_label: str,
    y_label: str,
    y_range: tuple[float, float] = (0.0, 1.0),
    x_range: tuple[float, float] | None = None,
    x_ticks: Sequence[float] | None = None,
    reverse_x: bool = False,
    diagonal: bool = False,
    size: tuple[int, int] = (640, 420),
) -> Image.Image:
    """Lines over numeric x; ``reverse_x`` puts high values on the left (e.g. JPEG quality, mildest first);
    ``diagonal`` draws the chance line of a ROC plot."""
    canvas = _Canvas(*size)
    legend = [(s.label, _color(i, s), s.dashed) for i, s in enumerate(series)]
    ax = _Axes(canvas, (0, 0, *size), title, x_label, y_label, y_range, legend)
    xs_all = [x for s in series for x in s.xs]
    lo, hi = x_range or ((min(xs_all), max(xs_all)) if xs_all else (0.0, 1.0))
    if hi == lo:
        lo, hi = lo - 1, hi + 1
    pad = 0.0 if x_range else (hi - lo) * 0.05

    def px(x: float) -> float:
        t = (x - (lo - pad)) / ((hi + pad) - (lo - pad))
        return ax.x0 + ((1 - t) if reverse_x else t) * (ax.x1 - ax.x0)

    for t in x_ticks if x_ticks is not None else _ticks(lo, hi):
        canvas.line([(px(t), ax.y1), (px(t), ax.y1 + 4)], _AXIS, 1)
        canvas.text((px(t), ax.y1 + 7), _fmt_tick(t), 11, "mt")
    if diagonal:
        canvas.line([(px(lo), ax.y(y_range[0])), (px(hi), ax.y(y_range[1]))], "#aaaaaa", 1, dashed=True)
    for i, s in enumerate(series):
        color = _color(i, s)
        run: list[tuple[float, float]] = []
        points = [(px(x), ax.y(y)) if y is not None else None for x, y in zip(s.xs, s.ys, strict=True)]
        for p in [*points, None]:
            if p is None:
                if len(run) > 1:
                    canvas.line(run, color, s.width, s.dashed)
                run = []
            else:
                run.append(p)
        if s.markers:
            for p in points:
                if p is not None:
                    canvas.dot(p, color, 2.5 + s.width / 2)
    return canvas.result()


def bar_chart(
    title: str,
    groups: Sequence[str],
    series: Sequence[Series],
    y_label: str,
    y_range: tuple[float, float] = (0.0, 1.0),
    size: tuple[int, int] | None = None,
) -> Image.Image:
    """Grouped bars: one group per x category, one bar per series (``series[j].ys[i]`` is group i's value);
    values are printed above bars when there is room."""
    width = size[0] if size else max(640, 120 + len(groups) * (28 * len(series) + 30) + 160)
    height = size[1] if size else 460
    legend = [(s.label, _color(i, s), False) for i, s in enumerate(series)]
    probe = _Canvas(1, 1)
    long_labels = max((probe.text_width(g, 11) for g in groups), default=0)
    legend_w = max((probe.text_width(label, 11) for label, _, _ in legend), default=0) + 40
    slot = (width - 68 - legend_w) / max(1, len(groups))
    bottom_extra = int(min(150, long_labels * 0.6 + 10)) if long_labels > slot - 6 else 0
    canvas = _Canvas(width, height + bottom_extra)
    ax = _Axes(canvas, (0, 0, width, height + bottom_extra), title, "", y_label, y_range, legend, bottom_extra)
    slot = (ax.x1 - ax.x0) / max(1, len(groups))
    bar_w = min(28.0, (slot - 12) / max(1, len(series)))
    show_values = bar_w >= 22
    for gi, group in enumerate(groups):
        center = ax.x0 + slot * (gi + 0.5)
        start = center - bar_w * len(series) / 2
        for si, s in enumerate(series):
            value = s.ys[gi]
            if value is None:
                canvas.text((start + bar_w * (si + 0.5), ax.y1 - 4), "n/a", 9, "md", fill="#999999")
                continue
            x = start + bar_w * si
            canvas.rect((x + 1, ax.y(value), x + bar_w - 1, ax.y1), _color(si, s))
            if show_values:
                canvas.text((x + bar_w / 2, ax.y(value) - 2), f"{value:.2f}".lstrip("0"), 9, "md")
        if bottom_extra:
            canvas.text((center + 4, ax.y1 + 6), group, 11, fill=_AXIS, angle=35)
        else:
            canvas.text((center, ax.y1 + 7), group, 11, "mt")
    return canvas.result()


def side_by_side(images: Sequence[Image.Image], gap: int = 8) -> Image.Image:
    height = max(im.height for im in images)
    out = Image.new("RGB", (sum(im.width for im in images) + gap * (len(images) - 1), height), "white")
    x = 0
    for im in images:
        out.paste(im, (x, 0))
        x += im.width + gap
    return out


# ---- Markdown ------------------------------------------------------------------------------------------------


def fmt(value: float | int | None, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, int):
        return str(value)
    return f"{value:.{digits}f}"


def md_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |")
    return "\n".join(lines)
