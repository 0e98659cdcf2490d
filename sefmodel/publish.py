"""``sefmodel publish``: a detector and its model card → a Hugging Face Hub model repo.

The staged folder (all that ``--dry-run`` writes) is the detector folder as ``save_pretrained`` writes it
(``config.json``, ``model.safetensors``: trained tensors only) with a model card whose YAML carries the base model,
the training datasets and, when the run was evaluated (``RUN/eval/results.json``), the metrics as structured
``model-index`` eval results; the evaluation report and plots go along under ``eval/``.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import ModelCard, ModelCardData
from huggingface_hub.repocard_data import model_index_to_eval_results

from sefdata.errors import SefError
from sefdata.hub import check_repo_id, staged_files, upload_folder
from sefdata.privacy import public_json, public_text
from sefmodel.predict import load_detector, resolve_run

EVAL_FILES = ("results.json", "results.md", "results.csv")


@dataclass
class StagedDetector:
    folder: Path
    files: list[str]
    card: ModelCard


def _find_eval(run: Path, detector_dir: Path) -> Path | None:
    for candidate in (run / "eval", detector_dir / "eval", detector_dir.parent / "eval"):
        if (candidate / "results.json").is_file():
            return candidate
    return None


def _training_data(run: Path) -> tuple[list[str], list[str]]:
    """What the detector was trained on, read from the trainer's config (and, for a fusion run, from its experts'):
    the Hub dataset ids (``hf://datasets/OWNER/NAME/...`` shards), and a line for each local build, by folder name
    and manifest, never by path."""
    hub, local = set(), {}
    runs, seen = [run], set()
    while runs:
        folder = runs.pop()
        if folder in seen or not (folder / "train_config.json").is_file():
            continue
        seen.add(folder)
        try:
            config = json.loads((folder / "train_config.json").read_text())
        except ValueError:
            continue
        data = config.get("data", [])
        for entry in [data] if isinstance(data, str) else data:
            if entry.startswith("hf://datasets/"):
                hub.add("/".join(entry.removeprefix("hf://datasets/").split("/")[:2]))
            elif entry:
                local[Path(entry).name] = _describe_build(Path(entry))
        for expert in config.get("experts", []):  # fusion: the experts' data is the detector's training data too
            path = Path(expert)
            runs.append(path.parent if path.name == "detector" else path)
    return sorted(hub), [f"`{name}`{detail}" for name, detail in sorted(local.items())]


def _describe_build(path: Path) -> str:
    folder = path if path.is_dir() else path.parent
    try:
        sef = json.loads((folder / "manifest.json").read_text())["sef"]
        return f" (a sefdata build: {sef['totals']['written']} samples, fields {', '.join(sef['fields'])})"
    except (OSError, ValueError, KeyError, TypeError):
        return " (local shards)"


def _metrics_table(results: dict) -> list[str]:
    rows = ["| benchmark | AP | AUROC | accuracy | real acc | fake acc |", "|---|---|---|---|---|---|"]
    fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
    for name, entry in results.get("benchmarks", {}).items():
        m = entry.get("metrics", {})
        rows.append(f"| {entry.get('title', name)} | {fmt(m.get('ap'))} | {fmt(m.get('auroc'))} | "
                    f"{fmt(m.get('accuracy'))} | {fmt(m.get('real_acc'))} | {fmt(m.get('fake_acc'))} |")  # fmt: skip
    return rows


def make_model_card(
    detector, repo_id: str, license: str, datasets: list[str], results: dict | None, local_data: list[str] = ()
) -> ModelCard:
    cfg = detector.config
    eval_results, model_name = None, repo_id.split("/")[-1]
    if results and results.get("model-index"):
        index = results["model-index"]
        index[0]["name"] = model_name
        model_name, eval_results = model_index_to_eval_results(index)
    data = ModelCardData(
        base_model=cfg.backbone_id,
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
        f"`{cfg.backbone}` backbone (`{cfg.backbone_id or 'random, built from config'}`, revision "
        f"`{cfg.backbone_revision or 'unpinned'}`), one LoRA expert per artifact family ({', '.join(cfg.experts)}) "
        f"and a `{cfg.fusion}` fusion head. It outputs the probability that an image is generated.",
        "",
        "## Use",
        "",
        "```python",
        "from sefmodel import SEFDetector",
        f'detector = SEFDetector.from_pretrained("{repo_id}")',
        "scores = detector.score(images)   # PIL images of any size; scores.probs in [0, 1]",
        "```",
        "",
        f"or `sefmodel predict {repo_id} IMAGES_OR_DIRS`. "
        + (
            "Only the trained tensors are stored here (`model.safetensors`: LoRA adapters, heads, fusion head; no "
            "pickles) with `config.json`; the backbone loads from its own repository by id and revision."
            if cfg.backbone_config is None
            else "The backbone is a randomly initialised model built from `config.json` (a test or benchmark "
            "model), so its weights are stored here too, as `backbone.safetensors`, beside the trained tensors "
            "(`model.safetensors`); no pickles."
        ),
        "",
        "## Training data",
        "",
        *([f"- Hugging Face dataset [{d}](https://huggingface.co/datasets/{d})" for d in datasets]
          + [f"- {line}, not published" for line in local_data]
          or ["- not recorded (no `train_config.json` in the run folder)"]),
        "",
    ]  # fmt: skip
    if results:
        body += ["## Evaluation", "", *_metrics_table(results), "",
                 "Full report, robustness curves and plots: [eval/results.md](eval/results.md).", ""]  # fmt: skip
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


def stage(run: str | Path, staging: str | Path, *, repo_id: str, license: str = "apache-2.0") -> StagedDetector:
    run, staging = Path(run), Path(staging)
    if not run.is_dir():
        raise SefError(f"{run} is not a local run or detector folder")
    detector_dir = Path(resolve_run(run))
    detector = load_detector(detector_dir, device="cpu")  # proves it loads before anything is uploaded
    if staging.exists():
        shutil.rmtree(staging)
    detector.save_pretrained(staging)
    eval_dir = _find_eval(run, detector_dir)
    results = public_json(json.loads((eval_dir / "results.json").read_text())) if eval_dir else None
    if eval_dir:
        (staging / "eval").mkdir()
        for name in EVAL_FILES:  # where the benchmarks and the run lay on this machine stays here
            if (eval_dir / name).is_file():
                text = (eval_dir / name).read_text(encoding="utf-8")
                if name.endswith(".json"):
                    text = json.dumps(public_json(json.loads(text)), indent=2) + "\n"
                else:
                    text = public_text(text)
                (staging / "eval" / name).write_text(text, encoding="utf-8")
        if (eval_dir / "plots").is_dir():
            shutil.copytree(eval_dir / "plots", staging / "eval" / "plots")
    datasets, local_data = _training_data(run)
    card = make_model_card(detector, repo_id, license, datasets, results, local_data)
    card.save(staging / "README.md")
    files = staged_files(staging)
    return StagedDetector(folder=staging, files=files, card=card)


def publish(
    run: str | Path,
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    license: str = "apache-2.0",
    staging: str | Path | None = None,
    dry_run: bool = False,
    api=None,
) -> StagedDetector:
    """Stage a run's detector with its card and upload it to the model repo ``repo_id``."""
    check_repo_id(repo_id)
    staging = Path(staging) if staging else Path(run) / ".publish"
    staged = stage(run, staging, repo_id=repo_id, license=license)
    if not dry_run:
        upload_folder(staging, repo_id, repo_type="model", private=private, revision=revision, api=api,
                      message=f"sefmodel publish ({len(staged.files)} files)")  # fmt: skip
    return staged
