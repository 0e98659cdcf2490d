"""``sefmodel``: train, evaluate and use Separate Expert Fusion detectors."""

from __future__ import annotations

import csv
import dataclasses
import json
import sys
from pathlib import Path

import typer

from sefdata.errors import SefError

from .common import report_upload, run_app, user_errors

app = typer.Typer(
    help="Train, evaluate and use Separate Expert Fusion detectors on sefdata shards.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def _root() -> None:
    """Separate Expert Fusion detectors."""


def _train_help(name: str) -> str:
    """Help text for a TrainConfig field with the library's default (the CLI never restates defaults)."""
    from sefmodel.train.config import TrainConfig

    f = next(f for f in dataclasses.fields(TrainConfig) if f.name == name)
    default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
    text = f.metadata["help"]
    if "default" in text:
        return text
    if isinstance(default, bool) or default in ("", [], {}):
        return text
    shown = "none" if default is None else " ".join(map(str, default)) if isinstance(default, list) else default
    return f"{text} (default: {shown})"


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


@app.command(context_settings={"help_option_names": ["-h", "--help"]})
def train(
    more_experts: list[str] = typer.Argument(
        None, metavar="[RUN...]", help="more expert runs after --experts (--experts RUN_A RUN_B)", show_default=False
    ),
    data: list[str] = typer.Option(None, "--data", help=_train_help("data") + "; repeatable", show_default=False),
    out: Path = typer.Option(..., "--out", "-o", help=_train_help("out")),
    config_file: Path | None = typer.Option(
        None,
        "--config",
        help="TOML file with any TrainConfig fields (and tables augment, detector, domains); flags override it",
        show_default=False,
    ),
    stage: str | None = typer.Option(None, "--stage", help=_train_help("stage"), show_default=False),
    domain: str | None = typer.Option(None, "--domain", help=_train_help("domain"), show_default=False),
    domain_fields: list[str] = typer.Option(
        None,
        "--domain-fields",
        help="NAME=FIELD[,FIELD...]: the shard fields of a domain, repeatable (default: recon=vae,ddim,taesd sr=sr)",
        show_default=False,
    ),
    experts: list[str] = typer.Option(None, "--experts", help=_train_help("experts"), show_default=False),
    fusion: str | None = typer.Option(None, "--fusion", help=_train_help("fusion"), show_default=False),
    val_data: list[str] = typer.Option(None, "--val-data", help=_train_help("val_data"), show_default=False),
    backbone: str | None = typer.Option(
        None,
        "--backbone",
        help="backbone family: dinov2, dinov2_registers, clip, mobilenet_v2, resnet, convnext (default: dinov2)",
        show_default=False,
    ),
    backbone_id: str | None = typer.Option(
        None, "--backbone-id", help="Hub id or local folder of the backbone (default: the family's)", show_default=False
    ),
    image_size: int | None = typer.Option(
        None,
        "--image-size",
        help="training crop side (default: the backbone's, 336 DINOv2 / 224 CLIP and the CNNs)",
        show_default=False,
    ),
    feature_layer: int | None = typer.Option(
        None,
        "--feature-layer",
        help="block (ViT) or stage (CNN) whose output is the feature, 0-based, negative from the last (default: -1)",
        show_default=False,
    ),
    feature_pool: str | None = typer.Option(
        None,
        "--feature-pool",
        help="CNN feature pooling: mean or mean_std (default: mean; ViTs use the CLS token)",
        show_default=False,
    ),
    lora_rank: int | None = typer.Option(None, "--lora-rank", help="LoRA rank (default: 8)", show_default=False),
    lora_blocks: str | None = typer.Option(
        None,
        "--lora-blocks",
        help='blocks with LoRA, counted back from the feature block: "all" or "last:K" (default: all)',
        show_default=False,
    ),
    gate_hidden: int | None = typer.Option(
        None, "--gate-hidden", help="SEF gate hidden width (default: 256)", show_default=False
    ),
    steps: int | None = typer.Option(None, "--steps", help=_train_help("steps"), show_default=False),
    batch_size: int | None = typer.Option(None, "--batch-size", help=_train_help("batch_size"), show_default=False),
    micro_batch_size: int | None = typer.Option(
        None, "--micro-batch-size", help=_train_help("micro_batch_size"), show_default=False
    ),
    lr: float | None = typer.Option(None, "--lr", help=_train_help("lr"), show_default=False),
    weight_decay: float | None = typer.Option(
        None, "--weight-decay", help=_train_help("weight_decay"), show_default=False
    ),
    warmup: float | None = typer.Option(None, "--warmup", help=_train_help("warmup"), show_default=False),
    grad_clip: float | None = typer.Option(None, "--grad-clip", help=_train_help("grad_clip"), show_default=False),
    mixed_precision: str | None = typer.Option(
        None, "--mixed-precision", help=_train_help("mixed_precision"), show_default=False
    ),
    cpu: bool | None = typer.Option(None, "--cpu", help=_train_help("cpu"), show_default=False),
    seed: int | None = typer.Option(None, "--seed", help=_train_help("seed"), show_default=False),
    num_workers: int | None = typer.Option(None, "--num-workers", help=_train_help("num_workers"), show_default=False),
    shuffle_buffer: int | None = typer.Option(
        None, "--shuffle-buffer", help=_train_help("shuffle_buffer"), show_default=False
    ),
    aug: list[str] = typer.Option(
        None,
        "--aug",
        help="KEY=VALUE augmentation setting, repeatable, e.g. jpeg_p=0.2 (see docs/training.md)",
        show_default=False,
    ),
    val_every: int | None = typer.Option(None, "--val-every", help=_train_help("val_every"), show_default=False),
    val_max_samples: int | None = typer.Option(
        None, "--val-max-samples", help=_train_help("val_max_samples"), show_default=False
    ),
    save_every: int | None = typer.Option(None, "--save-every", help=_train_help("save_every"), show_default=False),
    log_every: int | None = typer.Option(None, "--log-every", help=_train_help("log_every"), show_default=False),
    tensorboard: bool | None = typer.Option(None, "--tensorboard", help=_train_help("tensorboard"), show_default=False),
    record_keys: bool | None = typer.Option(None, "--record-keys", help=_train_help("record_keys"), hidden=True),
    resume: bool = typer.Option(False, "--resume", help="continue the run in --out from its last checkpoint"),
    stop_after: int | None = typer.Option(
        None, "--stop-after", help="stop after N steps as if interrupted (resumable)", show_default=False
    ),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="show a progress bar"),
) -> None:
    """Train one stage of a SEF detector on sefdata shards, into a run folder.

    \b
      sefmodel train --data shards/train --stage expert --domain recon --out runs/recon
      sefmodel train --data shards/train --stage expert --domain sr --out runs/sr
      sefmodel train --data shards/train --stage fusion --experts runs/recon runs/sr --out runs/sef
      sefmodel train --data shards/train --stage mixed --out runs/mixed

    Several GPUs or nodes: launch the same command with torchrun or accelerate (see docs/training.md).
    """
    from sefmodel.data import DEFAULT_DOMAINS
    from sefmodel.train import TrainConfig, load_toml
    from sefmodel.train import train as run_train

    try:
        values: dict = {}
        if resume and not config_file and not data:
            values = TrainConfig.load(out).to_dict()  # the saved settings; flags below may repeat them
        if config_file:
            values.update(load_toml(config_file))
        all_experts = [*(experts or []), *(more_experts or [])]
        if more_experts and not experts:
            raise ValueError(f"unexpected argument(s) {' '.join(more_experts)}; expert runs follow --experts")
        detector = dict(values.get("detector", {}))
        lora = dict(detector.get("lora", {}))
        if lora_rank is not None:
            lora["rank"] = lora_rank
        if lora_blocks is not None:
            lora["blocks"] = lora_blocks
        if lora:
            detector["lora"] = lora
        for key, value in (("backbone", backbone), ("backbone_id", backbone_id), ("image_size", image_size),
                           ("gate_hidden", gate_hidden), ("feature_layer", feature_layer),
                           ("feature_pool", feature_pool)):  # fmt: skip
            if value is not None:
                detector[key] = value
        if detector:
            values["detector"] = detector
        if domain_fields:
            domains = dict(values.get("domains", {})) or None
            parsed = {k: [f.strip() for f in v.split(",") if f.strip()] for k, v in
                      _key_values(domain_fields, "--domain-fields").items()}  # fmt: skip
            values["domains"] = {**(domains or DEFAULT_DOMAINS), **parsed}
        if aug:
            values["augment"] = {
                **values.get("augment", {}),
                **{k: _number(v) for k, v in _key_values(aug, "--aug").items()},
            }
        flags = {
            "data": data or None, "stage": stage, "domain": domain, "experts": all_experts or None, "fusion": fusion,
            "val_data": val_data or None, "steps": steps, "batch_size": batch_size,
            "micro_batch_size": micro_batch_size, "lr": lr, "weight_decay": weight_decay, "warmup": warmup,
            "grad_clip": grad_clip, "mixed_precision": mixed_precision, "cpu": cpu, "seed": seed,
            "num_workers": num_workers, "shuffle_buffer": shuffle_buffer, "val_every": val_every,
            "val_max_samples": val_max_samples, "save_every": save_every, "log_every": log_every,
            "tensorboard": tensorboard, "record_keys": record_keys,
        }  # fmt: skip
        values.update({k: v for k, v in flags.items() if v is not None})
        values["out"] = str(out)
        config = TrainConfig(**values)
        result = run_train(config, resume=resume, stop_after=stop_after, progress=progress)
    except (ValueError, FileNotFoundError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        typer.echo(f"interrupted: the last finished step is saved; continue with: sefmodel train --resume --out {out}",
                   err=True)  # fmt: skip
        raise typer.Exit(130) from None
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


# ---- eval / predict / explain ---------------------------------------------------------------------------------

PREDICT_EXIT = (
    "Exit status: 0 every input was scored; 1 some inputs could not be read or scored (each has an error record "
    "and the others were written); 2 usage error (bad option, RUN not loadable, no input found)."
)


@app.command("eval", no_args_is_help=True)
def eval_(
    run: str = typer.Argument(..., help="detector folder, trainer run folder (uses RUN/detector/) or Hub id"),
    bench: list[str] = typer.Option(
        ...,
        "--bench",
        "-b",
        help="repeatable: NAME=PATH (a definition in manifests/benchmarks, or a .toml file, read by its layout), "
        "PATH (plain real/ + fake/ or 0_real/ + 1_fake/ folder, optionally under subset folders) or "
        "hf:OWNER/NAME[:split=test,image=COL,label=COL,subset=COL] (a Hugging Face dataset)",
        show_default=False,
    ),
    perturb: list[str] = typer.Option(
        None,
        "--perturb",
        "-p",
        help="robustness sweep, repeatable or comma-separated NAME:VALUE items: jpeg:Q, webp:Q, resize:F, blur:S, "
        "noise:S, social:MAXSIDE (resize + JPEG 75); 'default' = the standard sweep. One curve per NAME",
        show_default=False,
    ),
    calibrate: str | None = typer.Option(
        None,
        "--calibrate",
        help="held-out set (same syntax as --bench) that fits one threshold for acc@cal (max balanced accuracy); "
        "default: each benchmark fits its own on a hashed --calib-fraction of its images",
        show_default=False,
    ),
    calib_fraction: float = typer.Option(
        0.2,
        "--calib-fraction",
        help="share of each benchmark held out to fit its "
        "acc@cal threshold when --calibrate is not given; 0 turns acc@cal off",
    ),
    fake_jpeg: str = typer.Option(
        "none",
        "--fake-jpeg",
        help="format-bias protocol: JPEG-compress generated images at this quality before scoring; 'auto' uses "
        "each benchmark definition's recommended quality (e.g. 96 for GenImage)",
    ),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="output folder (default: RUN/eval for a local RUN)", show_default=False
    ),
    batch_size: int = typer.Option(16, "--batch-size", help="images per forward pass"),
    crop: str | None = typer.Option(
        None, "--crop", help="center or multi (default: the detector's config)", show_default=False
    ),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda[:i]"),
    plots: bool = typer.Option(True, "--plots/--no-plots", help="write PNG plots"),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="show progress bars"),
) -> None:
    """Evaluate a detector on benchmarks: accuracy at 0.5, real/fake accuracy, AP, AUROC and calibrated accuracy
    per benchmark and subset, mean and worst case, robustness curves. Writes results.json, results.md,
    results.csv, scores.csv and plots/*.png."""
    from sefmodel.evaluate import EvalConfig, evaluate
    from sefmodel.predict import load_detector

    with user_errors():
        config = EvalConfig(
            benches=bench, perturb=perturb or [], calibrate=calibrate, calib_fraction=calib_fraction,
            fake_jpeg=fake_jpeg, batch_size=batch_size, crop=crop, plots=plots,
        )  # fmt: skip
        if out is None:
            if not Path(run).is_dir():
                raise SefError("RUN is not a local folder: say where the results go with --out")
            out = Path(run) / "eval"
        detector = load_detector(run, device)
        results = evaluate(detector, config, out, detector_source=str(run), progress=progress,
                           log=lambda m: typer.echo(m, err=True))  # fmt: skip
    mean = results["summary"]["mean"]
    typer.echo(
        f"{results['summary']['benchmarks']} benchmark(s): mean acc@0.5 {_f(mean['accuracy'])}, AP {_f(mean['ap'])}, "
        f"AUROC {_f(mean['auroc'])}; worst acc@0.5 {_f(results['summary']['worst']['accuracy'])}"
    )
    typer.echo(f"report: {out / 'results.md'}  (results.json, results.csv, scores.csv, plots/)")


def _f(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


@app.command(no_args_is_help=True, epilog=PREDICT_EXIT)
def predict(
    run: str = typer.Argument(..., help="detector folder, trainer run folder (uses RUN/detector/) or Hub id"),
    inputs: list[str] = typer.Argument(
        ..., help="image files and folders (searched recursively for images)", show_default=False
    ),
    format: str = typer.Option("jsonl", "--format", "-f", help="jsonl (one JSON object per line) or csv"),
    out: Path | None = typer.Option(None, "--out", "-o", help="write here instead of stdout", show_default=False),
    batch_size: int = typer.Option(16, "--batch-size", help="images per forward pass"),
    threshold: float = typer.Option(0.5, "--threshold", help="label is 'generated' when prob > threshold"),
    crop: str | None = typer.Option(
        None, "--crop", help="center or multi (default: the detector's config)", show_default=False
    ),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda[:i]"),
) -> None:
    """Score images of any size and format. One record per input: path, prob (P(generated)), label, num_crops and,
    for SEF detectors, the gate weights; an unreadable file gets a record with an error instead."""
    from sefmodel.predict import csv_header, csv_row, expand_inputs, load_detector, predict_files

    with user_errors():
        if format not in ("jsonl", "csv"):
            raise SefError(f"--format must be jsonl or csv, got {format!r}")
        if crop not in (None, "center", "multi"):
            raise SefError(f"--crop must be center or multi, got {crop!r}")
        if batch_size < 1:
            raise SefError(f"--batch-size must be >= 1, got {batch_size}")
        paths = expand_inputs(inputs)
        if not paths:
            raise SefError(f"no image files found in {', '.join(inputs)}")
        detector = load_detector(run, device)
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
            for record in predict_files(detector, paths, batch_size, crop, threshold):
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
def explain(
    run: str = typer.Argument(..., help="detector folder, trainer run folder (uses RUN/detector/) or Hub id"),
    image: Path = typer.Argument(..., help="image file to explain"),
    out: Path = typer.Option(Path("cam.png"), "--out", "-o", help="PNG figure to write"),
    layer: int | None = typer.Option(
        None, "--layer", help="block whose input tokens are explained (default: the feature block)", show_default=False
    ),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda[:i]"),
) -> None:
    """Grad-CAM heatmap of each expert (and of the fused score) on the crop the detector scores, side by side with
    the gate weights: where each expert looks for artifacts."""
    from PIL import UnidentifiedImageError

    from sefmodel.explain import explain_file
    from sefmodel.predict import describe_error, load_detector

    with user_errors():
        detector = load_detector(run, device)
        try:
            ex = explain_file(detector, image, out, layer)
        except (OSError, UnidentifiedImageError, SyntaxError) as e:
            if isinstance(e, OSError) and e.filename == str(out):
                raise SefError(f"cannot write {out}: {e.strerror or e}") from None
            raise SefError(f"{image}: {describe_error(e)}") from None
        except ValueError as e:
            raise SefError(str(e)) from None
    gates = (
        ", gate " + ", ".join(f"{n} {w:.2f}" for n, w in ex.gate_weights.items()) if ex.gate_weights else ""
    )  # fmt: skip
    typer.echo(f"P(generated) {ex.prob:.3f}{gates}; figure: {out}")


@app.command()
def publish(
    run: Path = typer.Argument(..., help="run folder (with detector/) or detector folder"),
    repo: str = typer.Option(..., "--repo", help="Hub model repo USER/NAME (created if missing)"),
    private: bool = typer.Option(False, "--private", help="create the repo private"),
    revision: str | None = typer.Option(None, "--revision", help="branch to upload to (created if missing)"),
    license: str = typer.Option("apache-2.0", "--license", help="licence id for the model card"),
    dry_run: bool = typer.Option(False, "--dry-run", help="only write the folder that would be uploaded, and list it"),
    staging: Path | None = typer.Option(None, "--staging", help="where to stage the upload (default: RUN/.publish)"),
) -> None:
    """Upload a detector (trained tensors + config) with a model card to the Hugging Face Hub; metrics come from
    RUN/eval/results.json when the run was evaluated. The token comes from `hf auth login` or HF_TOKEN."""
    from sefmodel.publish import publish as run_publish

    with user_errors():
        staged = run_publish(
            run, repo, private=private, revision=revision, license=license, staging=staging, dry_run=dry_run
        )
    report_upload(staged.files, staged.folder, dry_run=dry_run, url=f"https://huggingface.co/{repo}")


def main() -> None:
    run_app(app)


if __name__ == "__main__":
    main()
