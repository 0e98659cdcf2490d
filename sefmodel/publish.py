"""``sefmodel publish``: a detector and its model card → a Hugging Face Hub model repo.

The staged folder (all that ``--dry-run`` writes) is the detector folder as ``save_pretrained`` writes it
(``config.json``, ``preprocessor_config.json``, ``model.safetensors``: trained tensors only) with a model card
(:func:`sefmodel.model_card.make_model_card`) whose YAML carries the base model, the training datasets and, when the
run was evaluated (``RUN/eval/results.json``), the metrics as structured ``model-index`` eval results; the
evaluation report and plots go along under ``eval/``."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import ModelCard

from sefdata.errors import SefError
from sefdata.hub import check_repo_id, staged_files, upload_folder
from sefdata.privacy import public_json, public_text
from sefmodel.model_card import make_model_card
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
