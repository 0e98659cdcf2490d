"""Command-line options derived from a config dataclass: an option is declared once, as a field.

A field's name gives the flag (``max_side`` -> ``--max-side``), its type the value type (``list[...]`` makes it
repeatable, ``bool`` a switch: ``--x/--no-x`` when it is on by default), its help (``metadata["help"]``, written with
:func:`sefcore.fields.doc`) the help, and its default the ``[default: ...]`` shown. The command receives only the flags
given on the command line, as a dict of field values, so that they can override a recipe or config file, which in
turn overrides the defaults the dataclass owns.

    @app.command()
    @config_options(BuildConfig, exclude=("sources", "out", "recipe"))
    def build(..., config_flags: dict) -> None: ...
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import inspect
import types
import typing
from collections.abc import Callable, Iterable
from typing import Any

import typer

from sefcore.fields import doc

from .common import split_default

PARAM = "config_flags"


@dataclasses.dataclass
class FieldSpec:
    """What an option needs to know about a config field."""

    name: str
    annotation: Any
    default: Callable[[], Any]  # called only for fields that become options (a factory may import heavy code)
    help: str
    metavar: str | None = None
    required: bool = False


def field_help(cls: type, name: str) -> str:
    return next(f.metadata.get("help", "") for f in dataclasses.fields(cls) if f.name == name)


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def specs_of(cls: type) -> list[FieldSpec]:
    """The fields of a config dataclass whose help is in ``field(metadata={"help": ...})``."""
    hints = _type_hints(cls)
    return [FieldSpec(f.name, hints[f.name], functools.partial(_default, f), f.metadata.get("help", ""),
                      f.metadata.get("metavar"),
                      f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING)
            for f in dataclasses.fields(cls)]  # fmt: skip


def _type_hints(cls: type) -> dict[str, Any]:
    """Field annotations, resolved where they can be; a type only imported for type checkers reads as Any (such a
    field has no command-line form anyway)."""
    try:
        return typing.get_type_hints(cls)
    except NameError:
        namespace = vars(importlib.import_module(cls.__module__))
        out = {}
        for name, text in cls.__annotations__.items():
            try:
                out[name] = eval(text, namespace) if isinstance(text, str) else text
            except NameError:
                out[name] = Any
        return out


def _shown(value: Any) -> str | None:
    """How a default reads in help; None for "no default worth showing" (None, off, empty)."""
    if value is None or value is False or value in ("", [], {}):
        return None
    if isinstance(value, list):
        return " ".join(map(str, value))
    return str(value)


def _value_type(annotation: Any) -> tuple[Any, bool]:
    """(the scalar type, repeatable?) of a field annotation such as ``int | None``, ``list[str]``, ``str | list``."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        annotation = next((a for a in args if a in (str, int, float, bool)), args[0])
    if typing.get_origin(annotation) is list:
        return typing.get_args(annotation)[0], True
    if annotation in (str, int, float, bool):
        return annotation, False
    raise TypeError(f"no command-line form for a field of type {annotation!r}")


_METAVARS = {str: "TEXT", int: "N", float: "X"}


def config_options(
    source: type,
    *,
    include: Iterable[str] | None = None,
    exclude: Iterable[str] = (),
    prefix: str = "",
    overrides: dict[str, dict[str, Any]] | None = None,
    param: str = PARAM,
) -> Callable[[Callable], Callable]:
    """Add one option per field of ``source`` (a config dataclass) to a typer command.

    Fields: ``include`` (default: all) minus ``exclude``; flags are ``--{prefix}{name}``. The decorated function
    takes a keyword parameter ``param``: a dict of the fields given on the command line, by field name.
    ``overrides`` maps a field name to typer.Option keyword arguments (``help``, ``metavar``, extra flag names in
    ``names``, another long name in ``flag``) for the few that need more than their field says. A field without a
    default is a required option."""
    specs = specs_of(source)
    wanted = [s.name for s in specs] if include is None else list(include)
    missing = set(wanted) - {s.name for s in specs}
    if missing:
        raise ValueError(f"no such config fields: {sorted(missing)}")
    skip = set(exclude)
    fields = sorted((s for s in specs if s.name in wanted and s.name not in skip), key=lambda s: wanted.index(s.name))
    overrides = overrides or {}
    unknown = set(overrides) - {f.name for f in fields}
    if unknown:
        raise ValueError(f"overrides for fields that are not options: {sorted(unknown)}")

    def decorate(func: Callable) -> Callable:
        signature = inspect.signature(func)
        annotations = typing.get_type_hints(func)
        own = [p for p in signature.parameters.values() if p.name != param]
        clash = {p.name for p in own} & {prefix + f.name for f in fields}
        if clash:
            raise ValueError(f"{func.__name__} declares {sorted(clash)} itself and as config fields")
        added = []
        for f in fields:
            kind, repeatable = _value_type(f.annotation)
            extra = dict(overrides.get(f.name, {}))
            flag = (prefix + extra.pop("flag", f.name)).replace("_", "-")
            # a switch that is on by default can be turned off: --x/--no-x
            on = kind is bool and not repeatable and not f.required and f.default() is True
            names = [f"--{flag}/--no-{flag}" if on else f"--{flag}", *extra.pop("names", [])]
            help_text, stated = split_default(extra.pop("help", None) or f.help)
            # an on-switch's default reads as the flag that is on, as typer's own switches do
            shown = stated or (None if f.required else flag if on else _shown(f.default()))
            if repeatable:
                help_text += "; repeatable"
            metavar = extra.pop("metavar", f.metavar or _METAVARS.get(kind, "TEXT"))
            option = typer.Option(
                ... if f.required else None,
                *names,
                help=help_text,
                show_default=shown or False,
                metavar=None if kind is bool else metavar,
                **extra,
            )
            annotation = list[kind] if repeatable else kind | None
            added.append(inspect.Parameter(prefix + f.name, inspect.Parameter.KEYWORD_ONLY, default=option,
                                           annotation=annotation))  # fmt: skip
            annotations[prefix + f.name] = annotation

        @functools.wraps(func)
        def command(*args: Any, **kwargs: Any) -> Any:
            given = {}
            for f in fields:
                value = kwargs.pop(prefix + f.name)
                if value is not None and value != [] and value != ():
                    given[f.name] = list(value) if isinstance(value, (list, tuple)) else value
            return func(*args, **kwargs, **{param: given})

        # arguments and required options first, then the config's options, then the command's own
        first = [p for p in own if isinstance(p.default, typer.models.ArgumentInfo) or
                 getattr(p.default, "default", None) is ...]  # fmt: skip
        rest = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own if p not in first]
        command.__signature__ = signature.replace(parameters=[*first, *added, *rest])  # type: ignore[attr-defined]
        annotations.pop(param, None)
        command.__annotations__ = annotations
        return command

    return decorate


# ---- option blocks several commands share -----------------------------------------------------------------------


@dataclasses.dataclass
class PublishOptions:
    """The options of ``sefdata publish`` and ``sefmodel publish``; ``{...}`` in a help is filled per command."""

    repo: str = dataclasses.field(metadata=doc("Hub {repo} repo USER/NAME (created if missing)", metavar="USER/NAME"))
    private: bool = dataclasses.field(default=False, metadata=doc("create the repo private"))
    revision: str | None = dataclasses.field(
        default=None, metadata=doc("branch to upload to (created if missing)", metavar="BRANCH")
    )
    license: str | None = dataclasses.field(
        default=None, metadata=doc("licence id for the {card} (default: {license})", metavar="ID")
    )
    dry_run: bool = dataclasses.field(
        default=False, metadata=doc("only write the folder that would be uploaded, and list it")
    )
    staging: str | None = dataclasses.field(
        default=None, metadata=doc("where to stage the upload (default: {folder}/.publish)", metavar="DIR")
    )


def publish_options(*, repo: str, folder: str, card: str, license: str) -> Callable[[Callable], Callable]:
    """The publish block, as ``publish_flags``: for a Hub ``repo`` type (dataset, model) staged from the command's
    ``folder`` argument, with a ``card`` whose licence is the publishing library's default ``license`` unless
    --license is given. The command passes the flags given to the library, whose defaults hold for the rest."""
    texts = {"repo": repo, "folder": folder, "card": card, "license": license}
    helps = {f.name: f.metadata["help"] for f in dataclasses.fields(PublishOptions)}
    return config_options(PublishOptions, overrides={name: {"help": text.format(**texts)} for name, text in
                                                     helps.items() if "{" in text}, param="publish_flags")  # fmt: skip
