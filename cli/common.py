"""Shared CLI plumbing: conventional help, ``--version``, and one readable line for every failure, never a traceback
wall (DESIGN.md §9).

This module is imported by ``--help``: it imports nothing heavier than typer (torch, transformers and the model
stacks load inside the commands that use them).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import typer
from typer.core import TyperCommand, TyperGroup

from sefcore.errors import SefError

HELP_OPTIONS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
_DEFAULT_IN_HELP = re.compile(r"\s*\(default:?\s+(?P<default>[^()]*(?:\([^()]*\)[^()]*)*)\)\s*$")


# ---- help that follows the conventions -------------------------------------------------------------------------
# Typer's own rendering writes `{folder}`, `[[RUN...]]...` and `--dry-run <bool>`; these classes render what POSIX
# and click users expect: `FOLDER`, `[RUN]...`, `INPUTS...`, `--out PATH`, bare switches, and every default the one
# way, `[default: X]` at the end of the help.


def _metavar(param: Any) -> str:
    if param.metavar:
        return param.metavar
    if param.param_type_name == "argument":
        return param.name.upper()
    name = getattr(param.type, "name", "text").upper()
    return {"BOOLEAN": "BOOL", "FLOAT": "NUMBER"}.get(name, name)


def _usage_piece(param: Any) -> str:
    name = _metavar(param)
    if param.nargs == 1:
        return name if param.required else f"[{name}]"
    return f"{name}..." if param.required else f"[{name}]..."


def split_default(help_text: str) -> tuple[str, str | None]:
    """``"text (default: X)"`` -> ``("text", "X")``: a default stated in prose moves to the one place defaults go."""
    m = _DEFAULT_IN_HELP.search(help_text)
    if not m:
        return help_text, None
    return help_text[: m.start()], m.group("default").strip()


def _help_record(param: Any, ctx: Any) -> tuple[str, str] | None:
    if getattr(param, "hidden", False):
        return None
    text, stated = split_default(param.help or "")
    extras = []
    if param.param_type_name == "argument":
        name = _usage_piece(param)
    else:
        name = ", ".join(sorted(param.opts, key=lambda o: o.startswith("--")))  # -o, --out: short ones first
        if param.secondary_opts:
            name += " / " + ", ".join(param.secondary_opts)
        if not param.is_flag:
            name += f" {_metavar(param)}" + ("..." if param.nargs != 1 else "")
        default = param.default
        if isinstance(param.show_default, str):
            stated = param.show_default
        elif stated is None and param.show_default and default not in (None, False, (), []) and not callable(default):
            if param.is_flag and param.secondary_opts:
                stated = (param.opts if default else param.secondary_opts)[0].lstrip("-")
            elif not param.is_flag:
                stated = " ".join(map(str, default)) if isinstance(default, (list, tuple)) else str(default)
    if stated:
        extras.append(f"default: {stated}")
    if param.required:
        extras.append("required")
    if extras:
        text = f"{text}  [{'; '.join(extras)}]" if text else f"[{'; '.join(extras)}]"
    return name, text


def _format_params(command: Any, ctx: Any, formatter: Any) -> None:
    args, opts = [], []
    for param in command.get_params(ctx):
        record = _help_record(param, ctx)
        if record is not None:
            (args if param.param_type_name == "argument" else opts).append(record)
    if args:
        with formatter.section("Arguments"):
            formatter.write_dl(args)
    if opts:
        with formatter.section("Options"):
            formatter.write_dl(opts)


class Command(TyperCommand):
    """A typer command whose help reads like every other Unix tool's."""

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        return [self.options_metavar or "", *(_usage_piece(p) for p in self.get_params(ctx) if
                                              p.param_type_name == "argument")]  # fmt: skip

    def format_options(self, ctx: Any, formatter: Any) -> None:
        _format_params(self, ctx, formatter)


class _Flag:
    """Converts a switch's value without typer's pydantic machinery (see Group.get_help_option)."""

    def coerce(self, value: Any, **_: Any) -> bool:
        return bool(value)


class Group(TyperGroup):
    """The app: conventional help for its own options, then the commands."""

    def get_help_option(self, ctx: Any) -> Any:
        option = super().get_help_option(ctx)
        # typer converts parameter values through pydantic, imported on first use (0.1-0.3 s). On `sefmodel predict
        # --help` the one value it would convert is this absent group flag: a plain bool needs no pydantic.
        if option is not None and getattr(option, "_runtime_param", False) is None:
            option._runtime_param = _Flag()
        return option

    def format_options(self, ctx: Any, formatter: Any) -> None:
        _format_params(self, ctx, formatter)
        self.format_commands(ctx, formatter)


class App(typer.Typer):
    """``typer.Typer`` with conventional help on every command, ``-h`` as well as ``--help``, and ``--version``."""

    def __init__(self, *, help: str, version_of: str = "sef-toolkit") -> None:
        super().__init__(
            cls=Group,
            help=help,
            no_args_is_help=True,
            pretty_exceptions_enable=False,
            add_completion=False,
            rich_markup_mode=None,
            context_settings=HELP_OPTIONS,
        )

        def show_version(ctx: typer.Context, value: bool) -> None:
            if value:
                from importlib.metadata import PackageNotFoundError, version

                try:
                    typer.echo(f"{ctx.find_root().info_name} {version(version_of)}")
                except PackageNotFoundError:
                    typer.echo(f"{version_of} (not installed)")
                raise typer.Exit()

        @self.callback()
        def _root(
            version: bool = typer.Option(
                False, "--version", callback=show_version, is_eager=True, help="print the version and exit"
            ),
        ) -> None:
            pass

        _root.__doc__ = help

    def command(self, *args: Any, cls: type = Command, **kwargs: Any) -> Callable:  # type: ignore[override]
        kwargs["context_settings"] = {**HELP_OPTIONS, **(kwargs.get("context_settings") or {})}
        return super().command(*args, cls=cls, **kwargs)


def command_line(ctx: typer.Context, program: str) -> str:
    """The command as typed, rebuilt from what the command line set (defaults left out), for the provenance of what
    it writes: ``program`` (``sefdata``, ``sefmodel``), the command's name, then its arguments and options."""
    import shlex

    # typer ships its own copy of click: its classes are compared by name, not imported
    parts = [program, *ctx.command_path.split()[1:]]
    for param in ctx.command.params:
        source = ctx.get_parameter_source(param.name)
        if source is None or source.name != "COMMANDLINE":
            continue
        value = ctx.params[param.name]
        values = value if isinstance(value, list | tuple) else [value]
        if param.param_type_name == "argument":
            parts += [str(v) for v in values]
        elif param.is_flag:
            parts.append((param.opts if value else param.secondary_opts or param.opts)[0])
        else:
            parts += [item for v in values for item in (param.opts[0], str(v))]
    return shlex.join(parts)


# ---- failures --------------------------------------------------------------------------------------------------


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


@contextlib.contextmanager
def user_errors(
    usage: tuple[type[BaseException], ...] = (),
    *,
    hub: bool = False,
    fetching: str | None = None,
    offline_hint: str | None = None,
) -> Iterator[None]:
    """Turn every failure into one ``error: ...`` line on stderr and a non-zero exit, never a traceback.

    SefError and the ``usage`` exception types exit 2 (wrong input: fix the command). A network failure (Hub
    unreachable, offline mode, file neither cached nor fetchable) exits 2 with what could not be ``fetching`` and the
    ``offline_hint``. Anything unexpected exits 1 with its type and message; ``SEF_DEBUG=1`` shows the traceback.
    With ``hub``, the body may fetch from the Hub: it runs with huggingface_hub offline when the Hub cannot be
    reached, so such failures come at once (cached files still load), not after a minute of retries."""
    from sefcore.hub import network_failure

    try:
        with _hub_mode() if hub else contextlib.nullcontext():
            yield
    except (typer.Exit, typer.Abort, typer.BadParameter):
        raise
    except SefError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        typer.echo("interrupted: nothing finished is lost; run the same command again to resume", err=True)
        raise typer.Exit(130) from None
    except Exception as e:
        if os.environ.get("SEF_DEBUG"):
            raise
        reason = network_failure(e)
        if reason:
            what = f" {fetching}" if fetching else ""
            hint = f"; {offline_hint}" if offline_hint else ""
            typer.echo(f"error: cannot fetch{what} from the Hugging Face Hub ({reason}){hint}", err=True)
            raise typer.Exit(2) from None
        if isinstance(e, usage):
            typer.echo(f"error: {_first_line(e) if not isinstance(e, KeyError) else e.args[0]}", err=True)
            raise typer.Exit(2) from None
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:
            typer.echo(f"error: disk full writing {e.filename or 'output'}; free space and re-run to resume", err=True)
            raise typer.Exit(1) from None
        if isinstance(e, MemoryError) or "out of memory" in str(e).lower():
            typer.echo(f"error: out of memory ({_first_line(e)}); lower --batch-size", err=True)
            raise typer.Exit(1) from None
        if isinstance(e, OSError):
            where = f" ({e.filename})" if e.filename else ""
            typer.echo(f"error: {e.strerror or _first_line(e)}{where}", err=True)
            raise typer.Exit(1) from None
        typer.echo(
            f"error: unexpected {type(e).__name__}: {_first_line(e)} (set SEF_DEBUG=1 to see the traceback)", err=True
        )
        raise typer.Exit(1) from None


@contextlib.contextmanager
def _hub_mode() -> Iterator[None]:
    """Offline mode for the command's body when the Hub cannot be reached (imports huggingface_hub lazily)."""
    from sefcore.hub import hub_offline_unless_reachable

    with hub_offline_unless_reachable():
        yield


def report_upload(files: list[str], folder: Path, *, dry_run: bool, url: str) -> None:
    """What `publish` did: the staged file list on a dry run, else where the files went."""
    if dry_run:
        typer.echo(f"dry run: {len(files)} files staged in {folder}")
        for name in files:
            typer.echo(f"  {name}")
    else:
        typer.echo(f"published {len(files)} files to {url}")


def run_app(app: typer.Typer) -> None:
    app(prog_name=sys.argv[0].rsplit("/", 1)[-1].removesuffix(".py"))
