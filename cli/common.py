"""Shared CLI plumbing: one readable line for every expected failure, never a traceback wall (DESIGN.md §9)."""

from __future__ import annotations

import contextlib
import errno
import sys
from collections.abc import Iterator
from pathlib import Path

import typer

from sefdata.errors import SefError


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn expected failures into ``error: ...`` on stderr and a non-zero exit."""
    try:
        yield
    except SefError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        typer.echo("interrupted: nothing finished is lost; run the same command again to resume", err=True)
        raise typer.Exit(130) from None
    except OSError as e:
        if e.errno == errno.ENOSPC:
            typer.echo(
                f"error: disk full writing {e.filename or 'output'}; free space and re-run to resume",
                err=True,
            )
            raise typer.Exit(1) from None
        raise


def report_upload(files: list[str], folder: Path, *, dry_run: bool, url: str) -> None:
    """What `publish` did: the staged file list on a dry run, else where the files went."""
    if dry_run:
        typer.echo(f"dry run: {len(files)} files staged in {folder}")
        for name in files:
            typer.echo(f"  {name}")
    else:
        typer.echo(f"published {len(files)} files to {url}")


def run_app(app: typer.Typer) -> None:
    app(prog_name=sys.argv[0].rsplit("/", 1)[-1])
