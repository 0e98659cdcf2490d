"""Shared CLI plumbing: one readable line for every expected failure, never a traceback wall (DESIGN.md §9)."""

from __future__ import annotations

import contextlib
import errno
import sys
from collections.abc import Iterator

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


def run_app(app: typer.Typer) -> None:
    app(prog_name=sys.argv[0].rsplit("/", 1)[-1])
