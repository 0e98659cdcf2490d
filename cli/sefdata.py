"""``sefdata``: build, inspect and preview aligned real/fake shard datasets."""

from __future__ import annotations

from pathlib import Path

import typer

from sefcore.errors import SKIP_REASONS
from sefdata.config import BuildConfig, load_recipe

from .common import App, command_line, report_upload, run_app, user_errors
from .options import config_options, field_help, publish_options

app = App(help="Turn real image corpora into aligned, artifact-diverse real/fake WebDataset shards.")

GEN_HELP = (
    "Generator, repeatable; one fake field each, named NAME unless as=FIELD renames it. "
    "vae:model=HUB_ID_OR_DIR[,subfolder=vae][,sample=true] | "
    "sr:weights=PATH_OR_URL_OR_HUB_FILE,scale=4[,tile=512] | "
    "ddim:model=HUB_ID_OR_DIR,steps=50,strength=1.0 | "
    "taesd:encoder=PATH,decoder=PATH (or weights=DIR_OR_HUB_ID) | "
    "identity[:wait_ms=MS] (no model: measures the pipeline). "
    "Any of them: NAME:preset=PRESET[,key=value] for a pinned preset from manifests/generators"
)


# Every BuildConfig field is an option here and a key in recipes: a new build option is one new field.
@app.command()
@config_options(
    BuildConfig,
    exclude=("sources", "out", "recipe"),
    overrides={"gen": {"help": GEN_HELP, "metavar": "NAME[:KEY=VALUE,...]"}, "format": {"metavar": "POLICY"},
               "device": {"metavar": "DEVICE"}, "dtype": {"metavar": "DTYPE"}},
)  # fmt: skip
def build(
    ctx: typer.Context,
    sources: list[str] = typer.Argument(None, metavar="SOURCE", help=field_help(BuildConfig, "sources")),
    out: Path = typer.Option(..., "--out", "-o", metavar="DIR", help=field_help(BuildConfig, "out")),
    recipe: Path | None = typer.Option(
        None, "--recipe", metavar="TOML", help="recipe with any of these options (keys as below, - or _); flags win"
    ),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="show a progress bar"),
    dry: bool = typer.Option(
        False,
        "--dry-run",
        help="list the sources and cut the shards, say what this rank would build, and stop "
        "(no model loaded, no image read, nothing written)",
    ),
    *,
    config_flags: dict,
) -> None:
    """Build aligned real/fake shards from real images: SOURCE... can be folders, image files, path lists (.txt,
    paths relative to the list's folder), WebDataset tars or patterns, or Hugging Face datasets. Re-running the
    same command resumes."""
    from sefdata.build import NothingWritten
    from sefdata.build import build as run_build

    with user_errors(hub=True):
        values = load_recipe(recipe) if recipe else {}
        values.update(config_flags)
        if sources:
            values["sources"] = sources
        config = BuildConfig(**values, out=str(out), recipe=str(recipe) if recipe else None)
        if dry:
            from sefdata.build import dry_run

            typer.echo(dry_run(config).describe())
            return
        try:
            summary = run_build(config, progress=progress, command=command_line(ctx, "sefdata"))
        except NothingWritten as e:
            _skip_table(e.failed)
            raise
    typer.echo(
        f"built {len(summary.built)} shard(s), {summary.already_done} already done, of {summary.num_shards} "
        f"in {summary.out}: {summary.written} samples from {summary.inputs} inputs "
        f"({summary.images_per_second:.2f} img/s)"
    )
    for note in summary.notes:
        typer.echo(f"note: {note}")
    if summary.failed:
        _skip_table(summary.failed)
        typer.echo("  (each skipped source and why: 'skipped' in the shard-*.stats.json files)")
    if summary.manifest:
        typer.echo(f"manifest: {summary.manifest}")
    else:
        typer.echo(
            f"manifest: not yet; rank 0 writes it once all {summary.num_shards} shards are done "
            f"(or run `sefdata manifest {summary.out}` after every rank has finished)"
        )


def _skip_table(failed) -> None:
    typer.echo(f"skipped {sum(failed.values())} input(s):")
    for reason, count in sorted(failed.items()):
        typer.echo(f"  {count:6d}  {reason}: {SKIP_REASONS[reason]}")


@app.command()
def preview(
    folder: Path = typer.Argument(..., metavar="FOLDER", help="build output folder holding shard-*.tar"),
    out: Path = typer.Option(Path("preview.png"), "--out", "-o", metavar="PNG", help="file to write"),
    samples: int = typer.Option(4, "--samples", "-n", metavar="N", help="number of samples (rows)"),
    tile: int = typer.Option(
        256, "--tile", metavar="PIXELS", help="side of each tile, pixels (centre crops, never resized)"
    ),
    gain: float = typer.Option(8.0, "--gain", metavar="X", help="residual amplification"),
) -> None:
    """Write a grid: real | each fake | amplified residual | log amplitude spectrum of the residual."""
    from sefdata.preview import make_preview

    with user_errors():
        path = make_preview(folder, out, samples=samples, tile=tile, gain=gain)
    typer.echo(f"preview: {path}")


@app.command()
def manifest(folder: Path = typer.Argument(..., metavar="FOLDER", help="build output folder")) -> None:
    """(Re)write manifest.json from the per-shard stats once every shard is done (e.g. after a multi-rank build)."""
    from sefdata.manifest import write_manifest

    with user_errors():
        m = write_manifest(folder)
    totals = m["sef"]["totals"]
    typer.echo(f"manifest: {folder / 'manifest.json'} ({len(m['shardlist'])} shards, {totals['written']} samples)")


@app.command()
def verify(folder: Path = typer.Argument(..., metavar="FOLDER", help="build output folder")) -> None:
    """Check every shard: fields present, sizes aligned, hashes and counts matching stats and manifest, no
    input in two shards. Exits 1 if any problem is found, listing them per shard."""
    from sefdata.verify import verify as run_verify

    with user_errors():
        report = run_verify(folder)
    for name, problems in sorted(report.problems.items()):
        typer.echo(f"{name}:")
        for problem in problems[:20]:
            typer.echo(f"  - {problem}")
        if len(problems) > 20:
            typer.echo(f"  ... and {len(problems) - 20} more")
    verdict = "ok" if report.ok else f"FAILED ({sum(map(len, report.problems.values()))} problems)"
    typer.echo(f"{verdict}: {report.shards} shards, {report.samples} samples checked in {folder}")
    if not report.ok:
        raise typer.Exit(1)


@app.command()
@publish_options(repo="dataset", folder="FOLDER", card="card (that of the real corpus)", license="unknown")
def publish(
    folder: Path = typer.Argument(..., metavar="FOLDER", help="finished build folder (with manifest.json)"),
    *,
    publish_flags: dict,
) -> None:
    """Upload shards, manifest.json, a preview and a dataset card to the Hugging Face Hub. Re-running resumes an
    interrupted upload. The token comes from `hf auth login` or HF_TOKEN and is never printed."""
    from sefdata.publish import publish as run_publish

    repo = publish_flags.pop("repo")
    with user_errors(hub=True, fetching=f"the dataset repo {repo}", offline_hint="stage only with --dry-run"):
        staged = run_publish(folder, repo, **publish_flags)
    for warning in staged.warnings:
        typer.echo(f"warning: {warning}", err=True)
    dry_run = publish_flags.get("dry_run", False)
    report_upload(staged.files, staged.folder, dry_run=dry_run, url=f"https://huggingface.co/datasets/{repo}")


def main() -> None:
    run_app(app)


if __name__ == "__main__":
    main()
