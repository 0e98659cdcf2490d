"""The text of the tables and figures the toolkit writes: one formatter for numbers that may be missing and one
Markdown table builder, shared by the evaluation report, the model cards and the commands that print figures.

A missing value (``None``: an undefined metric, see :mod:`sefmodel.evaluation.metrics`) reads ``n/a`` everywhere.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

NA = "n/a"
"""How a missing value reads in every table, card and printed summary."""

_LINE_BREAK = re.compile(r"\r\n|\r|\n")


def fmt(value: float | int | None, digits: int = 3) -> str:
    """``n/a`` for None, an int as it is (a count), any other number with ``digits`` decimals."""
    if value is None:
        return NA
    if isinstance(value, int):
        return str(value)
    return f"{value:.{digits}f}"


def md_cell(value: object) -> str:
    """``value`` as one GitHub-flavoured Markdown table cell: ``|`` escaped (it would end the cell, also inside a
    code span) and line breaks made spaces (a row is one line)."""
    return _LINE_BREAK.sub(" ", str(value)).replace("|", "\\|")


def md_table(header: Sequence[object], rows: Sequence[Sequence[object]]) -> str:
    """A Markdown table (no trailing newline); every cell, header included, goes through :func:`md_cell`."""
    lines = ["| " + " | ".join(md_cell(c) for c in header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(md_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
