"""Command-line options derived from a config dataclass: an option is declared once, as a field.

A field's name gives the flag (``max_side`` -> ``--max-side``), its type the value type (``list[...]`` makes it
repeatable, ``bool`` a switch), its ``metadata["help"]`` the help and its default the ``[default: ...]`` shown. The
command receives only the flags given on the command line, as a dict of field values, so that they can override a
recipe or config file, which in turn overrides the defaults the dataclass owns.

    @app.command()
    @config_options(BuildConfig, exclude=("sources", "out", "recipe"))
    def build(..., config_flags: dict) -> None: ...
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import types
import typing
from collections.abc import Callable, Iterable
from typing import Any

import typer

from .common import split_default

PARAM = "config_flags"


def field_help(cls: type, name: str) -> str:
    return next(f.metadata.get("help", "") for f in dataclasses.fields(cls) if f.name == name)


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def _shown(value: Any) -> str | None:
    """How a default reads in help; None for "no default worth showing" (None, off, empty)."""
    if value is None or value is False or value in ("", [], {}):
        return None
    if isinstance(value, list):
        return " ".join(map(str, value))
    return str(value)


def _value_type(annotation: Any) -> tuple[Any, bool]:
    """(the scalar type, repeatable?) of a field annotation such as ``int | None`` or ``list[str]``."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and len(args) == 1:
        annotation = args[0]
    if typing.get_origin(annotation) is list:
        return typing.get_args(annotation)[0], True
    if annotation in (str, int, float, bool):
        return annotation, False
    raise TypeError(f"no command-line form for a field of type {annotation!r}")


_METAVARS = {str: "TEXT", int: "N", float: "X"}


def config_options(
    cls: type,
    *,
    exclude: Iterable[str] = (),
    overrides: dict[str, dict[str, Any]] | None = None,
    param: str = PARAM,
) -> Callable[[Callable], Callable]:
    """Add one option per field of ``cls`` (except ``exclude``) to a typer command function.

    The decorated function takes a keyword parameter ``param``: a dict of the fields given on the command line.
    ``overrides`` maps a field name to typer.Option keyword arguments (``help``, ``metavar``, extra flag names in
    ``names``) for the few that need more than their field says."""
    hints = typing.get_type_hints(cls)
    overrides = overrides or {}
    skip = set(exclude)
    fields = [f for f in dataclasses.fields(cls) if f.name not in skip]
    unknown = set(overrides) - {f.name for f in fields}
    if unknown:
        raise ValueError(f"overrides for fields that are not options: {sorted(unknown)}")

    def decorate(func: Callable) -> Callable:
        signature = inspect.signature(func)
        annotations = typing.get_type_hints(func)
        own = [p for p in signature.parameters.values() if p.name != param]
        clash = {p.name for p in own} & {f.name for f in fields}
        if clash:
            raise ValueError(f"{func.__name__} declares {sorted(clash)} itself and as config fields")
        added = []
        for f in fields:
            kind, repeatable = _value_type(hints[f.name])
            extra = dict(overrides.get(f.name, {}))
            names = [f"--{f.name.replace('_', '-')}", *extra.pop("names", [])]
            help_text, stated = split_default(extra.pop("help", None) or f.metadata.get("help", ""))
            shown = stated or _shown(_default(f))
            if repeatable:
                help_text += "; repeatable"
            option = typer.Option(
                None,
                *names,
                help=help_text,
                show_default=shown or False,
                metavar=None if kind is bool else extra.pop("metavar", _METAVARS.get(kind, "TEXT")),
                **extra,
            )
            annotation = list[kind] if repeatable else kind | None
            added.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=option,
                                           annotation=annotation))  # fmt: skip
            annotations[f.name] = annotation

        @functools.wraps(func)
        def command(*args: Any, **kwargs: Any) -> Any:
            given = {}
            for f in fields:
                value = kwargs.pop(f.name)
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
