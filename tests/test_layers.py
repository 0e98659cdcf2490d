"""The layers of the code base, checked on its source (every import, at module level or inside a function):
``sefcore`` imports neither half, ``sefdata`` never imports ``sefmodel``, and the detectors (``sefmodel.model``)
import nothing of serving, the command line or the front ends that use them (predict, explain, publish).

Not yet a rule: a detector folder carries its threshold, golden set and card, so ``model/detector.py`` and
``model/folder.py`` import those records from ``evaluation`` and ``model_card``; and ``model/aeroblade.py`` holds,
beside the detector, the commands that fit and build one (shards, benchmarks, metrics). The detector imports none of
the code that scores, combines or loads it (tests/test_import_cycles.py)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FRONT_ENDS = ("sefmodel.serve", "sef_cli", "sefmodel.predict", "sefmodel.explain", "sefmodel.publish",
              "sefmodel.runtime")  # fmt: skip


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, package: list[str] | None = None) -> set[str]:
    """Every module ``path`` imports, anywhere in it, as absolute dotted names (relative ones resolved in
    ``package``, by default the file's own)."""
    if package is None:
        package = _module_name(path).split(".")
        if path.name != "__init__.py":
            package = package[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)  # `from pkg import module`
    return found


def _modules(package: str) -> list[Path]:
    return sorted((REPO / package.replace(".", "/")).rglob("*.py"))


def _violations(package: str, forbidden: tuple[str, ...]) -> list[str]:
    return [f"{_module_name(p)} imports {name}" for p in _modules(package) for name in sorted(imports_of(p))
            if any(name == f or name.startswith(f + ".") for f in forbidden)]  # fmt: skip


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [
        ("sefcore", ("sefdata", "sefmodel", "sef_cli")),
        ("sefdata", ("sefmodel", "sef_cli")),
        ("sefmodel.model", FRONT_ENDS),
    ],
)
def test_a_lower_layer_imports_nothing_above_it(package, forbidden):
    assert _violations(package, forbidden) == []


def test_the_check_sees_imports_inside_functions_and_relative_ones(tmp_path):
    source = tmp_path / "probe.py"
    source.write_text("def f():\n    from sefmodel.evaluation import metrics\n    from .x import y\n")
    names = imports_of(source, package=["sefmodel", "model"])
    assert {"sefmodel.evaluation", "sefmodel.evaluation.metrics", "sefmodel.model.x"} <= names
