"""Nothing private leaks: what a build publishes names files, never where they lie on the building machine.

Samples record sources relative to the source they came from (:mod:`sefdata.sources`); ``build.json`` and the shard
stats, which stay local, keep the config as given. What goes into ``manifest.json`` and the dataset card passes
through :func:`public_config` here, and ``publish`` refuses to upload any staged file in which :func:`local_paths`
still finds a local path (:mod:`sefdata.upload`).

A *local path* says where something lies on the building machine: an absolute path, a home directory (``~/x``,
``~alice/x``), a Windows drive path, or a path that climbs out of where it was given (``../../alice/photos``). Such
a path is published by its last component only (:func:`public_name`); plain relative paths (``photos/a.jpg``, the
way samples name their source) are not local paths.
"""

from __future__ import annotations

import json
import re
from pathlib import Path, PurePosixPath, PureWindowsPath

# in text: an absolute POSIX path with at least two components, a home directory (~/x, ~alice/x), a Windows drive
# path, or a parent-relative path (../x, ..\\x); "~5/10" and URLs ("https://host/a/b") are not paths
_LOCAL = re.compile(
    r"(?<![\w:/.~-])(?:/(?!/)[^\s/\"'`,;:]+/[^\s\"'`,;]+|~(?:[A-Za-z_][\w.-]*)?/[^\s\"'`,;]+"
    r"|[A-Za-z]:\\[^\s\"'`,;]+|(?:\.\.[/\\])+[^\s\"'`,;]*)"
)
_HOME = re.compile(r"~(?:[A-Za-z_][\w.-]*)?(?:[/\\]|$)")


def is_local_path(value: str) -> bool:
    """Whether ``value`` is a local path (module docstring): absolute, in a home directory or parent-relative; not
    a URL, a Hub id or a path below the current folder."""
    if "://" in value:
        return False
    parts = PurePosixPath(value.replace("\\", "/")).parts
    return (
        bool(_HOME.match(value))
        or PurePosixPath(value).is_absolute()
        or PureWindowsPath(value).drive != ""
        or parts[:1] == ("..",)
    )


def public_name(value: str) -> str:
    """``value`` with a local path reduced to its file or folder name (hashes identify the file)."""
    return PurePosixPath(value.replace("\\", "/")).name if is_local_path(value) else value


def public_spec(spec: str) -> str:
    """A ``NAME:key=value,...`` generator spec with every local path parameter reduced to its name."""
    name, sep, rest = spec.partition(":")
    params = []
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        params.append(f"{key}{eq}{public_name(value)}" if eq else item)
    return name + (sep + ",".join(params) if sep else "")


def public_config(config: dict) -> dict:
    """A build config as it may be published: sources and generator files named, not located."""
    out = dict(config)
    out["sources"] = [public_name(s) for s in config.get("sources", [])]
    out["gen"] = [public_spec(g) for g in config.get("gen", [])]
    return out


def public_params(params: dict) -> dict:
    """A generator's parameters with local paths reduced to names."""
    return {k: public_name(v) if isinstance(v, str) else v for k, v in params.items()}


def local_paths(text: str) -> list[str]:
    """The local paths in ``text`` (JSON, Markdown, YAML), at most a few, for an error message."""
    found = []
    for match in _LOCAL.finditer(text):
        candidate = match.group(0)
        if is_local_path(candidate) and candidate not in found:
            found.append(candidate)
    return found[:5]


def json_local_paths(obj: object) -> list[str]:
    """The local paths among the strings of a JSON value."""
    found: list[str] = []

    def walk(value: object) -> None:
        if isinstance(value, str):
            if is_local_path(value) and len(PurePosixPath(value).parts) > 1:
                found.append(value)
            else:  # a path inside a longer text
                found.extend(local_paths(value))
        elif isinstance(value, dict):
            for v in value.values():
                walk(v)
        elif isinstance(value, list):
            for v in value:
                walk(v)

    walk(obj)
    return found[:5]


def file_local_paths(path: Path) -> list[str]:
    """The local paths in a text file (JSON is walked value by value; other text is scanned)."""
    text = path.read_text(encoding="utf-8", errors="replace")
    if path.suffix == ".json":
        try:
            return json_local_paths(json.loads(text))
        except ValueError:
            pass
    return local_paths(text)


def public_text(text: str) -> str:
    """``text`` with every local path in it reduced to its file or folder name."""
    return _LOCAL.sub(lambda m: public_name(m.group(0)), text)


def public_json(value: object) -> object:
    """A JSON value with every local path among its strings reduced to its file or folder name."""
    if isinstance(value, str):
        return public_name(value) if is_local_path(value) else public_text(value)
    if isinstance(value, dict):
        return {k: public_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [public_json(v) for v in value]
    return value
