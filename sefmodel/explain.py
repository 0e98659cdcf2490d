"""``sefmodel explain``: per-expert Grad-CAM heatmaps beside the gate weights.

For each expert e, Grad-CAM (Selvaraju et al., 2017): take a spatial map ``A`` (h, w, C) from one block (default:
the feature block) -- for a ViT the patch tokens at the block's *input* (the tokens the CLS token last attends
to), for a CNN the stage's *output* feature map (the one its feature pools) --, the gradient ``G`` of expert e's
own head logit with respect to it, channel weights ``w = mean_hw G``, and the map ``relu(A @ w)``, scaled to
[0, 1]. The fused score gets a map the same way. Experts that learned different artifacts light up different
regions; the gate weights say how much each one counts for this image.

The image is explained on the crop the detector scores (the centre crop made by the detector's image processor;
see :mod:`sefmodel.model.preprocess`), so the heatmap lines up with the pixels that were actually seen. No change to the
detector is needed: a hook on the block (:meth:`Backbone.cam_hook`) captures the map.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image

from sefmodel.model.detector import SEFDetector

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from matplotlib.image import AxesImage


@dataclass
class Explanation:
    """Heatmaps for one image.

    Attributes:
        crop: the RGB crop the detector scored (S x S).
        maps: name -> (h, w) float array in [0, 1], one per expert, plus ``"fused"`` for a fused detector: the
            explained block's grid (ViT: S / patch size a side; CNN: the stage's feature map).
        expert_probs: expert -> P(generated) from that expert's own head.
        prob: the detector's P(generated) for this crop.
        gate_weights: expert -> gate weight (SEF), else None.
    """

    crop: Image.Image
    maps: dict[str, np.ndarray]
    expert_probs: dict[str, float]
    prob: float
    gate_weights: dict[str, float] | None


def grad_cam(detector: SEFDetector, image: Image.Image, layer: int | None = None) -> Explanation:
    """Grad-CAM maps of every expert (and of the fused score) for the image's centre crop.

    Args:
        layer: block explained (0-based; negative from the last): a ViT block's input tokens or a CNN stage's
            output map; default the feature block.
    """
    bb = detector.backbone
    layer = detector.feature_index if layer is None else layer % bb.num_layers
    if layer > detector.feature_index:
        raise ValueError(f"layer {layer} comes after the feature block {detector.feature_index}")
    pixels = detector.processor(image, crop="center")  # the crop score() sees, by the same processor
    crop = detector.processor.to_image(pixels[0])  # ...and those pixels back as RGB, for the figure
    pixels = pixels.to(detector.device, detector.dtype)
    captured: list[torch.Tensor] = []

    def cam(score: torch.Tensor, hidden: torch.Tensor) -> np.ndarray:
        (grads,) = torch.autograd.grad(score, hidden, retain_graph=True)
        size = detector.image_size
        spatial, g = bb.spatial(hidden, size)[0], bb.spatial(grads, size)[0]  # (h, w, C)
        weights = g.mean(dim=(0, 1))
        heat = torch.relu(spatial @ weights).detach().float().cpu().numpy()
        peak = heat.max()
        return heat / peak if peak > 0 else heat

    was_training = detector.training
    detector.eval()
    handle = bb.cam_hook(layer, captured.append)
    maps, expert_probs = {}, {}
    try:
        with torch.enable_grad():
            pixels = pixels.detach().requires_grad_(True)  # frozen weights: make the input carry the graph
            for name in detector.expert_names:
                captured.clear()
                logit = detector(pixels, expert=name)["logits"][0]
                maps[name] = cam(logit, captured[-1])
                expert_probs[name] = float(torch.sigmoid(logit.detach()))
            gate_weights = None
            if detector.fusion is not None:
                captured.clear()
                out = detector(pixels, shared_trunk=False)  # one block input per expert pass, all captured
                logit = out["logits"][0]
                fused = [cam(logit, tokens) for tokens in captured]
                maps["fused"] = np.mean(fused, axis=0)
                peak = maps["fused"].max()
                maps["fused"] = maps["fused"] / peak if peak > 0 else maps["fused"]
                prob = float(torch.sigmoid(logit.detach()))
                if "gate_weights" in out:
                    weights = out["gate_weights"][0].detach()
                    gate_weights = {n: float(w) for n, w in zip(detector.expert_names, weights, strict=True)}
            else:
                prob = expert_probs[detector.expert_names[0]]
    finally:
        handle.remove()
        detector.train(was_training)
    return Explanation(crop, maps, expert_probs, prob, gate_weights)


HEATMAP_CMAP = "turbo"
"""Colour map of the heatmaps (any matplotlib name): low relevance blue, the peak red, as Grad-CAM figures are
usually read."""


def overlay(ax: Axes, crop: Image.Image, heat: np.ndarray, alpha: float = 0.5) -> AxesImage:
    """Draw ``crop`` on ``ax`` with ``heat`` ((G, G) in [0, 1]) stretched over it, interpolated bilinearly and
    blended at ``alpha``; returns the heatmap's image (for a colour bar)."""
    ax.imshow(crop)
    width, height = crop.size
    return ax.imshow(
        heat, cmap=HEATMAP_CMAP, vmin=0, vmax=1, alpha=alpha, interpolation="bilinear",
        extent=(-0.5, width - 0.5, height - 0.5, -0.5),  # pixel edges of the crop: the map covers it exactly
    )  # fmt: skip


def figure(explanation: Explanation, title: str = "") -> Figure:
    """Input crop | one heatmap per expert (titled with its own P(generated) and gate weight) | the fused score's
    heatmap, one colour bar for the maps, and a bar chart of each expert's gate weight and own P(generated)."""
    from sefmodel.evaluation.report.charts import SHARE, new_figure

    ex = explanation
    heat_panels = []
    for name, prob in ex.expert_probs.items():
        weight = ex.gate_weights.get(name) if ex.gate_weights else None
        heat_panels.append(
            (name, f"expert {name}\np={prob:.2f}" + (f", gate {weight:.2f}" if weight is not None else ""))
        )
    if "fused" in ex.maps:
        heat_panels.append(("fused", f"fused score\np={ex.prob:.2f}"))
    n = 1 + len(heat_panels)
    fig = new_figure(2.7 * n + 4.6, 3.6)
    grid = fig.add_gridspec(1, n + 1, width_ratios=[1] * n + [1.5])
    ax = fig.add_subplot(grid[0, 0])
    ax.imshow(ex.crop)
    ax.set_title(f"input crop\n{ex.crop.width}x{ex.crop.height} px")
    ax.set_xlabel("x (px)")
    ax.set_ylabel("y (px)")
    heat_axes, image = [], None
    for i, (name, caption) in enumerate(heat_panels, start=1):
        ax = fig.add_subplot(grid[0, i])
        image = overlay(ax, ex.crop, ex.maps[name])
        ax.set_title(caption)
        ax.set_xticks([])
        ax.set_yticks([])
        heat_axes.append(ax)
    if image is not None:
        fig.colorbar(image, ax=heat_axes, location="right", shrink=0.9, fraction=0.03,
                     label="Grad-CAM relevance\n(0 = none, 1 = the map's peak)")  # fmt: skip

    ax = fig.add_subplot(grid[0, n])
    experts = list(ex.expert_probs)
    ys = np.arange(len(experts))
    bars = {"own P(generated)": [ex.expert_probs[e] for e in experts]}
    if ex.gate_weights:
        bars = {"gate weight": [ex.gate_weights.get(e, 0.0) for e in experts], **bars}
    height = 0.8 / len(bars)
    for j, (label, values) in enumerate(bars.items()):
        drawn = ax.barh(ys - 0.4 + height * (j + 0.5), values, height * 0.9, label=label, color=f"C{j}")
        ax.bar_label(drawn, fmt="%.2f", padding=2, fontsize=8)
    ax.axvline(0.5, color="0.5", linewidth=1, linestyle=":", label="decision threshold")
    ax.set_yticks(ys, experts)
    ax.invert_yaxis()  # experts top to bottom in the order of the heatmaps
    ax.set_xlim(0, 1.15)
    ax.set_xticks([0, 0.25, 0.5, 0.75, 1])
    ax.set_xlabel(f"value {SHARE}")
    ax.set_ylabel("expert")
    ax.legend(loc="lower left", bbox_to_anchor=(0, 1.02), fontsize="small", frameon=False, borderaxespad=0)
    fig.suptitle(f"{title or 'Grad-CAM per expert'}  (detector: P(generated) = {ex.prob:.3f})")
    return fig


def explain_file(detector: SEFDetector, path: str | Path, out: str | Path, layer: int | None = None) -> Explanation:
    """Explain one image file and write the figure to ``out`` (PNG, or any format matplotlib knows by suffix)."""
    from sefmodel.evaluation.report.charts import save
    from sefmodel.images import open_image_file

    explanation = grad_cam(detector, open_image_file(path), layer)
    save(figure(explanation, title=f"{Path(path).name}: Grad-CAM per expert"), out)
    return explanation


def heatmap_png(explanation: Explanation, name: str | None, side: int = 192) -> bytes:
    """The heatmap ``name`` (an expert or ``"fused"``) over the crop, drawn by :func:`overlay` without axes, as a
    ``side`` x ``side`` PNG; ``name=None`` gives the crop alone. For pages that show the maps one by one."""
    from matplotlib.figure import Figure

    from sefmodel.evaluation.report.charts import DPI

    fig = Figure(figsize=(side / DPI, side / DPI), dpi=DPI)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_axis_off()
    if name is None:
        ax.imshow(explanation.crop)
    else:
        overlay(ax, explanation.crop, explanation.maps[name])
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()
