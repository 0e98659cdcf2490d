"""Benchmark definitions (``manifests/benchmarks/*.toml``) and the readers that turn a downloaded copy, a plain
``real/`` + ``fake/`` folder or a Hugging Face dataset into labelled images.

A definition says where a public benchmark is published, its licence, its pitfalls, a recommended protocol and,
above all, its **layout**: ordered rules that map a file's path (relative to the benchmark root, ``/``-separated)
to a label and a subset. The first rule that matches wins. Pattern syntax:

* ``*`` any characters inside one path segment, ``?`` one character;
* ``**`` any number of whole segments (including none);
* ``{name}`` one whole segment, captured; ``{name:**}`` any number of segments, captured (``/``-joined).

A rule's ``subset`` is a template over the captures (default ``"{subset}"`` when the pattern captures
``subset``, else ``"all"``). Reals shared by several subsets (e.g. Synthbuster's RAISE photos serve every
generator) say so with ``serves = "*"`` or a list of subset names; per-subset metrics then pair each subset's
fakes with those reals. Entries of ``serves`` are patterns over subset names (``*`` wildcards) and may use the
captures, e.g. ``serves = ["{source}/*"]``. A rule with ``label = "ignore"`` leaves matching files out on purpose
(a training split beside the test split); they are counted. Image files that no rule matches are counted and
reported, never silently dropped.

Each definition also carries ``[[checks]]``: example paths with the label and subset they must resolve to. They
document the layout and the tests build a fixture folder from them for every definition.
"""

from __future__ import annotations

import fnmatch
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from sefcore.errors import SefError
from sefcore.imagefiles import image_files
from sefcore.tomlfile import read_toml
from sefdata.presets import MANIFESTS
from sefmodel.images import open_image_file

BENCHMARKS_DIR = MANIFESTS / "benchmarks"
LABELS = {"real": 0, "fake": 1}
IGNORE = "ignore"
"""A rule label for files a layout deliberately leaves out (e.g. a training split next to the test split)."""
ALL = "all"
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
_CAPTURE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)(:\*\*)?\}")

# key -> (type(s), required, help): the schema every definition is validated against.
_TOP_KEYS: dict[str, tuple[tuple[type, ...], bool]] = {
    "name": ((str,), True),
    "title": ((str,), True),
    "paper": ((str,), True),
    "url": ((str,), True),
    "download": ((str,), False),
    "licence": ((str,), True),
    "description": ((str,), False),
    "layout": ((str,), True),
    "pitfalls": ((list,), True),
    "verified": ((str,), False),
    "protocol": ((dict,), False),
    "rules": ((list,), True),
    "checks": ((list,), True),
}
_PROTOCOL_KEYS: dict[str, tuple[tuple[type, ...], bool]] = {
    "fake_jpeg_quality": ((int,), False),
    "split": ((str,), False),
    "notes": ((str,), False),
}
_RULE_KEYS: dict[str, tuple[tuple[type, ...], bool]] = {
    "pattern": ((str,), True),
    "label": ((str,), True),
    "subset": ((str,), False),
    "serves": ((str, list), False),
}
_CHECK_KEYS: dict[str, tuple[tuple[type, ...], bool]] = {
    "path": ((str,), True),
    "label": ((str,), True),
    "subset": ((str,), True),
}


@dataclass(frozen=True)
class Rule:
    """One layout rule: files whose relative path matches ``pattern`` get ``label`` and a subset."""

    pattern: str
    label: str
    subset: str | None = None
    serves: tuple[str, ...] | None = None
    regex: re.Pattern = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "regex", compile_pattern(self.pattern))

    def match(self, relpath: str) -> tuple[str, tuple[str, ...] | None] | None:
        """``(subset, serves)`` when ``relpath`` matches, else None."""
        found = self.regex.match(relpath)
        if found is None:
            return None
        captures = {k: (v or "") for k, v in found.groupdict().items()}
        template = self.subset if self.subset is not None else ("{subset}" if "subset" in captures else ALL)
        subset = template.format(**captures).strip("/") or ALL
        serves = None if self.serves is None else tuple(s.format(**captures) for s in self.serves)
        return subset, serves


def compile_pattern(pattern: str) -> re.Pattern:
    """Compile a layout pattern (module docstring) to an anchored regex with named groups."""
    parts = pattern.strip("/").split("/")
    if not pattern.strip("/") or any(not p for p in parts):
        raise ValueError(f"bad pattern {pattern!r}: empty path segment")
    rx, names = "", set()
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        deep = _CAPTURE.fullmatch(part)
        if part == "**" or (deep and deep.group(2)):
            group = ""
            if deep:
                name = deep.group(1)
                if name in names:
                    raise ValueError(f"bad pattern {pattern!r}: capture {name!r} used twice")
                names.add(name)
                group = f"?P<{name}>"
            rx += f"({group}.*)" if last else f"(?:({group}.+?)/)?"
            continue
        if "**" in part:
            raise ValueError(f"bad pattern {pattern!r}: '**' must be a whole path segment")
        pos, seg = 0, ""
        for m in re.finditer(r"\{[^}]*\}|\*|\?", part):
            seg += re.escape(part[pos : m.start()])
            token = m.group(0)
            if token == "*":
                seg += "[^/]*"
            elif token == "?":
                seg += "[^/]"
            else:
                cap = _CAPTURE.fullmatch(token)
                if cap is None or cap.group(2):
                    raise ValueError(f"bad pattern {pattern!r}: {token!r} is not {{name}} (or a whole {{name:**}})")
                if cap.group(1) in names:
                    raise ValueError(f"bad pattern {pattern!r}: capture {cap.group(1)!r} used twice")
                names.add(cap.group(1))
                seg += f"(?P<{cap.group(1)}>[^/]+)"
            pos = m.end()
        seg += re.escape(part[pos:])
        rx += seg if last else seg + "/"
    return re.compile(rx + r"\Z")


@dataclass
class BenchmarkDefinition:
    """A public benchmark: provenance, licence, pitfalls, protocol and layout (see module docstring)."""

    name: str
    title: str
    paper: str
    url: str
    licence: str
    layout: str
    pitfalls: list[str]
    rules: list[Rule]
    checks: list[dict[str, str]]
    download: str = ""
    description: str = ""
    verified: str = ""
    protocol: dict[str, Any] = field(default_factory=dict)
    source: str = ""

    @property
    def fake_jpeg_quality(self) -> int | None:
        return self.protocol.get("fake_jpeg_quality")

    def classify(self, relpath: str) -> tuple[int | str, str, tuple[str, ...] | None] | None:
        """``(label, subset, serves)`` of a relative path (label 0, 1 or ``"ignore"``), or None when no rule
        matches."""
        for rule in self.rules:
            found = rule.match(relpath)
            if found is not None:
                return LABELS.get(rule.label, IGNORE), found[0], found[1]
        return None


def _check_keys(table: dict, schema: dict, where: str) -> None:
    unknown = sorted(set(table) - set(schema))
    if unknown:
        raise SefError(f"{where}: unknown key {unknown[0]!r}; known: {', '.join(schema)}")
    for key, (types, required) in schema.items():
        if key not in table:
            if required:
                raise SefError(f"{where}: missing required key {key!r}")
            continue
        value = table[key]
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            names = " or ".join(t.__name__ for t in types)
            raise SefError(f"{where}: key {key!r} must be {names}, got {type(value).__name__} {value!r}")


def parse_definition(data: dict[str, Any], source: str = "<dict>") -> BenchmarkDefinition:
    """Validate a definition's TOML table; every problem raises :class:`SefError` naming the key."""
    _check_keys(data, _TOP_KEYS, source)
    if not _NAME.match(data["name"]):
        raise SefError(f"{source}: key 'name' must be lower-case letters, digits, '.', '_', '-': {data['name']!r}")
    if not all(isinstance(p, str) for p in data["pitfalls"]):
        raise SefError(f"{source}: key 'pitfalls' must be a list of strings")
    protocol = data.get("protocol", {})
    _check_keys(protocol, _PROTOCOL_KEYS, f"{source} [protocol]")
    quality = protocol.get("fake_jpeg_quality")
    if quality is not None and not 1 <= quality <= 100:
        raise SefError(f"{source} [protocol]: key 'fake_jpeg_quality' must be in 1..100, got {quality}")
    rules = []
    if not data["rules"]:
        raise SefError(f"{source}: key 'rules' must hold at least one rule")
    for i, table in enumerate(data["rules"]):
        where = f"{source} rules[{i}]"
        if not isinstance(table, dict):
            raise SefError(f"{where}: must be a table ([[rules]])")
        _check_keys(table, _RULE_KEYS, where)
        if table["label"] not in (*LABELS, IGNORE):
            raise SefError(f"{where}: key 'label' must be 'real', 'fake' or 'ignore', got {table['label']!r}")
        serves = table.get("serves")
        if serves is not None:
            if table["label"] != "real":
                raise SefError(f"{where}: key 'serves' is for real images only")
            if isinstance(serves, str):
                if serves != "*":
                    raise SefError(f"{where}: key 'serves' must be '*' or a list of subset names, got {serves!r}")
                serves = ("*",)
            elif not serves or not all(isinstance(s, str) for s in serves):
                raise SefError(f"{where}: key 'serves' must be '*' or a non-empty list of subset names")
            serves = tuple(serves)
        try:
            rule = Rule(table["pattern"], table["label"], table.get("subset"), serves)
        except ValueError as e:
            raise SefError(f"{where}: key 'pattern': {e}") from None
        groups = set(rule.regex.groupindex)
        templates = (table.get("subset") or "") + " ".join(serves or ())
        template_names = {m.group(1) for m in re.finditer(r"\{(\w+)\}", templates)}
        if template_names - groups:
            missing = sorted(template_names - groups)
            raise SefError(f"{where}: keys 'subset'/'serves' use {missing}, not captured by the pattern")
        rules.append(rule)
    checks = []
    for i, table in enumerate(data["checks"]):
        where = f"{source} checks[{i}]"
        if not isinstance(table, dict):
            raise SefError(f"{where}: must be a table ([[checks]])")
        _check_keys(table, _CHECK_KEYS, where)
        checks.append(dict(table))
    fields = {k: v for k, v in data.items() if k not in ("rules", "checks", "protocol")}
    definition = BenchmarkDefinition(**fields, rules=rules, checks=checks, protocol=dict(protocol), source=source)
    for i, check in enumerate(checks):  # a definition must agree with its own examples
        got = definition.classify(check["path"])
        want = (LABELS.get(check["label"], check["label"]), check["subset"])
        if got is None or (got[0], got[1]) != want:
            raise SefError(f"{source} checks[{i}]: {check['path']!r} resolves to {got and got[:2]}, expected {want}")
    return definition


def load_definition(path: str | os.PathLike) -> BenchmarkDefinition:
    path = Path(path)
    data = read_toml(path, "benchmark definition")
    definition = parse_definition(data, str(path))
    if definition.name != path.stem:
        raise SefError(f"{path}: name {definition.name!r} must equal the file name ({path.stem!r})")
    return definition


def known_benchmarks(folder: str | os.PathLike = BENCHMARKS_DIR) -> dict[str, Path]:
    """name -> definition file in ``folder``."""
    return {p.stem: p for p in sorted(Path(folder).glob("*.toml"))}


def get_definition(name_or_path: str) -> BenchmarkDefinition:
    """A definition by name (``manifests/benchmarks/NAME.toml``) or by the path of a ``.toml`` file."""
    if name_or_path.endswith(".toml"):
        return load_definition(name_or_path)
    known = known_benchmarks()
    if name_or_path not in known:
        raise SefError(f"unknown benchmark {name_or_path!r}; known: {', '.join(known)} (or a path to a .toml file)")
    return load_definition(known[name_or_path])


PLAIN = parse_definition(
    {
        "name": "folder",
        "title": "plain real/fake folder",
        "paper": "",
        "url": "",
        "licence": "yours",
        "layout": "real/ + fake/ or 0_real/ + 1_fake/, at the top or under subset folders",
        "pitfalls": [],
        "rules": [
            {"pattern": "{subset:**}/0_real/**", "label": "real"},
            {"pattern": "{subset:**}/1_fake/**", "label": "fake"},
            {"pattern": "{subset:**}/real/**", "label": "real"},
            {"pattern": "{subset:**}/fake/**", "label": "fake"},
        ],
        "checks": [
            {"path": "real/a.png", "label": "real", "subset": ALL},
            {"path": "fake/b.png", "label": "fake", "subset": ALL},
            {"path": "progan/car/0_real/c.png", "label": "real", "subset": "progan/car"},
            {"path": "sd14/1_fake/d.png", "label": "fake", "subset": "sd14"},
        ],
    },
    "<plain folder layout>",
)
"""The layout ``--bench PATH`` uses: reals under a ``real``/``0_real`` folder, fakes under ``fake``/``1_fake``; the
folders above them (if any) name the subset."""


# ---- resolved benchmarks -------------------------------------------------------------------------------------


@dataclass
class BenchItem:
    """One labelled image of a benchmark."""

    key: str
    """Relative path inside the benchmark (or ``#index`` for a Hub dataset row): stable, used to seed noise."""
    label: int
    """0 real, 1 generated."""
    subset: str
    serves: tuple[str, ...] | None = None
    """For reals shared between subsets: the subsets they serve (``("*",)`` = all); None = their own subset."""
    path: Path | None = None
    loader: Callable[[], Image.Image] | None = field(default=None, repr=False)

    def open(self) -> Image.Image:
        """The decoded image (any mode; the detector converts it). Raises on unreadable files."""
        if self.loader is not None:
            return self.loader()
        return open_image_file(self.path)

    def in_subset(self, subset: str) -> bool:
        if self.serves is not None and self.label == 0:
            return any(fnmatch.fnmatchcase(subset, pattern) for pattern in self.serves)
        return self.subset == subset


@dataclass
class ResolvedBenchmark:
    """A benchmark read from disk or the Hub: its items and what could not be assigned."""

    name: str
    source: str
    definition: BenchmarkDefinition | None
    items: list[BenchItem]
    unmatched: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    ignored: int = 0
    """Image files a layout rule left out on purpose (label "ignore")."""

    @property
    def subsets(self) -> list[str]:
        """Subsets with their own images (reals that serve other subsets do not add one)."""
        names = {it.subset for it in self.items if it.serves is None or it.label == 1}
        return sorted(names)

    def counts(self) -> tuple[int, int]:
        real = sum(1 for it in self.items if it.label == 0)
        return real, len(self.items) - real


def resolve_folder(
    root: str | os.PathLike, definition: BenchmarkDefinition, name: str | None = None
) -> ResolvedBenchmark:
    """Read a downloaded copy of a benchmark by its definition's layout."""
    root = Path(root)
    if not root.is_dir():
        raise SefError(f"benchmark {name or definition.name}: {root} is not a folder")
    items, unmatched, ignored = [], [], 0
    for rel in (path.relative_to(root).as_posix() for path in image_files(root)):
        found = definition.classify(rel)
        if found is None:
            unmatched.append(rel)
            continue
        label, subset, serves = found
        if label == IGNORE:
            ignored += 1
            continue
        items.append(BenchItem(key=rel, label=label, subset=subset, serves=serves, path=root / rel))
    bench = ResolvedBenchmark(name or definition.name, str(root), definition, items, unmatched, ignored=ignored)
    _finish(bench)
    return bench


def _finish(bench: ResolvedBenchmark) -> None:
    """Refuse an empty benchmark; warn about a missing class and unassigned files."""
    real, fake = bench.counts()
    layout = bench.definition.layout if bench.definition else "Hub dataset"
    if not bench.items:
        shown = ", ".join(bench.unmatched[:3]) or "none"
        raise SefError(
            f"benchmark {bench.name}: no image under {bench.source} matches its layout ({layout}); "
            f"{len(bench.unmatched)} image file(s) unmatched, e.g. {shown}"
        )
    if not real or not fake:
        missing = "real" if not real else "generated"
        bench.warnings.append(f"no {missing} images found: AP, AUROC and balanced accuracy are undefined")
    if bench.unmatched:
        bench.warnings.append(
            f"{len(bench.unmatched)} image file(s) match no layout rule and were not scored, e.g. {bench.unmatched[0]}"
        )


# ---- Hugging Face datasets -----------------------------------------------------------------------------------

_HF_LABEL_COLUMNS = ("label", "labels", "is_fake", "fake", "is_generated", "target")
_HF_SUBSET_COLUMNS = ("generator", "subset", "source", "model")
_HF_REAL_NAMES = {"real", "0_real", "nature", "natural", "human", "authentic", "photo"}
_HF_FAKE_NAMES = {"fake", "1_fake", "ai", "generated", "synthetic", "ai-generated", "ai_generated"}
_HF_OPTIONS = ("split", "image", "label", "subset", "revision")


def parse_hf_ref(ref: str) -> tuple[str, dict[str, str]]:
    """``ID[:key=value,...]`` (after the ``hf:`` prefix) -> (id, options); options: split, image, label, subset,
    revision."""
    ident, _, rest = ref.partition(":")
    options = {}
    for item in filter(None, rest.split(",")):
        key, sep, value = item.partition("=")
        if not sep or key not in _HF_OPTIONS:
            raise SefError(f"bad Hub dataset option {item!r} in {ref!r}; known: {', '.join(_HF_OPTIONS)} (key=value)")
        options[key] = value
    if not ident:
        raise SefError(f"bad Hub dataset reference {ref!r}: expected hf:OWNER/NAME[:split=test,...]")
    return ident, options


def _hf_label(value: Any, names: list[str] | None, where: str) -> int:
    if names is not None and isinstance(value, int) and not isinstance(value, bool):
        value = names[value]
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int) and value in (0, 1):
        return value
    if isinstance(value, str):
        low = value.strip().lower()
        if low in _HF_REAL_NAMES:
            return 0
        if low in _HF_FAKE_NAMES:
            return 1
    raise SefError(f"{where}: label {value!r} is neither 0/1 nor a known real/fake name")


def resolve_hf(ref: str, name: str | None = None) -> ResolvedBenchmark:
    """A Hugging Face dataset (Hub id or local dataset folder) with an image column and a real/fake label column."""
    import datasets

    ident, options = parse_hf_ref(ref)
    split = options.get("split", "test")
    name = name or ident.rstrip("/").rsplit("/", 1)[-1]
    try:
        ds = datasets.load_dataset(ident, split=split, revision=options.get("revision"))
    except Exception as e:  # datasets raises many types (FileNotFoundError, DatasetNotFoundError, ValueError...)
        raise SefError(f"benchmark {name}: cannot load Hub dataset {ident!r} split {split!r}: {e}") from None
    features = ds.features
    image_col = options.get("image") or next(
        (k for k, f in features.items() if isinstance(f, datasets.Image)), "image" if "image" in features else None
    )
    label_col = options.get("label") or next((c for c in _HF_LABEL_COLUMNS if c in features), None)
    subset_col = options.get("subset") or next((c for c in _HF_SUBSET_COLUMNS if c in features), None)
    for what, col in (("image", image_col), ("label", label_col)):
        if col is None or col not in features:
            raise SefError(
                f"benchmark {name}: no {what} column in {ident} (columns: {', '.join(features)}); "
                f"name it with hf:{ident}:{what}=COLUMN"
            )
    label_feature = features[label_col]
    names = label_feature.names if isinstance(label_feature, datasets.ClassLabel) else None
    subset_feature = features.get(subset_col) if subset_col else None
    subset_names = subset_feature.names if isinstance(subset_feature, datasets.ClassLabel) else None
    columns = [label_col] + ([subset_col] if subset_col else [])
    meta = ds.select_columns(columns)
    items = []
    for index, row in enumerate(meta):
        label = _hf_label(row[label_col], names, f"benchmark {name} row {index}")
        subset = ALL
        if subset_col:
            value = row[subset_col]
            subset = str(subset_names[value] if subset_names is not None else value)
        items.append(BenchItem(key=f"#{index}", label=label, subset=subset, loader=_HfLoader(ds, image_col, index)))
    bench = ResolvedBenchmark(name, f"hf:{ident} ({split})", None, items)
    _finish(bench)
    return bench


class _HfLoader:
    def __init__(self, ds: Any, column: str, index: int) -> None:
        self.ds, self.column, self.index = ds, column, index

    def __call__(self) -> Image.Image:
        image = self.ds[self.index][self.column]
        if not isinstance(image, Image.Image):
            raise ValueError(f"column {self.column!r} holds {type(image).__name__}, not an image")
        image.load()
        return image


# ---- the --bench argument ------------------------------------------------------------------------------------


def resolve_bench_arg(arg: str) -> ResolvedBenchmark:
    """``NAME=PATH`` (definition NAME, or a custom name for a plain folder / Hub dataset), ``PATH`` (plain
    folder), or ``hf:ID[:options]`` / an ``OWNER/NAME`` Hub id that is not a local path."""
    name, sep, target = arg.partition("=")
    if not sep or arg.startswith("hf:"):
        name, target = None, arg
    elif not name or not target:
        raise SefError(f"bad --bench {arg!r}: expected NAME=PATH, PATH or hf:OWNER/NAME")
    if target.startswith("hf:"):
        return resolve_hf(target[3:], name)
    path = Path(target).expanduser()
    if name is not None and (name in known_benchmarks() or name.endswith(".toml")):
        definition = get_definition(name)
        return resolve_folder(path, definition, definition.name if not name.endswith(".toml") else None)
    if not path.exists():
        if re.fullmatch(r"[\w.-]+/[\w.-]+", target):
            return resolve_hf(target, name)
        raise SefError(f"bad --bench {arg!r}: {target} does not exist (nor is it an OWNER/NAME Hub dataset id)")
    bench_name = name or path.resolve().name
    try:
        bench = resolve_folder(path, PLAIN, bench_name)
    except SefError as e:
        if name is not None:
            known = ", ".join(known_benchmarks())
            raise SefError(f"{e} -- and {name!r} is not a benchmark definition (known: {known})") from None
        raise
    if name is not None:
        bench.warnings.insert(0, f"{name!r} is not a benchmark definition; read {path} as a plain real/fake folder")
    return bench
