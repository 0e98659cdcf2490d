"""``sefmodel``: train, evaluate and use Separate Expert Fusion detectors."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import typer

from cli.common import run_app, user_errors
from sefdata.errors import SefError

app = typer.Typer(
    help="Train, evaluate and use Separate Expert Fusion detectors on sefdata shards.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def _root() -> None:
    """Separate Expert Fusion detectors."""


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


def _f(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


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
    if dry_run:
        typer.echo(f"dry run: {len(staged.files)} files staged in {staged.folder}")
        for name in staged.files:
            typer.echo(f"  {name}")
    else:
        typer.echo(f"published {len(staged.files)} files to https://huggingface.co/{repo}")


def main() -> None:
    run_app(app)


if __name__ == "__main__":
    main()
