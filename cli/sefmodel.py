"""``sefmodel``: train, evaluate and use Separate Expert Fusion detectors."""

from __future__ import annotations

import contextlib
import csv
import json
import sys
from pathlib import Path

import typer

from sefcore.errors import SefError
from sefcore.markdown import fmt as _f
from sefmodel.evaluation.config import EvalConfig
from sefmodel.model.aeroblade_config import AerobladeConfig
from sefmodel.model.config import DetectorConfig
from sefmodel.model.lora import LoraSettings
from sefmodel.model.preprocess import ImageProcessor
from sefmodel.runtime import RuntimeOptions
from sefmodel.serve.app import ServeConfig
from sefmodel.train.config import TrainConfig

from .common import App, command_line, report_upload, run_app, user_errors
from .options import config_options, field_help, publish_options

app = App(help="Train, evaluate and use Separate Expert Fusion detectors on sefdata shards.")


def _key_values(items: list[str] | None, flag: str) -> dict[str, str]:
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"{flag} {item!r}: expected KEY=VALUE")
        out[key.strip().replace("-", "_")] = value.strip()
    return out


def _number(text: str) -> int | float | str:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


# Options are declared once, in the configs: every TrainConfig field with a plain value is an option here and a key
# in --config files; the detector's main fields (keys of the [detector] table) come from DetectorConfig, the crop side
# from its ImageProcessor and the LoRA rank and blocks from LoraSettings.
@app.command()
@config_options(
    TrainConfig,
    exclude=("out", "detector", "domains", "augment"),
    overrides={"data": {"metavar": "SHARDS"}, "val_data": {"metavar": "SHARDS"}, "experts": {"metavar": "RUN"},
               "teacher": {"metavar": "RUN"}, "stage": {"metavar": "STAGE"}, "domain": {"metavar": "NAME"},
               "fusion": {"metavar": "HEAD"}, "mixed_precision": {"metavar": "MODE"}, "record_keys": {"hidden": True}},
)  # fmt: skip
@config_options(
    DetectorConfig,
    include=("backbone", "backbone_id", "feature_layer", "feature_pool", "input_filter", "spectrum", "gate_hidden",
             "gate_input"),
    param="detector_flags",
)  # fmt: skip
@config_options(
    ImageProcessor,
    include=("size",),
    prefix="image_",
    overrides={"size": {"metavar": "PIXELS"}},
    param="processor_flags",
)  # fmt: skip
@config_options(
    LoraSettings,
    include=("rank", "blocks"),
    prefix="lora_",
    overrides={"blocks": {"metavar": "all|last:K"}},
    param="lora_flags",
)  # fmt: skip
def train(
    more_experts: list[str] = typer.Argument(
        None, metavar="RUN", help="more expert runs after --experts (--experts RUN_A RUN_B)"
    ),
    out: Path = typer.Option(..., "--out", "-o", metavar="RUN", help=field_help(TrainConfig, "out")),
    config_file: Path | None = typer.Option(
        None,
        "--config",
        metavar="TOML",
        help="file with any of these options as keys (and tables augment, detector, domains); flags override it. "
        "The fusion stage accepts the experts' file: it takes the detector from the experts (distill: from the "
        "teacher, under the file's detector settings)",
    ),
    domain_fields: list[str] = typer.Option(
        None,
        "--domain-fields",
        metavar="NAME=FIELD[,FIELD...]",
        help="the shard fields of a domain, repeatable (default: recon=vae,ddim,taesd sr=sr)",
    ),
    aug: list[str] = typer.Option(
        None,
        "--aug",
        metavar="KEY=VALUE",
        help="augmentation setting, repeatable, e.g. jpeg_p=0.2 (see docs/training.md)",
    ),
    resume: bool = typer.Option(False, "--resume", help="continue the run in --out from its last checkpoint"),
    stop_after: int | None = typer.Option(
        None, "--stop-after", metavar="N", help="stop after N steps as if interrupted (resumable)"
    ),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="show a progress bar"),
    *,
    config_flags: dict,
    detector_flags: dict,
    processor_flags: dict,
    lora_flags: dict,
) -> None:
    """Train one stage of a SEF detector on sefdata shards, into a run folder.

    \b
      sefmodel train --data shards/train --stage expert --domain recon --out runs/recon
      sefmodel train --data shards/train --stage expert --domain sr --out runs/sr
      sefmodel train --data shards/train --stage fusion --experts runs/recon runs/sr --out runs/sef
      sefmodel train --data shards/train --stage mixed --out runs/mixed
      sefmodel train --data shards/train --stage distill --teacher runs/sef --out runs/distilled

    Offline: --backbone-id DIR loads the backbone from a local folder. Several GPUs or nodes: launch the same
    command with torchrun or accelerate (see docs/training.md).
    """
    with user_errors((ValueError, FileNotFoundError)):
        config = _train_config(
            out, config_file, resume, config_flags, more_experts, detector_flags, processor_flags, lora_flags,
            domain_fields, aug,
        )  # fmt: skip
        for ref in config.experts:
            _check_ref(ref, "expert run")
        if config.teacher:
            _check_ref(config.teacher, "teacher")
    for note in config.notes:
        typer.echo(f"note: {note}", err=True)
    if config.stage == "fusion":
        fetching, hint = "the expert detectors or their backbones", "give local expert run folders (--experts DIR)"
    elif config.stage == "distill":
        fetching, hint = "the teacher detector or the backbones", "give a local teacher run folder (--teacher DIR)"
    else:
        fetching, hint = f"the backbone {_backbone_ref(config.detector)}", "give a local copy with --backbone-id DIR"
    try:
        with user_errors((ValueError, FileNotFoundError), hub=True, fetching=fetching, offline_hint=hint):
            from sefmodel.train import train as run_train

            result = run_train(config, resume=resume, stop_after=stop_after, progress=progress)
    except typer.Exit as e:
        if e.exit_code == 130:
            typer.echo(f"continue with: sefmodel train --resume --out {out}", err=True)
        raise
    if not result.main_process:
        return
    if not result.finished:
        typer.echo(f"stopped at step {result.step} (resumable: sefmodel train --resume --out {out})")
        return
    line = f"trained {config.stage} for {result.step} steps; detector: {result.detector}"
    if result.val:
        v = result.val
        line += (f"; held-out AP {_f(v['ap'], 4)}, acc {_f(v['accuracy'], 4)} (real {_f(v['real_acc'], 4)}, "
                 f"fake {_f(v['fake_acc'], 4)})")  # fmt: skip
    typer.echo(line)


def _backbone_ref(detector: dict) -> str:
    if detector.get("backbone_id"):
        return detector["backbone_id"]
    from sefmodel.model.backbones import get_backbone_class

    try:
        return get_backbone_class(detector.get("backbone", "dinov2")).default_model_id
    except KeyError:
        return str(detector.get("backbone"))


def _train_config(
    out, config_file, resume, flags, more_experts, detector_flags, processor_flags, lora_flags, domain_fields, aug
) -> TrainConfig:
    """The TrainConfig from, in increasing precedence: the saved run (--resume), --config, the flags."""
    from sefmodel.train.config import _default_domains, load_toml

    values: dict = {}
    if resume and not config_file and not flags.get("data"):
        values = TrainConfig.load(out).to_dict()  # the saved settings; flags below may repeat them
    if config_file:
        values.update(load_toml(config_file))
    if more_experts and not flags.get("experts"):
        raise ValueError(f"unexpected argument(s) {' '.join(more_experts)}; expert runs follow --experts")
    if more_experts:
        flags["experts"] = [*flags["experts"], *more_experts]
    detector = dict(values.get("detector", {}))
    lora = {**detector.get("lora", {}), **lora_flags}
    if lora:
        detector["lora"] = lora
    if processor_flags:
        detector["processor"] = {**detector.get("processor", {}), **processor_flags}
    detector.update(detector_flags)
    if detector:
        values["detector"] = detector
    if domain_fields:
        parsed = {k: [f.strip() for f in v.split(",") if f.strip()] for k, v in
                  _key_values(domain_fields, "--domain-fields").items()}  # fmt: skip
        values["domains"] = {**(dict(values.get("domains", {})) or _default_domains()), **parsed}
    if aug:
        values["augment"] = {
            **values.get("augment", {}),
            **{k: _number(v) for k, v in _key_values(aug, "--aug").items()},
        }
    values.update(flags)
    values["out"] = str(out)
    return TrainConfig(**values)


# ---- eval / predict / explain ---------------------------------------------------------------------------------

RUN_HELP = "detector folder, trainer run folder (uses RUN/detector/) or Hub id OWNER/NAME"
PREDICT_EXIT = (
    "Exit status: 0 every input was scored; 1 some inputs could not be read or scored (each has an error record "
    "and the others were written); 2 usage error (bad option, RUN not loadable, no input found)."
)


# eval's options are EvalConfig's fields; --device and --threads come from the runtime block every scoring command
# shares (EvalConfig's --batch-size and --crop are that block's too)
@app.command("eval", no_args_is_help=True)
@config_options(
    EvalConfig,
    overrides={"benches": {"flag": "bench", "names": ["-b"]}, "perturb": {"names": ["-p"]},
               "robustness": {"names": ["-r"]}},
)  # fmt: skip
@config_options(RuntimeOptions, include=("device", "threads"), param="runtime_flags")
def eval_(
    ctx: typer.Context,
    run: str = typer.Argument(..., metavar="RUN", help=RUN_HELP),
    out: Path | None = typer.Option(
        None, "--out", "-o", metavar="DIR", help="output folder (default: RUN/eval for a local RUN)"
    ),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="show progress bars"),
    *,
    config_flags: dict,
    runtime_flags: dict,
) -> None:
    """Evaluate a detector on benchmarks: accuracy at 0.5, real/fake accuracy, AP, AUROC and calibrated accuracy
    per benchmark and subset, mean and worst case, robustness curves. Writes results.json, results.md,
    results.csv, scores.csv and plots/*.png."""
    with user_errors():
        _check_ref(run)
    from sefmodel.evaluation.evaluate import evaluate
    from sefmodel.predict import load_detector

    with user_errors(hub=True):
        config = EvalConfig(**config_flags)
        runtime = RuntimeOptions(**runtime_flags)
        if out is None:
            if not Path(run).is_dir():
                raise SefError("RUN is not a local folder: say where the results go with --out")
            out = Path(run) / "eval"
        _use_threads(runtime.threads)
        detector = load_detector(run, runtime.device)
        results = evaluate(detector, config, out, detector_source=str(run), progress=progress,
                           log=lambda m: typer.echo(m, err=True), command=command_line(ctx, "sefmodel"))  # fmt: skip
    mean = results["summary"]["mean"]
    typer.echo(
        f"{results['summary']['benchmarks']} benchmark(s): mean acc@0.5 {_f(mean['accuracy'])}, AP {_f(mean['ap'])}, "
        f"AUROC {_f(mean['auroc'])}; worst acc@0.5 {_f(results['summary']['worst']['accuracy'])}"
    )
    typer.echo(f"report: {out / 'results.md'}  (results.json, results.csv, scores.csv, plots/)")


def _check_ref(ref: str, what: str = "detector") -> None:
    """Fail at once, before the model stack loads, when a RUN is neither a local path nor fetchable from the Hub."""
    if not Path(ref).expanduser().exists():
        from sefcore.hub import require_hub_repo

        require_hub_repo(ref, what)


def _use_threads(threads: int) -> None:
    """Set torch's compute threads (0: leave torch's default)."""
    if threads < 0:
        raise SefError(f"--threads must be >= 0, got {threads}")
    if threads:
        import torch

        torch.set_num_threads(threads)


@app.command(no_args_is_help=True, epilog=PREDICT_EXIT)
@config_options(RuntimeOptions, param="runtime_flags")
def predict(
    run: str = typer.Argument(..., metavar="RUN", help=RUN_HELP),
    inputs: list[str] = typer.Argument(
        ..., metavar="INPUTS", help="image files and folders (searched recursively for images)"
    ),
    format: str = typer.Option(
        "jsonl", "--format", "-f", metavar="jsonl|csv", help="jsonl (one JSON object per line) or csv"
    ),
    out: Path | None = typer.Option(None, "--out", "-o", metavar="FILE", help="write here instead of stdout"),
    threshold: float | None = typer.Option(
        None,
        "--threshold",
        metavar="P",
        help="label is 'generated' when prob > threshold (default: the detector's threshold.json, else 0.5)",
    ),
    uncertain: str | None = typer.Option(
        None,
        "--uncertain",
        metavar="LOW,HIGH",
        help="label 'uncertain' when LOW <= prob <= HIGH instead of forcing a decision",
        show_default=False,
    ),
    *,
    runtime_flags: dict,
) -> None:
    """Score images of any size and format. One record per input: path, prob (P(generated)), label, num_crops and,
    for SEF detectors, the gate weights; an unreadable file gets a record with an error instead."""
    with user_errors():
        _check_ref(run)
    from sefmodel.evaluation.threshold import UncertainBand, decision_threshold
    from sefmodel.images import expand_inputs
    from sefmodel.model.preprocess import check_crop
    from sefmodel.predict import csv_header, csv_row, load_detector, predict_files

    runtime = RuntimeOptions(**runtime_flags)
    batch_size, crop = runtime.batch_size, runtime.crop
    with user_errors(hub=True):
        if format not in ("jsonl", "csv"):
            raise SefError(f"--format must be jsonl or csv, got {format!r}")
        if crop is not None:
            check_crop(crop)
        if batch_size < 1:
            raise SefError(f"--batch-size must be >= 1, got {batch_size}")
        if threshold is not None and not 0 <= threshold <= 1:
            raise SefError(f"--threshold must be in [0, 1], got {threshold}")
        band = UncertainBand.parse(uncertain)
        paths = expand_inputs(inputs)
        if not paths:
            raise SefError(f"no image files found in {', '.join(inputs)}")
        _use_threads(runtime.threads)
        detector = load_detector(run, runtime.device)
        threshold, source = decision_threshold(detector, threshold)
        if source != "--threshold":
            typer.echo(f"threshold {threshold:.6g} ({source})", err=True)
        try:
            handle = out.open("w", newline="", encoding="utf-8") if out else sys.stdout
        except OSError as e:
            raise SefError(f"cannot write {out}: {e.strerror or e}") from None
        failed = scored = 0
        try:
            header = csv_header(detector)
            writer = csv.writer(handle) if format == "csv" else None
            if writer:
                writer.writerow(header)
            for record in predict_files(detector, paths, batch_size, crop, threshold, band):
                if "error" in record:
                    failed += 1
                    typer.echo(f"error: {record['path']}: {record['error']}", err=True)
                else:
                    scored += 1
                if writer:
                    writer.writerow(csv_row(record, header))
                else:
                    handle.write(json.dumps(record) + "\n")
                handle.flush()
        finally:
            if out:
                handle.close()
    typer.echo(f"scored {scored} of {scored + failed} input(s); {failed} failed", err=True)
    if failed:
        raise typer.Exit(1)


@app.command(no_args_is_help=True)
@config_options(RuntimeOptions, include=("batch_size", "device", "threads"), param="runtime_flags")
def calibrate(
    run: Path = typer.Argument(..., metavar="RUN", help="local detector folder or trainer run folder (RUN/detector/)"),
    calibrate_on: Path = typer.Option(
        ...,
        "--calibrate-on",
        metavar="DIR",
        help="folder of your own real images (searched recursively)",
        show_default=False,
    ),
    calibrate_fpr: float = typer.Option(
        0.01, "--calibrate-fpr", metavar="FPR", help="share of real images the threshold may call generated"
    ),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="show a progress bar"),
    *,
    runtime_flags: dict,
) -> None:
    """Set the detector's decision threshold from real images alone: score a folder of your own reals, put the
    threshold where at most --calibrate-fpr of them score above it, and store it as threshold.json in the detector
    folder (predict and serve use it unless --threshold is given). Reports the FPR it reaches on a held-out 20% of
    the reals.

    \b
      sefmodel calibrate runs/sef --calibrate-on photos/ --calibrate-fpr 0.01"""
    from sefmodel.evaluation.threshold import THRESHOLD_NAME
    from sefmodel.predict import calibrate_on_reals, load_detector, resolve_run

    with user_errors(hub=True):
        if not run.is_dir():
            raise SefError(f"{run}: calibrate writes {THRESHOLD_NAME} into a local detector folder; download it first")
        folder = Path(resolve_run(run))
        runtime = RuntimeOptions(**runtime_flags)
        if runtime.batch_size < 1:
            raise SefError(f"--batch-size must be >= 1, got {runtime.batch_size}")
        _use_threads(runtime.threads)
        detector = load_detector(folder, runtime.device)
        result = calibrate_on_reals(detector, calibrate_on, calibrate_fpr, batch_size=runtime.batch_size,
                                    progress=progress)  # fmt: skip
        result.save(folder)
    for warning in result.warnings:
        typer.echo(f"warning: {warning}", err=True)
    h = result.heldout
    heldout = (
        f"held-out FPR {h['fpr']:.4f} on {h['n_test']} reals (95% CI {h['fpr_ci95'][0]:.4f}-{h['fpr_ci95'][1]:.4f}; "
        f"threshold fitted on the other {h['n_fit']})"
        if h["fpr"] is not None
        else "too few images for a held-out estimate"
    )
    typer.echo(
        f"threshold {result.threshold:.6g} for FPR {result.fpr:g} from {result.n_images} real images"
        f" ({result.n_failed} unreadable); {heldout}; written to {folder / THRESHOLD_NAME}"
    )


GOLDEN_SOURCE_HELP = (
    "where the images come from: a sefdata build folder or .tar shards (reals and fakes), a folder of images "
    "(real/ + fake/ or 0_real/ + 1_fake/ give labels) or another detector's golden/ folder"
)
CHECK_EXIT = (
    "Exit status: 0 every golden image reproduced within the tolerance; 1 some did not (each has a FAILED line); "
    "2 usage error (bad option, RUN not loadable, no golden set or a damaged golden.json)."
)


@app.command(no_args_is_help=True)
@config_options(RuntimeOptions, include=("threads",), param="runtime_flags")
def golden(
    ctx: typer.Context,
    run: Path = typer.Argument(..., metavar="RUN", help="local detector folder or trainer run folder (RUN/detector/)"),
    source: str = typer.Argument(..., metavar="SOURCE", help=GOLDEN_SOURCE_HELP),
    count: int = typer.Option(8, "--count", "-n", metavar="N", help="images in the set, 1 to 64"),
    tolerance: float = typer.Option(
        1e-4,
        "--tolerance",
        metavar="X",
        help="largest difference of probability that `check` counts as reproduced (why 1e-4: docs/evaluation.md)",
    ),
    *,
    runtime_flags: dict,
) -> None:
    """Store a golden set in a local detector folder: N small crops (at most the detector's input size) from
    SOURCE, with the probabilities this detector gives them on the CPU, as golden/*.png and golden/golden.json
    (replacing any set there). `sefmodel check` re-scores them on any install; `sefmodel publish` uploads them with
    the detector. Saving other weights into the folder (training on) removes a golden set.

    \b
      sefmodel golden out/demo/detector/sef out/demo/detector/test     # reals and fakes of a held-out build
      sefmodel check out/demo/detector/sef"""
    from sefmodel.evaluation.golden import GOLDEN_DIR, write_golden
    from sefmodel.predict import load_detector, resolve_run

    with user_errors(hub=True):
        if not run.is_dir():
            raise SefError(f"{run}: golden writes into a local detector folder; download the detector first")
        folder = Path(resolve_run(run))
        _use_threads(RuntimeOptions(**runtime_flags).threads)
        detector = load_detector(folder, "cpu")
        made, warnings = write_golden(detector, folder, source, count=count, tolerance=tolerance,
                                      command=command_line(ctx, "sefmodel"))  # fmt: skip
    for warning in warnings:
        typer.echo(f"warning: left out {warning}", err=True)
    labels = [image.label or "unlabelled" for image in made.images]
    kinds = ", ".join(f"{labels.count(k)} {k}" for k in ("real", "fake", "unlabelled") if k in labels)
    typer.echo(f"golden set: {len(made.images)} images ({kinds}) in {folder / GOLDEN_DIR}, tolerance "
               f"{made.tolerance:g}; check it on any install with: sefmodel check {run}")  # fmt: skip


@app.command(no_args_is_help=True, epilog=CHECK_EXIT)
@config_options(RuntimeOptions, include=("threads",), param="runtime_flags")
def check(
    run: str = typer.Argument(..., metavar="RUN", help=RUN_HELP),
    tolerance: float | None = typer.Option(
        None,
        "--tolerance",
        metavar="X",
        help="largest difference of probability that counts as reproduced (default: the one golden.json records)",
        show_default=False,
    ),
    device: str = typer.Option(
        "cpu",
        "--device",
        metavar="DEVICE",
        help="cpu or cuda[:i]; golden sets are made on the CPU, and a GPU's float32 kernels (TF32) differ by more "
        "than the recorded tolerance",
    ),
    *,
    runtime_flags: dict,
) -> None:
    """Re-score the detector's golden set (golden/ in its folder: small images with the probabilities the detector
    gave them when the set was made) and say, per image, whether this install reproduces the probability within the
    tolerance, then a summary; when one does not, which package versions differ from the recorded ones.

    \b
      sefmodel check out/demo/detector/sef
      sefmodel check USER/NAME                 # a published detector (its golden/ comes with it)"""
    with user_errors():
        _check_ref(run)
    from sefmodel.evaluation.golden import GoldenSet, check_golden
    from sefmodel.model.folder import resolve_folder
    from sefmodel.predict import load_detector, resolve_run

    with user_errors((ValueError, FileNotFoundError), hub=True):
        if tolerance is not None and not tolerance >= 0:
            raise SefError(f"--tolerance must be a number >= 0, got {tolerance}")
        folder = resolve_folder(resolve_run(run))  # a Hub id: its snapshot, golden/ included
        GoldenSet.load(folder)  # no golden set: say so before the model stack loads
        _use_threads(RuntimeOptions(**runtime_flags).threads)
        detector = load_detector(folder, device)
        report = check_golden(detector, folder, tolerance)
    for image in report.images:
        typer.echo(image.line())
    typer.echo(report.summary())
    for note in report.notes():
        typer.echo(f"note: {note}")
    if not report.ok:
        raise typer.Exit(1)


@app.command(no_args_is_help=True)
@config_options(RuntimeOptions, include=("device", "threads"), param="runtime_flags")
def explain(
    run: str = typer.Argument(..., metavar="RUN", help=RUN_HELP),
    image: Path = typer.Argument(..., metavar="IMAGE", help="image file to explain"),
    out: Path = typer.Option(Path("cam.png"), "--out", "-o", metavar="PNG", help="figure to write"),
    layer: int | None = typer.Option(
        None, "--layer", metavar="N", help="block whose input tokens are explained (default: the feature block)"
    ),
    *,
    runtime_flags: dict,
) -> None:
    """Grad-CAM heatmap of each expert (and of the fused score) on the crop the detector scores, side by side with
    the gate weights: where each expert looks for artifacts."""
    with user_errors():
        _check_ref(run)
    from PIL import UnidentifiedImageError

    from sefmodel.explain import explain_file
    from sefmodel.images import ImageRejected, describe_error
    from sefmodel.predict import load_detector

    with user_errors(hub=True):
        runtime = RuntimeOptions(**runtime_flags)
        _use_threads(runtime.threads)
        detector = load_detector(run, runtime.device)
        if not detector.explainable:
            raise SefError(f"{run} is a training-free {detector.detector_type} detector: it has no experts to explain "
                           "(Grad-CAM needs a SEF detector)")  # fmt: skip
        try:
            ex = explain_file(detector, image, out, layer)
        except (OSError, UnidentifiedImageError, SyntaxError, ImageRejected) as e:
            if isinstance(e, OSError) and e.filename == str(out):
                raise SefError(f"cannot write {out}: {e.strerror or e}") from None
            raise SefError(f"{image}: {describe_error(e)}") from None
        except ValueError as e:
            raise SefError(str(e)) from None
    gates = (
        ", gate " + ", ".join(f"{n} {w:.2f}" for n, w in ex.gate_weights.items()) if ex.gate_weights else ""
    )  # fmt: skip
    typer.echo(f"P(generated) {ex.prob:.3f}{gates}; figure: {out}")


@app.command(no_args_is_help=True)
@config_options(ServeConfig, overrides={"port": {"names": ["-p"]}})
def serve(run: str = typer.Argument(..., metavar="RUN", help=RUN_HELP), *, config_flags: dict) -> None:
    """A local web page and JSON API to try a detector: drop images (or a folder) on the page and see, per image,
    P(generated), the decision at the threshold, the gate weights over the experts and each expert's Grad-CAM
    heatmap; the run's evaluation report is at /report.

    \b
      sefmodel serve out/demo/detector/sef --report out/demo/detector/eval
      curl -F files=@photo.jpg http://127.0.0.1:7860/api/score      # the records of sefmodel predict, as JSON

    Listens on 127.0.0.1 (this machine only) unless --host says otherwise. Uploads are limited in size, files and
    pixels (read from the header, before decoding) and sniffed for their format; a full queue answers 503 busy.
    Nothing is written outside a temporary folder that is removed when the server stops (Ctrl-C)."""
    with user_errors():
        _check_ref(run)
        config = ServeConfig(**config_flags)
    from sefmodel.predict import load_detector
    from sefmodel.serve.app import create_app, find_report
    from sefmodel.serve.app import serve as run_server

    with user_errors(hub=True):
        report = find_report(run, config)
        _use_threads(config.threads)
        detector = load_detector(run, config.device)
        web = create_app(detector, config, report)
        if not config.loopback:
            typer.echo(f"note: listening on {config.host}: anyone who can reach this machine can use the detector",
                       err=True)  # fmt: skip

        def announce(url: str) -> None:
            typer.echo(f"serving {run} at {url}" + (f"  (report: {url}report/)" if report else ""), err=False)
            typer.echo("press Ctrl-C to stop", err=True)

        with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is how a server stops: not a failure
            run_server(web, config, announce)
    typer.echo("stopped", err=True)


@app.command(no_args_is_help=True)
@config_options(
    AerobladeConfig,
    include=("distance", "distance_backbone", "distance_layers", "lpips_layer", "image_size", "crop"),
)
@config_options(
    RuntimeOptions,
    include=("batch_size", "device", "threads"),
    overrides={"batch_size": {"help": "crops per forward pass (with --fit-on)"}},
    param="runtime_flags",
)
def aeroblade(
    autoencoder: list[str] = typer.Option(
        ...,
        "--autoencoder",
        "-a",
        metavar="SPEC",
        help="repeatable: an autoencoder as sefdata build --gen names it, taesd:encoder=PATH,decoder=PATH (or "
        "weights=DIR) or vae:model=DIR_OR_HUB_ID[,subfolder=vae,sample=false]; several: each image's smallest "
        "distance counts. Its weights are copied into --out",
        show_default=False,
    ),
    out: Path = typer.Option(..., "--out", "-o", metavar="DIR", help="detector folder to write (new or empty)"),
    distance_model: str | None = typer.Option(
        None,
        "--distance-model",
        metavar="DIR_OR_FILE",
        help="the distance's network, copied into --out: features: a transformers folder (or Hub id) of "
        "--distance-backbone (default: the family's Hub id); lpips: torchvision's VGG16 weights file "
        "(vgg16-397923af.pth, read as plain tensors). Nothing is downloaded for lpips",
        show_default=False,
    ),
    fit_on: str | None = typer.Option(
        None,
        "--fit-on",
        metavar="SET",
        help="labelled images to fit P(generated) on (logistic regression on the log distance): a sefdata build "
        "folder (real = 0, every fake field = 1) or a set as eval --bench reads it (real/ + fake/, NAME=PATH, hf:ID). "
        "Without it the probability is uncalibrated: AP/AUROC hold, set a threshold with sefmodel calibrate",
        show_default=False,
    ),
    *,
    config_flags: dict,
    runtime_flags: dict,
) -> None:
    """Make a training-free AEROBLADE detector (Ricker et al., CVPR 2024): an image is scored by how close it lies to
    its reconstruction by an autoencoder (generated images reconstruct better), P(generated) = sigmoid(scale *
    (offset - ln distance)). The folder is a detector like a trained one, self-contained (the autoencoders' and the
    distance network's weights are copied in): sefmodel eval, predict, serve, calibrate and publish take it.

    \b
      sefmodel aeroblade -a taesd:encoder=taef2_encoder.pth,decoder=taef2_decoder.pth \\
          --distance features --distance-model mobilenet_v2_1.0_224 --out runs/aeroblade
      sefmodel aeroblade -a vae:model=sd2-vae,sample=false --fit-on shards/val --out runs/aeroblade-sd2
      sefmodel calibrate runs/aeroblade --calibrate-on my_photos/ && sefmodel eval runs/aeroblade -b bench/

    Distances: features (LPIPS-style: early blocks of a frozen --distance-backbone, unit-normalised channels),
    lpips (the LPIPS metric, layer --lpips-layer; needs pip install lpips and the VGG16 weights), l2, l1 (pixels)."""
    from sefmodel.aeroblade_build import build_aeroblade
    from sefmodel.predict import pick_device

    with user_errors((ValueError, FileNotFoundError), hub=True, fetching="the distance network",
                     offline_hint="give a local folder with --distance-model DIR"):  # fmt: skip
        runtime = RuntimeOptions(**runtime_flags)
        _use_threads(runtime.threads)
        detector = build_aeroblade(autoencoder, out, distance_model=distance_model, fit_on=fit_on,
                                   device=pick_device(runtime.device), batch_size=runtime.batch_size,
                                   **config_flags)  # fmt: skip
    c = detector.config
    how = (
        f"fitted on {c.fit['on']} ({c.fit['n_real']} real, {c.fit['n_fake']} generated; AP of the distance "
        f"{c.fit['ap']:.3f})"
        if c.fit
        else "not fitted: AP/AUROC need no threshold; set one with sefmodel calibrate"
    )
    typer.echo(f"AEROBLADE detector ({', '.join(e['name'] for e in c.autoencoders)}; distance {c.distance}) written to "
               f"{out}; P(generated) = sigmoid({c.scale:.4g} * ({c.offset:.4g} - ln distance)), {how}")  # fmt: skip


@app.command()
@publish_options(repo="model", folder="RUN", card="model card", license="apache-2.0")
def publish(
    run: Path = typer.Argument(..., metavar="RUN", help="run folder (with detector/) or detector folder"),
    base_model: str | None = typer.Option(
        None,
        "--base-model",
        metavar="OWNER/NAME",
        help="Hub id of the backbone when it was loaded from a local folder (default: the folder's name, and the "
        "card says it was a local copy)",
    ),
    golden: str | None = typer.Option(
        None,
        "--golden",
        metavar="SOURCE",
        help=f"publish a golden set for `sefmodel check` from here: {GOLDEN_SOURCE_HELP} (default: the detector's "
        "own golden/, else the run's validation shards, else none)",
        show_default=False,
    ),
    golden_count: int = typer.Option(8, "--golden-count", metavar="N", help="images in the golden set, 1 to 64"),
    *,
    publish_flags: dict,
) -> None:
    """Upload a detector (trained tensors + config) with a model card to the Hugging Face Hub; metrics come from
    RUN/eval/results.json when the run was evaluated, and a golden set (a few images with the probabilities this
    detector gives them, scored again here) lets anyone run `sefmodel check USER/NAME`. Nothing is uploaded if a
    staged file names a local path. The token comes from `hf auth login` or HF_TOKEN."""
    from sefmodel.publish import publish as run_publish

    repo = publish_flags.pop("repo")
    with user_errors(hub=True):
        staged = run_publish(run, repo, base_model=base_model, golden=golden, golden_count=golden_count,
                             **publish_flags)  # fmt: skip
    for note in staged.notes:
        typer.echo(f"note: {note}", err=True)
    dry_run = publish_flags.get("dry_run", False)
    report_upload(staged.files, staged.folder, dry_run=dry_run, url=f"https://huggingface.co/{repo}")


def main() -> None:
    run_app(app)


if __name__ == "__main__":
    main()
