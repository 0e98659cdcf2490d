"""Help as users of Unix tools expect it, and options declared once: in the config dataclasses."""

from __future__ import annotations

import dataclasses
import re
from importlib.metadata import version

import pytest
from conftest import modules_loaded_by
from sef_cli import sefdata as sefdata_cli
from sef_cli import sefmodel as sefmodel_cli
from sef_cli.common import App
from sef_cli.options import config_options
from typer.testing import CliRunner

from sefdata.config import BuildConfig
from sefmodel.train.config import TrainConfig

runner = CliRunner()
APPS = {"sefdata": sefdata_cli.app, "sefmodel": sefmodel_cli.app}
COMMANDS = [(tool, cmd.name or cmd.callback.__name__) for tool, app in APPS.items() for cmd in app.registered_commands]
ODD = ("{", "<bool>", "<str>", "<int>", "<path>", "[[", "list[")


def _help(tool: str, *args: str) -> str:
    result = runner.invoke(APPS[tool], list(args), env={"COLUMNS": "120"}, prog_name=tool)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.parametrize(("tool", "command"), COMMANDS)
@pytest.mark.parametrize("flag", ["-h", "--help"])
def test_every_command_has_conventional_help(tool, command, flag):
    text = _help(tool, command, flag)
    assert text.startswith(f"Usage: {tool} {command} [OPTIONS]")
    for odd in ODD:
        assert odd not in text, (odd, text)
    assert re.search(r"^  -h, --help\s", text, re.M)


@pytest.mark.parametrize(
    ("tool", "command", "usage"),
    [("sefdata", "build", "[OPTIONS] [SOURCE]..."), ("sefdata", "publish", "[OPTIONS] FOLDER"),
     ("sefdata", "verify", "[OPTIONS] FOLDER"), ("sefmodel", "predict", "[OPTIONS] RUN INPUTS..."),
     ("sefmodel", "explain", "[OPTIONS] RUN IMAGE"), ("sefmodel", "train", "[OPTIONS] [RUN]..."),
     ("sefmodel", "eval", "[OPTIONS] RUN"), ("sefmodel", "serve", "[OPTIONS] RUN")],
)  # fmt: skip
def test_usage_lines(tool, command, usage):
    assert _help(tool, command, "-h").splitlines()[0] == f"Usage: {tool} {command} {usage}"


def test_switches_are_flags_and_defaults_read_one_way():
    text = _help("sefdata", "publish", "-h")
    assert re.search(r"^  --dry-run\s+only write", text, re.M)  # no value after a switch
    assert "[default: unknown]" in text and "[default: FOLDER/.publish]" in text and "(default:" not in text
    train = _help("sefmodel", "train", "-h")
    assert re.search(r"^  --cpu\s+train on the CPU", train, re.M)
    assert "[default: 5000]" in train and "(default:" not in train


@pytest.mark.parametrize("tool", APPS)
def test_version_and_top_level_help(tool):
    assert _help(tool, "--version").strip() == f"{tool} {version('sef-toolkit')}"
    text = _help(tool, "-h")
    assert text.startswith(f"Usage: {tool} [OPTIONS] COMMAND [ARGS]...") and "--version" in text


def test_every_config_field_is_an_option_and_a_recipe_key():
    build = _help("sefdata", "build", "-h")
    for f in dataclasses.fields(BuildConfig):
        if f.name not in ("sources", "recipe"):
            assert f"--{f.name.replace('_', '-')}" in build, f.name
    train = _help("sefmodel", "train", "-h")
    for f in dataclasses.fields(TrainConfig):
        if f.name not in ("detector", "domains", "augment", "record_keys"):
            assert f"--{f.name.replace('_', '-')}" in train, f.name
    for flag in ("--backbone", "--backbone-id", "--config", "--domain-fields", "--aug"):
        assert flag in train


def test_a_new_field_is_a_new_option_with_its_help_and_default():
    """What adding a build option costs: one field. The adapter gives it a flag, a type, help and its default."""

    @dataclasses.dataclass
    class Config:
        tile_overlap: int = dataclasses.field(default=16, metadata={"help": "pixels shared by neighbouring tiles"})
        names: list[str] = dataclasses.field(default_factory=list, metadata={"help": "names"})
        dry: bool = dataclasses.field(default=False, metadata={"help": "do nothing"})

    app = App(help="test")
    seen = {}

    @app.command()
    @config_options(Config)
    def run(*, config_flags: dict) -> None:
        seen.update(config_flags)

    @app.command()
    def other() -> None:
        pass

    text = runner.invoke(app, ["run", "-h"], env={"COLUMNS": "120"}).output
    assert re.search(r"--tile-overlap N\s+pixels shared by neighbouring tiles  \[default: 16\]", text)
    assert re.search(r"^  --dry\s+do nothing$", text, re.M)
    result = runner.invoke(app, ["run", "--tile-overlap", "8", "--names", "a", "--names", "b", "--dry"])
    assert result.exit_code == 0, result.output
    assert seen == {"tile_overlap": 8, "names": ["a", "b"], "dry": True}
    seen.clear()
    assert runner.invoke(app, ["run"]).exit_code == 0 and seen == {}  # unset flags leave the config's defaults


@pytest.mark.parametrize("tool", APPS)
def test_help_imports_no_model_stack(tool):
    """--help is fast because it loads no torch, transformers or numpy (timed by bench/cli_help.py, not here): the
    configs that every command's options come from are imported as classes, so their modules must stay light."""
    commands = [command for t, command in COMMANDS if t == tool]
    code = (
        f"from sef_cli import {tool} as m\n"
        f"for args in [['--help'], *([c, '--help'] for c in {commands!r})]:\n"
        "    try: m.app(args, prog_name='x')\n"
        "    except SystemExit: pass"
    )
    heavy = ("torch", "transformers", "diffusers", "peft", "numpy", "fastapi", "uvicorn", "starlette")
    assert modules_loaded_by(code, heavy) == []


def _params(app, command: str) -> dict:
    """A command's options by long flag: (help, default shown, metavar)."""
    import typer.main

    cmd = typer.main.get_command(app).commands[command]
    return {next(o for o in p.opts if o.startswith("--")): (p.help, p.show_default, p.metavar) for p in cmd.params
            if p.param_type_name == "option"}  # fmt: skip


def test_runtime_block_is_one_declaration_for_every_scoring_command():
    """--batch-size, --crop, --device and --threads read the same in every command that scores: they come from
    RuntimeOptions (eval's --batch-size and --crop through EvalConfig, which takes them from there)."""
    from sefmodel.runtime import RuntimeOptions

    uses = {"eval": ("batch_size", "crop", "device", "threads"), "predict": ("batch_size", "crop", "device", "threads"),
            "explain": ("device", "threads"), "calibrate": ("batch_size", "device", "threads"),
            "golden": ("threads",), "check": ("threads",), "aeroblade": ("device", "threads"),
            "serve": ("crop", "device", "threads")}  # fmt: skip
    fields = {f.name: f.metadata for f in dataclasses.fields(RuntimeOptions)}
    reference = _params(sefmodel_cli.app, "predict")  # predict has all four
    for name, meta in fields.items():
        flag = f"--{name.replace('_', '-')}"
        assert reference[flag][0] == meta["help"].split(" (default:")[0] and reference[flag][2] == meta["metavar"]
    for command, names in uses.items():
        params = _params(sefmodel_cli.app, command)
        for name in names:
            flag = f"--{name.replace('_', '-')}"
            assert params[flag] == reference[flag], (command, flag)
    shown = _params(sefmodel_cli.app, "predict")
    assert shown["--device"][1] == "auto" and shown["--batch-size"][1] == "16" and shown["--threads"][1] == "0"
    assert shown["--crop"][1] == "the detector's config"
    assert _params(sefmodel_cli.app, "serve")["--batch-size"][1] == "4"  # serve's own: uploads wait for their batch


def test_every_config_documents_its_fields_one_way():
    """Each config a command's options come from gives every field its help as ``metadata=doc(...)``: a field
    documented another way (an attribute docstring) would reach --help with no text."""
    from sef_cli.options import PublishOptions

    from sefmodel.evaluation.config import EvalConfig
    from sefmodel.model.aeroblade_config import AerobladeConfig
    from sefmodel.model.config import DetectorConfig
    from sefmodel.model.lora import LoraSettings
    from sefmodel.model.preprocess import ImageProcessor
    from sefmodel.runtime import RuntimeOptions
    from sefmodel.serve.app import ServeConfig

    configs = (BuildConfig, TrainConfig, DetectorConfig, ImageProcessor, LoraSettings, EvalConfig, RuntimeOptions,
               ServeConfig, AerobladeConfig, PublishOptions)  # fmt: skip
    for config in configs:
        undocumented = [f.name for f in dataclasses.fields(config) if not f.metadata.get("help", "").strip()]
        assert not undocumented, (config.__name__, undocumented)
    # the help and the value's name both come from the field
    aeroblade = _help("sefmodel", "aeroblade", "-h")
    assert re.search(r"--distance-backbone FAMILY\s+Backbone family of the features distance", aeroblade)


def test_eval_options_are_eval_config_fields():
    from sefmodel.evaluation.config import EvalConfig

    params = _params(sefmodel_cli.app, "eval")
    flags = {
        "--bench" if f.name == "benches" else f"--{f.name.replace('_', '-')}" for f in dataclasses.fields(EvalConfig)
    }
    assert set(params) == flags | {"--device", "--threads", "--out", "--progress"}
    assert params["--calib-fraction"][1] == "0.2" and params["--fake-jpeg"][1] == "none"
    assert params["--plots"][1] == "plots"


def test_publish_block_is_shared_and_shows_the_librarys_defaults():
    """The six publish options are one declaration; each tool's --license default is its library's."""
    import inspect

    from sefdata.publish import publish as publish_dataset
    from sefmodel.publish import publish as publish_detector

    data, model = _params(sefdata_cli.app, "publish"), _params(sefmodel_cli.app, "publish")
    shared = ("--repo", "--private", "--revision", "--license", "--dry-run", "--staging")
    for flag in shared:
        assert "{" not in data[flag][0] and data[flag][2] == model[flag][2], flag
    assert data["--private"] == model["--private"] and data["--revision"] == model["--revision"]
    assert data["--dry-run"] == model["--dry-run"]
    assert data["--repo"][0].startswith("Hub dataset repo") and model["--repo"][0].startswith("Hub model repo")
    assert data["--staging"][1] == "FOLDER/.publish" and model["--staging"][1] == "RUN/.publish"
    assert data["--license"][1] == inspect.signature(publish_dataset).parameters["license"].default
    assert model["--license"][1] == inspect.signature(publish_detector).parameters["license"].default
