"""Reading a TOML file of settings (a build recipe, generator presets, a training config, a benchmark definition):
every failure is one :class:`~sefcore.errors.SefError` line that names the file and what it was read as."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

from sefcore.errors import SefError


def read_toml(path: str | os.PathLike, what: str, *, section: str | None = None) -> dict[str, Any]:
    """The tables of the TOML file ``path`` (read as ``what``, e.g. "recipe"); with ``section``, the keys of that
    table are merged into the top level (``[build]`` in a recipe may hold what the top level may)."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SefError(f"{what} {str(path)!r} not found") from None
    except OSError as e:
        raise SefError(f"cannot read {what} {str(path)!r}: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise SefError(f"{what} {str(path)!r} is not UTF-8 text: {e.reason}") from None
    except tomllib.TOMLDecodeError as e:
        raise SefError(f"{what} {str(path)!r} is not valid TOML: {e}") from None
    if section is not None:
        data = {**{k: v for k, v in data.items() if k != section}, **data.get(section, {})}
    return data


__all__ = ["read_toml"]
