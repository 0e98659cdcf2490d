"""Model cards (``README.md``): the one ``save_pretrained`` writes into every detector folder (:data:`MODEL_CARD`
filled by :func:`card_fields`) and the fuller one ``sefmodel publish`` writes (:func:`make_model_card`: Hub metadata,
evaluation results, intended use)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from huggingface_hub import ModelCard, ModelCardData
from huggingface_hub.repocard_data import model_index_to_eval_results

from sefcore.markdown import fmt, md_table

if TYPE_CHECKING:
    from sefmodel.model.config import DetectorConfig

MODEL_CARD = """---
{{ card_data }}
---

# SEF detector: AI-generated image detection

A detector from the SEF toolkit (Separate Expert Fusion). It scores how likely an image is AI-generated
(probability in [0, 1]).

- backbone: `{{ backbone }}` (`{{ backbone_id }}`, revision `{{ backbone_revision }}`), frozen
- experts (LoRA adapters + linear heads): {{ experts }}
- fusion: `{{ fusion }}`
- input: {{ preprocessing }}

{{ storage_note }} Load with:

```python
from sefmodel import SEFDetector, score
detector = SEFDetector.from_pretrained("{{ repo_id | default('PATH_OR_REPO_ID', true) }}")
scores = score(detector, images)  # list of PIL images of any size
```
"""


def card_fields(config: DetectorConfig, processor: Any) -> dict[str, str]:
    """Values for :data:`MODEL_CARD`'s placeholders, from the detector's config and image processor."""
    if config.backbone_config is None:
        note = (
            "This repository holds only the trained tensors (`model.safetensors`: LoRA adapters, heads, "
            "fusion head), `config.json` and the image processor (`preprocessor_config.json`); the backbone is "
            "loaded from its own repository by id and revision."
        )
    else:
        note = (
            "The backbone is a randomly initialised test model built from `config.json`, so its weights "
            "are stored here too (`backbone.safetensors`) beside the trained tensors "
            "(`model.safetensors`) and the image processor (`preprocessor_config.json`)."
        )
    resize = f"short side resized to {processor.resize} px" if processor.resize else "native resolution"
    small = "padded with the mean colour" if processor.small == "pad" else "upscaled"
    n = processor.crops_per_side
    crops = (
        f"one {processor.size} px centre crop"
        if processor.crop == "center"
        else f"up to {n}x{n} crops of {processor.size} px, probabilities averaged"
    )
    return {
        "backbone": config.backbone,
        "backbone_id": config.backbone_id or "random, built from config",
        "backbone_revision": config.backbone_revision or "unpinned",
        "experts": ", ".join(f"`{n}`" for n in config.experts),
        "fusion": config.fusion,
        "preprocessing": f"{crops}, {resize}, small images {small}",
        "storage_note": note,
    }


def _metrics_table(results: dict) -> str:
    """The card's table of clean metrics, one row per benchmark of ``results.json``."""
    keys = ("ap", "auroc", "accuracy", "real_acc", "fake_acc")
    rows = [
        [entry.get("title", name), *[fmt(entry.get("metrics", {}).get(k)) for k in keys]]
        for name, entry in results.get("benchmarks", {}).items()
    ]
    return md_table(["benchmark", "AP", "AUROC", "accuracy", "real acc", "fake acc"], rows)


def make_model_card(
    detector,
    repo_id: str,
    license: str,
    datasets: list[str],
    results: dict | None,
    local_data: list[str] = (),
    local_backbone: bool = False,
    golden=None,
) -> ModelCard:
    """The published card; ``datasets`` are Hub dataset ids, ``local_data`` lines naming unpublished local builds.
    ``local_backbone``: the config's ``backbone_id`` is the name of a local copy of the weights, not a Hub id.
    ``golden``: the staged :class:`~sefmodel.evaluation.golden.GoldenSet`, if any."""
    cfg = detector.config
    eval_results, model_name = None, repo_id.split("/")[-1]
    if results and results.get("model-index"):
        index = results["model-index"]
        index[0]["name"] = model_name
        model_name, eval_results = model_index_to_eval_results(index)
    if local_backbone:
        backbone = (f"a local copy of the weights in a folder named `{cfg.backbone_id}`, not a Hub id: load with "
                    "`backbone_id=` a folder or Hub id holding the same weights")  # fmt: skip
    else:
        backbone = (
            f"`{cfg.backbone_id or 'random, built from config'}`, revision `{cfg.backbone_revision or 'unpinned'}`"
        )
    data = ModelCardData(
        base_model=None if local_backbone else cfg.backbone_id,
        datasets=datasets or None,
        eval_results=eval_results or None,
        library_name="sef-toolkit",
        license=license,
        model_name=model_name,
        pipeline_tag="image-classification",
        tags=["ai-generated-image-detection", "deepfake-detection", "lora", "mixture-of-experts"],
    )
    body = [
        f"# {model_name}",
        "",
        "A detector of AI-generated images from the SEF toolkit (Separate Expert Fusion): a frozen "
        f"`{cfg.backbone}` backbone ({backbone}), one LoRA expert per artifact family ({', '.join(cfg.experts)}) "
        f"and a `{cfg.fusion}` fusion head. It outputs the probability that an image is generated.",
        "",
        "## Use",
        "",
        "```python",
        "from sefmodel import SEFDetector, score",
        f'detector = SEFDetector.from_pretrained("{repo_id}"'
        + (', backbone_id="FOLDER_OR_HUB_ID")' if local_backbone else ")"),
        "scores = score(detector, images)   # PIL images of any size; scores.probs in [0, 1]",
        "```",
        "",
        f"or `sefmodel predict {repo_id} IMAGES_OR_DIRS`. Input: "
        f"{card_fields(cfg, detector.processor)['preprocessing']}, by the image processor stored with it "
        f"(`preprocessor_config.json`). {card_fields(cfg, detector.processor)['storage_note']} No pickles.",
        "",
        "## Training data",
        "",
        *([f"- Hugging Face dataset [{d}](https://huggingface.co/datasets/{d})" for d in datasets]
          + [f"- {line}, not published" for line in local_data]
          or ["- not recorded (no `train_config.json` in the run folder)"]),
        "",
    ]  # fmt: skip
    if results:
        body += ["## Evaluation", "", _metrics_table(results), "",
                 "Full report, robustness curves and plots: [eval/results.md](eval/results.md).", ""]  # fmt: skip
    if golden is not None:
        body += ["## Reproducing its scores", "",
                 f"`sefmodel check {repo_id}` scores the {len(golden.images)} small images in `golden/` again and "
                 "says, per image, whether your install gives the probability recorded in `golden/golden.json` (within "
                 f"{golden.tolerance:g}, on the CPU), and which package versions differ from the recorded ones when "
                 "it does not.", ""]  # fmt: skip
    body += [
        "## Intended use and limits",
        "",
        "- For research and for triage in trust-and-safety workflows, as one signal among others: a score is not "
        "proof that an image is or is not generated.",
        "- Trained on aligned real/fake pairs of the families above; accuracy on generators, post-processing "
        "(resizing, recompression, screenshots) and content unlike the training data can be much lower. Check the "
        "robustness curves before relying on it under such conditions.",
        "- Small or heavily compressed images carry fewer artifacts; scores on them are less reliable.",
    ]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(body) + "\n")


def make_aeroblade_card(
    detector: Any, repo_id: str | None = None, license: str | None = None, results: dict | None = None
) -> ModelCard:
    """The card of a training-free AEROBLADE detector (:mod:`sefmodel.model.aeroblade`): what it computes, what its
    folder holds and, when published after ``sefmodel eval``, the metrics. Names files, never where they lay."""
    cfg = detector.config
    model_name = (repo_id or "aeroblade").split("/")[-1]
    eval_results = None
    if results and results.get("model-index"):
        index = results["model-index"]
        index[0]["name"] = model_name
        model_name, eval_results = model_index_to_eval_results(index)
    data = ModelCardData(
        eval_results=eval_results or None,
        library_name="sef-toolkit",
        license=license,
        model_name=model_name,
        pipeline_tag="image-classification",
        tags=["ai-generated-image-detection", "aeroblade", "training-free"],
    )
    sources = []
    for entry in cfg.autoencoders:
        files = [f"`{v['file']}` (sha256 `{v['sha256'][:12]}…`)" for v in entry.get("source", {}).values()
                 if isinstance(v, dict) and v.get("file") and v.get("sha256")]  # fmt: skip
        model = entry.get("source", {}).get("model")
        what = ", ".join(files) or (f"`{model}`" if isinstance(model, str) else "recorded in config.json")
        sources.append(f"- `{entry['name']}`: a `{entry['generator']}` autoencoder, from {what}")
    processor = detector.processor
    crops = (f"one {processor.size} px centre crop" if processor.crop == "center"
             else f"up to {processor.crops_per_side}x{processor.crops_per_side} crops of {processor.size} px, "
             "probabilities averaged")  # fmt: skip
    fit = (f"fitted by logistic regression on `{cfg.fit['on']}` ({cfg.fit['n_real']} real, {cfg.fit['n_fake']} "
           f"generated images; AP of the distance there {cfg.fit['ap']:.3f})" if cfg.fit else
           "not fitted (a rough default): take AP and AUROC, which need no threshold, or set a threshold from your own "
           "real images with `sefmodel calibrate`")  # fmt: skip
    ref = repo_id or "PATH_OR_REPO_ID"
    body = [
        f"# {model_name}",
        "",
        "A training-free detector of AI-generated images from the SEF toolkit: AEROBLADE (Ricker et al., CVPR 2024). "
        "An autoencoder reconstructs the image; images that came out of such a decoder are reconstructed more "
        "faithfully than photos, so the smaller the distance between an image and its reconstruction, the higher "
        "P(generated).",
        "",
        f"- {detector.describe()['description']}.",
        f"- scale and offset: {fit}.",
        f"- input: {crops}, native resolution, RGB in [0, 1].",
        "",
        "Autoencoders (their weights are stored in this repository, under `autoencoders/`, as safetensors; the "
        "distance network under `distance/`):",
        "",
        *sources,
        "",
        "## Use",
        "",
        "```python",
        "from sefmodel import load_detector, score",
        f'detector = load_detector("{ref}")',
        "scores = score(detector, images)   # PIL images of any size; scores.probs in [0, 1]",
        "```",
        "",
        f"or `sefmodel predict {ref} IMAGES_OR_DIRS` (also `eval`, `serve`, `calibrate`). No pickles.",
        "",
    ]
    if results:
        body += ["## Evaluation", "", _metrics_table(results), "",
                 "Full report: [eval/results.md](eval/results.md).", ""]  # fmt: skip
    body += [
        "## Limits",
        "",
        "- It detects images made through the decoders it holds (or ones like them); images from other generators, "
        "and any image that was resized, recompressed or screenshotted, reconstruct differently: check the robustness "
        "curves before relying on it.",
        "- A score is one signal among others, not proof.",
    ]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(body) + "\n")
