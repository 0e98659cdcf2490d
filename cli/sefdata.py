"""``sefdata``: build, inspect and preview aligned real/fake shard datasets."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import typer

from sefdata.config import BuildConfig, load_recipe
from sefdata.errors import SKIP_REASONS

from .common import report_upload, run_app, user_errors

app = typer.Typer(
    help="Turn real image corpora into aligned, artifact-diverse real/fake WebDataset shards.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

_DEFAULTS = {f.name: (f.default if f.default is not dataclasses.MISSING else f.default_factory()) for f in
             dataclasses.fields(BuildConfig)}  # fmt: skip


def _h(name: str) -> str:
    """Help text for a BuildConfig field, with the library's default (the CLI never restates defaults)."""
    default, text = _DEFAULTS[name], BuildConfig.help(name)
    if "default" in text:  # the help already says what happens by default
        return text
    shown = "none" if default is None else " ".join(default) if isinstance(default, list) else default
    return f"{text} (default: {shown})"


GEN_HELP = (
    "Generator, repeatable; one fake field each, named NAME unless as=FIELD renames it. "
    "vae:model=HUB_ID_OR_DIR[,subfolder=vae][,sample=true] | "
    "sr:weights=PATH_OR_URL_OR_HUB_FILE,scale=4[,tile=512] | "
    "ddim:model=HUB_ID_OR_DIR,steps=50,strength=1.0 | "
    "taesd:encoder=PATH,decoder=PATH (or weights=DIR_OR_HUB_ID). "
    "Any of them: NAME:preset=PRESET[,key=value] for a pinned preset from manifests/generators."
)


@app.command()
def build(
    sources: list[str] = typer.Argument(None, help=BuildConfig.help("sources"), show_default=False),
    out: Path = typer.Option(..., "--out", "-o", help=BuildConfig.help("out")),
    recipe: Path | None = typer.Option(
        None, "--recipe", help="TOML recipe with any of these options; flags override it"
    ),
    gen: list[str] = typer.Option(
        None, "--gen", help=GEN_HELP + f" (default: {' '.join(_DEFAULTS['gen'])})", show_default=False
    ),
    format: str | None = typer.Option(None, "--format", help=_h("format"), show_default=False),
    max_side: int | None = typer.Option(None, "--max-side", help=_h("max_side"), show_default=False),
    crop: int | None = typer.Option(None, "--crop", help=_h("crop"), show_default=False),
    min_side: int | None = typer.Option(None, "--min-side", help=_h("min_side"), show_default=False),
    max_pixels: int | None = typer.Option(None, "--max-pixels", help=_h("max_pixels"), show_default=False),
    shard_size: int | None = typer.Option(None, "--shard-size", help=_h("shard_size"), show_default=False),
    batch_size: int | None = typer.Option(None, "--batch-size", help=_h("batch_size"), show_default=False),
    workers: int | None = typer.Option(None, "--workers", help=_h("workers"), show_default=False),
    device: str | None = typer.Option(None, "--device", help=_h("device"), show_default=False),
    dtype: str | None = typer.Option(None, "--dtype", help=_h("dtype"), show_default=False),
    seed: int | None = typer.Option(None, "--seed", help=_h("seed"), show_default=False),
    rank: int | None = typer.Option(None, "--rank", help=_h("rank"), show_default=False),
    world: int | None = typer.Option(None, "--world", help=_h("world"), show_default=False),
    limit: int | None = typer.Option(None, "--limit", help=_h("limit"), show_default=False),
    image_field: str | None = typer.Option(None, "--image-field", help=_h("image_field"), show_default=False),
    split: str | None = typer.Option(None, "--split", help=_h("split"), show_default=False),
    allow_mixed: bool = typer.Option(False, "--allow-mixed", help=_h("allow_mixed"), show_default=False),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="show a progress bar"),
) -> None:
    """Build aligned real/fake shards from real images: SOURCE... can be folders, image files, path lists (.txt),
    WebDataset tars or patterns, or Hugging Face datasets. Re-running the same command resumes."""
    from sefdata.build import NothingWritten
    from sefdata.build import build as run_build

    with user_errors():
        values = load_recipe(recipe) if recipe else {}
        flags = {
            "sources": sources or None, "gen": gen or None, "format": format, "max_side": max_side, "crop": crop,
            "min_side": min_side, "max_pixels": max_pixels, "shard_size": shard_size, "batch_size": batch_size,
            "workers": workers,
            "device": device, "dtype": dtype, "seed": seed, "rank": rank, "world": world, "limit": limit,
            "image_field": image_field, "split": split, "allow_mixed": allow_mixed or None,
        }  # fmt: skip
        values.update({k: v for k, v in flags.items() if v is not None})
        config = BuildConfig(**values, out=str(out), recipe=str(recipe) if recipe else None)
        try:
            summary = run_build(config, progress=progress)
        except NothingWritten as e:
            _skip_table(e.failed)
            raise
    typer.echo(
        f"built {len(summary.built)} shard(s), {summary.already_done} already done, of {summary.num_shards} "
        f"in {summary.out}: {summary.written} samples from {summary.inputs} inputs "
        f"({summary.images_per_second:.2f} img/s)"
    )
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
    folder: Path = typer.Argument(..., help="build output folder holding shard-*.tar"),
    out: Path = typer.Option(Path("preview.png"), "--out", "-o", help="PNG file to write"),
    samples: int = typer.Option(4, "--samples", "-n", help="number of samples (rows)"),
    tile: int = typer.Option(256, "--tile", help="side of each tile, pixels (centre crops, never resized)"),
    gain: float = typer.Option(8.0, "--gain", help="residual amplification"),
) -> None:
    """Write a grid: real | each fake | amplified residual | log amplitude spectrum of the residual."""
    from sefdata.preview import make_preview

    with user_errors():
        path = make_preview(folder, out, samples=samples, tile=tile, gain=gain)
    typer.echo(f"preview: {path}")


@app.command()
def manifest(folder: Path = typer.Argument(..., help="build output folder")) -> None:
    """(Re)write manifest.json from the per-shard stats once every shard is done (e.g. after a multi-rank build)."""
    from sefdata.manifest import write_manifest

    with user_errors():
        m = write_manifest(folder)
    totals = m["sef"]["totals"]
    typer.echo(f"manifest: {folder / 'manifest.json'} ({len(m['shardlist'])} shards, {totals['written']} samples)")


@app.command()
def verify(folder: Path = typer.Argument(..., help="build output folder")) -> None:
    """Check every shard: fields present, sizes aligned, hashes and counts matching stats and manifest.
    Exits 1 if any problem is found, listing them per shard."""
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
def publish(
    folder: Path = typer.Argument(..., help="finished build folder (with manifest.json)"),
    repo: str = typer.Option(..., "--repo", help="Hub dataset repo USER/NAME (created if missing)"),
    private: bool = typer.Option(False, "--private", help="create the repo private"),
    revision: str | None = typer.Option(None, "--revision", help="branch to upload to (created if missing)"),
    license: str = typer.Option("unknown", "--license", help="licence id for the card (that of the real corpus)"),
    dry_run: bool = typer.Option(False, "--dry-run", help="only write the folder that would be uploaded, and list it"),
    staging: Path | None = typer.Option(None, "--staging", help="where to stage the upload (default: FOLDER/.publish)"),
) -> None:
    """Upload shards, manifest.json, a preview and a dataset card to the Hugging Face Hub. Re-running resumes an
    interrupted upload. The token comes from `hf auth login` or HF_TOKEN and is never printed."""
    from sefdata.publish import publish as run_publish

    with user_errors():
        staged = run_publish(
            folder, repo, private=private, revision=revision, license=license, staging=staging, dry_run=dry_run
        )
    for warning in staged.warnings:
        typer.echo(f"warning: {warning}", err=True)
    report_upload(staged.files, staged.folder, dry_run=dry_run, url=f"https://huggingface.co/datasets/{repo}")


def main() -> None:
    run_app(app)


if __name__ == "__main__":
    main()
