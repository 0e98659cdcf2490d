"""The imports of the code base, read from its source (issue #23): module-level and function-level imports alike, since
a late ``from .x import y`` inside a function hides a dependency without removing it.

* No import circles (imports under ``if TYPE_CHECKING:`` are annotations only and do not count).
* The model never imports what uses it.
* The layers: ``sefcore`` imports neither half, ``sefdata`` never imports ``sefmodel``, and the detectors
  (``sefmodel.model``) import nothing of serving, the command line or the front ends that use them (predict, explain,
  publish). Not yet a rule: a detector folder carries its threshold, golden set and card, so ``model/detector.py`` and
  ``model/folder.py`` import those records from ``evaluation`` and ``model_card``; and ``model/aeroblade.py`` holds,
  beside the detector, the commands that fit and build one (shards, benchmarks, metrics)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGES = {"sefcore": "sefcore", "sefdata": "sefdata", "sefmodel": "sefmodel", "cli": "sef_cli"}  # folder: name

# Known circles, each broken here at one late import, with the reason it is still there. Remove an entry when its
# import goes; the test fails when a listed import no longer exists, so the list cannot go stale.
ALLOWED: dict[tuple[str, str], str] = {}  # none left (2026-12-05)
# what the model must not import, even inside a function (STYLE.md: the model never imports what uses it)
MODEL = "sefmodel.model.detector"
USES_THE_MODEL = ("sefmodel.pipeline", "sefmodel.model.combine", "sefmodel.model.serialization", "sefmodel.predict")
FRONT_ENDS = ("sefmodel.serve", "sef_cli", "sefmodel.predict", "sefmodel.explain", "sefmodel.publish",
              "sefmodel.runtime", "sefmodel.aeroblade_build")  # fmt: skip


def _modules() -> dict[str, tuple[Path, bool]]:
    out = {}
    for folder, name in PACKAGES.items():
        for path in (REPO / folder).rglob("*.py"):
            parts = [name, *path.relative_to(REPO / folder).with_suffix("").parts]
            is_package = parts[-1] == "__init__"
            out[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return out


def _targets(module: str, is_package: bool, node: ast.Import | ast.ImportFrom) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if node.level:
        base = module.split(".") if is_package else module.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    return [target] + [f"{target}.{alias.name}" for alias in node.names]  # `from pkg import module` too


def import_graph(*, annotations: bool = False) -> dict[str, set[str]]:
    """module -> the toolkit's modules it imports anywhere in its body (under TYPE_CHECKING too with
    ``annotations``)."""
    modules = _modules()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for module, (path, is_package) in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        typing_only = (
            set()
            if annotations
            else {
                id(n)
                for block in ast.walk(tree)
                if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test)
                for n in ast.walk(block)
            }
        )
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)) and id(node) not in typing_only:
                for target in _targets(module, is_package, node):
                    while target and target not in modules:
                        target = target.rpartition(".")[0]
                    if target and target != module:
                        graph[module].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles_beyond_the_listed_ones():
    graph = import_graph()
    stale = [edge for edge in ALLOWED if edge[1] not in graph[edge[0]]]
    assert not stale, f"these listed imports are gone: remove them from ALLOWED: {stale}"
    for source, target in ALLOWED:
        graph[source].discard(target)
    found = cycles(graph)
    detail = [[f"{a} -> {b}" for a in c for b in sorted(graph[a]) if b in c] for c in found]
    assert not found, f"import circles: {detail}"


def test_the_model_imports_nothing_that_uses_it():
    assert not set(USES_THE_MODEL) & import_graph()[MODEL]


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [
        ("sefcore", ("sefdata", "sefmodel", "sef_cli")),
        ("sefdata", ("sefmodel", "sef_cli")),
        ("sefmodel.model", (*FRONT_ENDS, "sefmodel.train")),  # detectors read no shards: training code does
    ],
)
def test_a_lower_layer_imports_nothing_above_it(package, forbidden):
    within = lambda name, prefixes: any(name == p or name.startswith(p + ".") for p in prefixes)  # noqa: E731
    graph = import_graph(annotations=True)
    assert any(within(m, (package,)) for m in graph), f"no module of {package}"
    found = [f"{m} imports {t}" for m in sorted(graph) if within(m, (package,)) for t in sorted(graph[m])
             if within(t, forbidden)]  # fmt: skip
    assert found == []


def test_the_check_sees_a_circle_hidden_in_a_function():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
    tree = ast.parse("def f():\n    from ..pipeline import score\n")
    node = next(n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom))
    assert "sefmodel.pipeline" in _targets("sefmodel.model.detector", False, node)
