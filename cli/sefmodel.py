"""``sefmodel``: train, evaluate and use Separate Expert Fusion detectors."""

from __future__ import annotations

import typer

from cli.common import run_app

app = typer.Typer(
    help="Train, evaluate and use Separate Expert Fusion detectors on sefdata shards.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def _root() -> None:
    """Separate Expert Fusion detectors."""


def main() -> None:
    run_app(app)


if __name__ == "__main__":
    main()
