"""``sefmodel explain``: per-expert Grad-CAM heatmaps beside the gate weights.

For each expert e, Grad-CAM (Selvaraju et al., 2017): take a spatial map ``A`` (h, w, C) from one block (default:
the feature block) -- for a ViT the patch tokens at the block's *input* (the tokens the CLS token last attends
to), for a CNN the stage's *output* feature map (the one its feature pools) --, the gradient ``G`` of expert e's
own head logit with respect to it, channel weights ``w = mean_hw G``, and the map ``relu(A @ w)``, scaled to
[0, 1]. The fused score gets a map the same way. Experts that learned different artifacts light up different
regions; the gate weights say how much each one counts for this image.

The image is explained on the crop the detector scores (the centre crop of the native-resolution image; see
:mod:`sefmodel.preprocess`), so the heatmap lines up with the pixels that were actually seen. No change to the
detector is needed: a hook on the block (:meth:`Backbone.cam_hook`) captures the map.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from .detector import SEFDetector
from .preprocess import crop_boxes, to_rgb
from .report import _font


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


def _crop_image(detector: SEFDetector, image: Image.Image) -> Image.Image:
    """The centre crop the detector scores, as an RGB image (padding/upscale rules as in preprocess)."""
    rgb = to_rgb(image)
    size = detector.image_size
    cfg = detector.config
    if cfg.resize is not None or (cfg.small == "upscale" and min(rgb.size) < size):
        target = max(cfg.resize or 0, size if cfg.small == "upscale" and min(rgb.size) < size else 0)
        scale = target / min(rgb.size)
        rgb = rgb.resize((max(target, round(rgb.width * scale)), max(target, round(rgb.height * scale))),
                         Image.Resampling.BICUBIC, reducing_gap=None)  # fmt: skip
    if min(rgb.size) < size:  # pad with the normalisation mean, as preprocess does
        mean = tuple(round(m * 255) for m in detector.backbone.image_mean)
        canvas = Image.new("RGB", (max(size, rgb.width), max(size, rgb.height)), mean)
        canvas.paste(rgb, ((canvas.width - rgb.width) // 2, (canvas.height - rgb.height) // 2))
        rgb = canvas
    return rgb.crop(crop_boxes(rgb.width, rgb.height, size, "center")[0])


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
    crop = _crop_image(detector, image)
    pixels = detector.preprocess(crop, crop="center").to(detector.device, detector.dtype)
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


def _colormap(heat: np.ndarray) -> np.ndarray:
    """[0, 1] -> RGB uint8, a perceptually ordered blue-green-yellow-red ramp."""
    stops = np.array(
        [[0.0, 0, 0, 130], [0.35, 0, 160, 220], [0.6, 120, 220, 80], [0.8, 250, 220, 0], [1.0, 220, 20, 0]]
    )
    channels = [np.interp(heat, stops[:, 0], stops[:, c]) for c in (1, 2, 3)]
    return np.stack(channels, axis=-1).astype(np.uint8)


def overlay(crop: Image.Image, heat: np.ndarray, alpha: float = 0.5) -> Image.Image:
    """The heatmap upsampled (bilinear) to the crop and blended over it."""
    size = crop.size
    up = np.asarray(Image.fromarray((heat * 255).astype(np.uint8)).resize(size, Image.Resampling.BILINEAR)) / 255.0
    colored = _colormap(up).astype(np.float32)
    base = np.asarray(crop.convert("RGB"), dtype=np.float32)
    return Image.fromarray(np.clip(base * (1 - alpha) + colored * alpha, 0, 255).astype(np.uint8))


def figure(explanation: Explanation, title: str = "", tile: int = 256) -> Image.Image:
    """Crop | one heatmap per expert (with its gate weight and own probability) | fused; a gate-weight bar
    under each expert's tile."""
    ex = explanation
    panels = [("input crop", ex.crop, None)]
    for name in ex.expert_probs:
        weight = ex.gate_weights.get(name) if ex.gate_weights else None
        caption = f"{name}: p={ex.expert_probs[name]:.2f}" + (f", gate {weight:.2f}" if weight is not None else "")
        panels.append((caption, overlay(ex.crop, ex.maps[name]), weight))
    if "fused" in ex.maps:
        panels.append((f"fused: p={ex.prob:.2f}", overlay(ex.crop, ex.maps["fused"]), None))
    head, foot, pad = 46, 44, 10
    width = len(panels) * (tile + pad) + pad
    out = Image.new("RGB", (width, head + tile + foot), "white")
    draw = ImageDraw.Draw(out)
    draw.text((pad, 6), title or "Grad-CAM per expert", font=_font(9), fill="#222222")
    draw.text((pad, 26), f"P(generated) = {ex.prob:.3f}", font=_font(7), fill="#444444")
    for i, (caption, img, weight) in enumerate(panels):
        x = pad + i * (tile + pad)
        resample = Image.Resampling.NEAREST if img.width < tile else Image.Resampling.LANCZOS
        out.paste(img.resize((tile, tile), resample), (x, head))
        draw.text((x, head + tile + 4), caption, font=_font(7), fill="#222222")
        if weight is not None:  # gate weight as a bar, full width = 1
            y = head + tile + 24
            draw.rectangle([x, y, x + tile, y + 12], outline="#999999")
            draw.rectangle([x, y, x + round(tile * weight), y + 12], fill="#1f77b4")
    return out


def explain_file(detector: SEFDetector, path: str | Path, out: str | Path, layer: int | None = None) -> Explanation:
    """Explain one image file and write the figure to ``out`` (PNG)."""
    with Image.open(path) as image:
        image.load()
        explanation = grad_cam(detector, image, layer)
    figure(explanation, title=f"{Path(path).name}: Grad-CAM per expert").save(out)
    return explanation
