"""``sefmodel publish``: a detector and its model card → a Hugging Face Hub model repo.

The staged folder (all that ``--dry-run`` writes) is the detector folder as ``save_pretrained`` writes it
(``config.json``, ``preprocessor_config.json``, ``model.safetensors``: trained tensors only) with a model card
(:func:`sefmodel.model_card.make_model_card`) whose YAML carries the base model, the training datasets and, when the
run was evaluated (``RUN/eval/results.json``), the metrics as structured ``model-index`` eval results; the
evaluation report and plots go along under ``eval/``, and a golden set under ``golden/``
(:mod:`sefmodel.evaluation.golden`: a few images with the probabilities the staged detector gives them, scored again
while staging, for ``sefmodel check USER/NAME``). Its images come from ``golden`` when given, else from the detector's
own golden set, else from the run's validation shards (``val_data`` in ``train_config.json``); without any, the card
says how to add one. A training-free AEROBLADE detector (:mod:`sefmodel.model.aeroblade`) is staged the same way, with
its stored networks and its own card.

Nothing names where things lay on this machine: a backbone loaded from a local folder is published as the Hub id
the user names (``base_model``), as the Hub id a Hub-cache folder came from, or else by the folder's name, with a
card that says it was a local copy; the eval files are scrubbed; and the publish core (:mod:`sefdata.upload`,
shared with ``sefdata publish``) scans every staged file before anything is uploaded."""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from huggingface_hub import ModelCard

from sefcore.errors import SefError
from sefcore.hub import check_repo_id, staged_files
from sefcore.privacy import is_local_path, public_json, public_text
from sefdata.shards import Manifest
from sefdata.upload import empty_folder, upload_staged
from sefmodel.evaluation.golden import DEFAULT_COUNT, GOLDEN_DIR, GOLDEN_FILE, GoldenSet, write_golden
from sefmodel.model_card import make_aeroblade_card, make_model_card
from sefmodel.predict import load_detector, resolve_run

EVAL_FILES = ("results.json", "results.md", "results.csv")
# a snapshot in the Hugging Face cache: HF_HOME/hub/models--OWNER--NAME/snapshots/COMMIT
_HUB_SNAPSHOT = re.compile(r"/models--([^/]+?)--([^/]+)/snapshots/([0-9a-f]{40})(?:/|$)")
HINT = "remove it from the run's files (or name the backbone with --base-model) and publish again"


@dataclass
class PublicBackbone:
    """The backbone as the published ``config.json`` and card name it."""

    id: str | None  # a Hub id, a local copy's folder name, or None for a random test backbone built from config
    revision: str | None
    local_copy: bool  # the detector was trained on a local folder that names no Hub id


def public_backbone(backbone_id: str | None, revision: str | None, base_model: str | None = None) -> PublicBackbone:
    """What to publish for a detector's backbone: ``base_model`` (a Hub id the user names for a local copy), the
    Hub id of a Hub-cache snapshot folder, or a local folder's last component only (``local_copy``)."""
    if backbone_id is None:  # random, built from config: its weights go along (backbone.safetensors)
        if base_model is not None:
            raise SefError("--base-model: this detector's backbone is a random test model, stored with it")
        return PublicBackbone(None, None, False)
    local = is_local_path(backbone_id) or Path(backbone_id).expanduser().is_dir()
    if base_model is not None:
        from huggingface_hub.errors import HFValidationError
        from huggingface_hub.utils import validate_repo_id

        try:
            if is_local_path(base_model) or base_model.count("/") != 1:
                raise HFValidationError("not OWNER/NAME")
            validate_repo_id(base_model)
        except HFValidationError:
            raise SefError(f"--base-model {base_model!r}: expected the backbone's Hub model id, OWNER/NAME") from None
        if not local and backbone_id != base_model:
            raise SefError(f"--base-model {base_model}: the detector's backbone is the Hub model {backbone_id} already")
        return PublicBackbone(base_model, revision, False)
    if not local:
        return PublicBackbone(backbone_id, revision, False)
    snapshot = _HUB_SNAPSHOT.search(Path(backbone_id).expanduser().resolve().as_posix())
    if snapshot:
        owner, name, commit = snapshot.groups()
        return PublicBackbone(f"{owner}/{name}", revision or commit, False)
    return PublicBackbone(Path(backbone_id).expanduser().resolve().name, None, True)


@dataclass
class StagedDetector:
    folder: Path
    files: list[str]
    card: ModelCard
    golden: GoldenSet | None = None
    notes: list[str] = field(default_factory=list)
    """What the user should know: where the golden set came from, or why there is none."""


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
        manifest = Manifest.load(folder)
        return f" (a sefdata build: {manifest.totals.written} samples, fields {', '.join(manifest.fields)})"
    except (SefError, AttributeError, TypeError):  # no manifest, a damaged one, or a bare shard index
        return " (local shards)"


def _validation_data(run: Path) -> list[str]:
    try:
        data = json.loads((run / "train_config.json").read_text()).get("val_data") or []
    except (OSError, ValueError, AttributeError):
        return []
    return [data] if isinstance(data, str) else [str(d) for d in data]


def _stage_golden(
    detector, run: Path, detector_dir: Path, staging: Path, golden: str | None, count: int
) -> tuple[GoldenSet | None, list[str]]:
    """Write the staged golden set (module docstring: where its images come from); returns it and notes."""
    if golden is not None:  # asked for: any problem stops the publish
        made, warnings = write_golden(detector, staging, golden, count=count, command="sefmodel publish")
        return made, [f"golden set: left out {w}" for w in warnings]
    if (detector_dir / GOLDEN_DIR / GOLDEN_FILE).is_file():
        source, what = detector_dir / GOLDEN_DIR, "the detector's golden set"
    elif val := _validation_data(run):
        source, what = val, "the run's validation shards"
    else:
        return None, ["no golden set: give --golden SOURCE (held-out shards or images) so that users can run "
                      "`sefmodel check` on the published detector"]  # fmt: skip
    try:
        made, warnings = write_golden(detector, staging, source, count=count, command="sefmodel publish")
    except SefError as e:
        return None, [f"no golden set: {what} could not be used ({e}); give --golden SOURCE"]
    return made, [f"golden set: {len(made.images)} images from {what}, scored again"] + [
        f"golden set: left out {w}" for w in warnings
    ]


def stage(
    run: str | Path,
    staging: str | Path,
    *,
    repo_id: str,
    license: str = "apache-2.0",
    base_model: str | None = None,
    golden: str | None = None,
    golden_count: int = DEFAULT_COUNT,
) -> StagedDetector:
    """Write the folder that ``publish`` uploads into ``staging`` (emptied first). ``base_model``: the backbone's
    Hub id when the detector was trained on a local copy of it; ``golden``: where the golden set's images come from
    (module docstring), ``golden_count`` of them."""
    run, staging = Path(run), Path(staging)
    if not run.is_dir():
        raise SefError(f"{run} is not a local run or detector folder")
    detector_dir = Path(resolve_run(run))
    detector = load_detector(detector_dir, device="cpu")  # proves it loads before anything is uploaded
    if detector.detector_type == "aeroblade":  # training-free: its networks are in its folder, no backbone to name
        if base_model is not None:
            raise SefError("--base-model: an AEROBLADE detector has no backbone to name; its networks are stored "
                           "in its folder")  # fmt: skip
        backbone = PublicBackbone(None, None, False)
        trained_on = None
    else:
        backbone = public_backbone(detector.config.backbone_id, detector.config.backbone_revision, base_model)
        trained_on = detector.config.backbone_id
        # the staged config.json names the public backbone (this detector object is not used for scoring again)
        detector.config.backbone_id, detector.config.backbone_revision = backbone.id, backbone.revision
    detector.save_pretrained(empty_folder(staging))
    staged_golden, notes = _stage_golden(detector, run, detector_dir, staging, golden, golden_count)
    eval_dir = _find_eval(run, detector_dir)

    def public_report(name: str) -> str:
        """An eval file as published: the backbone named as config.json names it, other local paths by name."""
        text = (eval_dir / name).read_text(encoding="utf-8")
        if trained_on and backbone.id and trained_on != backbone.id:
            text = text.replace(trained_on, backbone.id)
        return (
            json.dumps(public_json(json.loads(text)), indent=2) + "\n" if name.endswith(".json") else public_text(text)
        )

    results = json.loads(public_report("results.json")) if eval_dir else None
    if eval_dir:
        (staging / "eval").mkdir()
        for name in EVAL_FILES:  # where the benchmarks and the run lay on this machine stays here
            if (eval_dir / name).is_file():
                (staging / "eval" / name).write_text(public_report(name), encoding="utf-8")
        if (eval_dir / "plots").is_dir():
            shutil.copytree(eval_dir / "plots", staging / "eval" / "plots")
    if detector.detector_type == "aeroblade":
        card = make_aeroblade_card(detector, repo_id, license, results)
    else:
        datasets, local_data = _training_data(run)
        card = make_model_card(
            detector, repo_id, license, datasets, results, local_data, local_backbone=backbone.local_copy,
            golden=staged_golden,
        )  # fmt: skip
    card.save(staging / "README.md")
    files = staged_files(staging)
    return StagedDetector(folder=staging, files=files, card=card, golden=staged_golden, notes=notes)


def publish(
    run: str | Path,
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    license: str = "apache-2.0",
    staging: str | Path | None = None,
    dry_run: bool = False,
    base_model: str | None = None,
    golden: str | None = None,
    golden_count: int = DEFAULT_COUNT,
    api=None,
) -> StagedDetector:
    """Stage a run's detector with its card, scan it and upload it to the model repo ``repo_id``. ``dry_run``:
    stage and scan only; ``base_model``, ``golden`` and ``golden_count``: see :func:`stage`."""
    check_repo_id(repo_id)
    staging = Path(staging) if staging else Path(run) / ".publish"
    staged = stage(run, staging, repo_id=repo_id, license=license, base_model=base_model, golden=golden,
                   golden_count=golden_count)  # fmt: skip
    staged.files = upload_staged(staging, repo_id, repo_type="model", command="sefmodel publish", hint=HINT,
                                 private=private, revision=revision, dry_run=dry_run, api=api)  # fmt: skip
    return staged
