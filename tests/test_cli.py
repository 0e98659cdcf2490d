"""The command line: help, recipes, flags over recipes, and one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image
from sef_cli.sefdata import app
from train_helpers import write_photos
from typer.testing import CliRunner

from sefcore.errors import SefError
from sefdata.config import load_recipe

runner = CliRunner()


def test_build_help_documents_every_contract_option():
    result = runner.invoke(app, ["build", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for option in ("--gen", "--format", "--max-side", "--shard-size", "--batch-size", "--device", "--dtype", "--seed",
                   "--rank", "--world", "--limit", "--recipe", "--out"):  # fmt: skip
        assert option in result.output
    assert "[default: match]" in result.output and "[default: 1000]" in result.output


def _recipe(tmp_path: Path, tiny_sr_file: Path, body: str = "") -> Path:
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "sr.pth").write_bytes(tiny_sr_file.read_bytes())
    recipe = tmp_path / "r.toml"
    recipe.write_text(
        'sources = ["photos"]\nshard_size = 2\nformat = "png"\n' + body
        + '[[gen]]\nname = "sr"\nweights = "weights/sr.pth"\nscale = 2\nas = "gan"\n'
    )  # fmt: skip
    return recipe


def test_recipe_paths_are_relative_to_the_recipe_and_flags_override(tmp_path, tiny_sr_file, corpus):
    (tmp_path / "photos").mkdir()
    for name in ("rocket.jpg", "chelsea.png", "gray.png"):
        (tmp_path / "photos" / name).write_bytes((corpus / name).read_bytes())
    recipe = _recipe(tmp_path, tiny_sr_file)
    values = load_recipe(recipe)
    assert values["sources"] == [str((tmp_path / "photos").resolve())]
    assert values["gen"] == [f"sr:weights={(tmp_path / 'weights' / 'sr.pth').resolve()},scale=2,as=gan"]

    out = tmp_path / "out"
    result = runner.invoke(
        app, ["build", "--recipe", str(recipe), "--out", str(out), "--format", "match", "--no-progress"]
    )
    assert result.exit_code == 0, result.output
    assert "built 2 shard(s)" in result.output and "manifest:" in result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["sef"]["config"]["format"] == "match"  # the flag won over the recipe
    assert manifest["sef"]["fields"] == ["real", "gan"]
    build_info = json.loads((out / "build.json").read_text())
    assert build_info["recipe"]["path"] == str(recipe) and len(build_info["recipe"]["sha256"]) == 64

    grid = tmp_path / "grid.png"
    result = runner.invoke(app, ["preview", str(out), "--out", str(grid), "--samples", "2", "--tile", "64"])
    assert result.exit_code == 0, result.output
    img = Image.open(grid)
    assert img.size == (64 * 4, 22 + 2 * (64 + 22))  # real | gan | residual | spectrum, two rows

    (out / "manifest.json").unlink()
    result = runner.invoke(app, ["manifest", str(out)])
    assert result.exit_code == 0 and (out / "manifest.json").is_file()


@pytest.mark.parametrize(
    ("body", "message"),
    [("colour = 3\n", "unknown key 'colour'"), ("batch-size = \"ten\"\n", "recipe key 'batch-size': expected int"),
     ("gen = 3\n", "expected a list of generators")],
)  # fmt: skip
def test_recipe_validation_names_the_key(tmp_path, tiny_sr_file, body, message):
    recipe = _recipe(tmp_path, tiny_sr_file)
    recipe.write_text(body + recipe.read_text() if "gen" not in body else body)
    with pytest.raises(SefError, match=message):
        load_recipe(recipe)


def test_errors_are_one_readable_line(tmp_path, corpus, tiny_sr_file):
    sr = f"sr:weights={tiny_sr_file},scale=2"
    cases = [
        (["build", str(tmp_path / "missing"), "--out", str(tmp_path / "o"), "--gen", sr], "not found"),
        (["build", str(corpus), "--out", str(tmp_path / "o"), "--gen", "sr:weights=nope.pth"], "sr weights 'nope.pth'"),
        (["build", str(corpus), "--out", str(tmp_path / "o"), "--gen", "magic"], "unknown generator 'magic'"),
        (["build", str(corpus), "--out", str(tmp_path / "o"), "--format", "gif"], "--format 'gif'"),
        (["preview", str(tmp_path), "--out", str(tmp_path / "p.png")], "no shards"),
        (["manifest", str(tmp_path)], "not a sefdata build folder"),
    ]  # fmt: skip
    for args, message in cases:
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (args, result.output)
        lines = [line for line in result.output.splitlines() if line.startswith("error:")]
        assert len(lines) == 1 and message in lines[0], result.output
        assert "Traceback" not in result.output


def test_skipped_inputs_are_summarised(tmp_path, corpus, tiny_sr_file):
    result = runner.invoke(app, ["build", str(corpus), "--out", str(tmp_path / "o"), "--no-progress",
                                 "--gen", f"sr:weights={tiny_sr_file},scale=2"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "skipped 5 input(s)" in result.output
    for reason in ("animated", "corrupt", "empty", "not_an_image", "too_small"):
        assert reason in result.output


def test_the_manifest_records_what_made_the_build_and_no_local_path(tmp_path, tiny_sr_file, corpus, monkeypatch):
    """manifest.json -> provenance: sources, generators (weights by name and sha256), seed, package versions and the
    command line, with absolute and ../ paths reduced to their names."""
    import hashlib
    import shlex

    import torch

    from sefcore.privacy import json_local_paths
    from sefdata.manifest import write_manifest

    (tmp_path / "photos").mkdir()
    for name in ("rocket.jpg", "chelsea.png"):
        (tmp_path / "photos" / name).write_bytes((corpus / name).read_bytes())
    weights = tmp_path / "weights" / "sr.pth"
    weights.parent.mkdir()
    weights.write_bytes(tiny_sr_file.read_bytes())
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    out = tmp_path / "out"
    args = ["build", "../photos", "--out", str(out), "--gen", f"sr:weights={weights},scale=2", "--seed", "7",
            "--no-progress"]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    prov = manifest["provenance"]
    assert prov["sources"] == ["photos"] and prov["recipe"] is None and prov["seed"] == 7
    assert prov["config_hash"] == manifest["sef"]["config_hash"]
    sr = prov["generators"]["sr"]
    assert sr["generator"] == "sr" and sr["params"]["weights"] == "sr.pth" and sr["params"]["scale"] == 2
    assert sr["model"]["file"] == "sr.pth" and sr["model"]["sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    packages = prov["packages"]
    assert packages["torch"] == torch.__version__ and packages["python"] and packages["sef-toolkit"]
    assert packages["spandrel"] and packages["pillow"]
    words = shlex.split(prov["command"])
    assert words[:3] == ["sefdata", "build", "photos"] and words.count("--out") == 1
    assert words[words.index("--out") + 1] == "out" and "sr:weights=sr.pth,scale=2" in words
    assert words[words.index("--seed") + 1] == "7" and "--no-progress" in words
    assert json_local_paths(prov) == [] and json_local_paths(manifest) == []
    # rewritten later (sefdata manifest), it keeps the build's command; a home-folder path goes by its name too
    assert write_manifest(out)["provenance"]["command"] == prov["command"]
    home = write_manifest(out, command="sefdata build ~/photos ~alice/more --out ../x/out")["provenance"]["command"]
    assert home == "sefdata build photos more --out out"
    assert "Made with `sefdata build photos more --out out`" in _card(out, tmp_path / "s1")


def _card(out: Path, staging: Path) -> str:
    from sefdata.publish import publish

    return (publish(out, "me/x", dry_run=True, staging=staging).folder / "README.md").read_text()


def test_a_manifest_written_before_provenance_is_still_read(tmp_path, tiny_sr_file, corpus):
    from sefmodel.train.data import resolve_shards

    out = tmp_path / "out"
    result = runner.invoke(app, ["build", str(corpus), "--out", str(out), "--no-progress",
                                 "--gen", f"sr:weights={tiny_sr_file},scale=2"])  # fmt: skip
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    del manifest["provenance"]
    (out / "manifest.json").write_text(json.dumps(manifest))
    assert runner.invoke(app, ["verify", str(out)]).exit_code == 0
    preview = runner.invoke(app, ["preview", str(out), "--out", str(tmp_path / "p.png"), "--tile", "32"])
    assert preview.exit_code == 0, preview.output
    assert resolve_shards([str(out)]).fields == ["real", "sr"]
    card = _card(out, tmp_path / "stage")
    assert "Made with" not in card and "## How it was made" in card


def test_throughput_switches_reach_the_build_and_compile_is_noted_on_the_cpu(tmp_path, corpus):
    """--compile on a CPU: one note line, the build runs eager; --no-channels-last (a switch on by default) is
    recorded in the build's runtime settings."""
    out = tmp_path / "o"
    result = runner.invoke(app, ["build", str(corpus / "chelsea.png"), "--out", str(out), "--no-progress", "--gen",
                                 "identity", "--device", "cpu", "--compile", "--no-channels-last"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "note: --compile is ignored on cpu" in result.output
    runtime = json.loads((out / "build.json").read_text())["settings"]["runtime"]
    assert runtime["channels_last"] is False and "compile" not in runtime


def test_dry_run_says_what_a_build_would_do_and_touches_nothing(tmp_path):
    """--dry-run lists and cuts, loads no model (the VAE named here does not exist), reads and writes nothing; after
    a build it counts the done shards, and after the sources changed it stops as the resume would."""
    photos, out = write_photos(tmp_path / "photos", 5, 0), tmp_path / "out"
    args = ["build", str(photos), "--out", str(out), "--shard-size", "2"]
    result = runner.invoke(app, [*args, "--gen", "vae:model=nowhere/no-vae", "--dry-run"])
    assert result.exit_code == 0, result.output
    expected = "dry run: 5 inputs (other sources 5) in 3 shard(s); rank 0/1 has 3: 0 done, 3 to build: 0, 1, 2."
    assert expected in result.output
    assert not out.exists()
    assert runner.invoke(app, [*args, "--gen", "identity", "--no-progress"]).exit_code == 0
    (out / "shard-000002.stats.json").unlink()
    result = runner.invoke(app, [*args, "--gen", "identity", "--dry-run", "--world", "2", "--rank", "0"])
    assert "rank 0/2 has 2: 1 done, 1 to build: 2." in result.output, result.output
    (photos / "img0000.png").unlink()
    result = runner.invoke(app, [*args, "--gen", "identity", "--dry-run"])
    assert result.exit_code == 2 and "the sources list other files than when shard 0" in result.output
