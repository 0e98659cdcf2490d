"""Both CLIs as a user meets them without a network: every failure is one line, the right exit code, no traceback.

The commands run in a subprocess with the Hub made unreachable for real: ``HF_ENDPOINT`` on a closed loopback port
(connection refused at once), or ``HF_HUB_OFFLINE=1``, and an empty ``HF_HOME`` so that no cached model can
answer instead. Nothing here needs or touches the network.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from train_helpers import build_shards, tiny_gens, write_photos  # noqa: F401  (tiny_gens is a fixture)

REPO = Path(__file__).resolve().parents[1]
UNREACHABLE = {"HF_ENDPOINT": "http://127.0.0.1:9"}  # the discard port: nothing listens, refused at once
OFFLINE = {"HF_HUB_OFFLINE": "1"}


def run_cli(tool: str, args: list[str], tmp_path: Path, network: dict[str, str], cwd: Path | None = None):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING"))}
    env.update(network, HF_HOME=str(tmp_path / "hf_home"), HF_TOKEN="hf_secret_never_printed")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))  # this checkout's code
    return subprocess.run(
        [sys.executable, "-m", f"sef_cli.{tool}", *args],
        capture_output=True, text=True, env=env, cwd=cwd or tmp_path, timeout=300,
    )  # fmt: skip


def one_line_error(result, code: int = 2) -> str:
    """The single stderr line of a failed command, after checking the exit code and that nothing else came."""
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output
    assert "hf_secret_never_printed" not in output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == code, output
    assert len(lines) == 1 and lines[0].startswith("error: "), output
    return lines[0]


@pytest.fixture(scope="module")
def train_shards(tmp_path_factory, tiny_gens) -> Path:  # noqa: F811
    root = tmp_path_factory.mktemp("offline_shards")
    return build_shards(root / "train", write_photos(root / "photos", 4, 0), tiny_gens, 2)


@pytest.fixture(scope="module")
def finished_build(tmp_path_factory, tiny_gens) -> Path:  # noqa: F811
    root = tmp_path_factory.mktemp("offline_build")
    return build_shards(root / "build", write_photos(root / "photos", 2, 10), tiny_gens, 2)


@pytest.mark.parametrize("network", [UNREACHABLE, OFFLINE], ids=["unreachable", "offline"])
@pytest.mark.parametrize("command", ["predict", "explain", "eval"])
def test_a_missing_local_run_fails_at_once(tmp_path, assets, network, command):
    photo = str(assets / "photos" / "astronaut.png")
    args = {"predict": [photo], "explain": [photo], "eval": ["--bench", str(tmp_path), "--out", str(tmp_path / "e")]}
    line = one_line_error(run_cli("sefmodel", [command, "runs/nope", *args[command]], tmp_path, network))
    assert "runs/nope" in line and "not a local folder" in line and "unreachable" in line


def test_a_run_that_is_no_hub_id_fails_at_once(tmp_path, assets):
    photo = str(assets / "photos" / "astronaut.png")
    line = one_line_error(run_cli("sefmodel", ["predict", "runs/a/nope", photo], tmp_path, {}))
    assert "not a Hub repo id" in line


def test_fusion_with_a_missing_expert_run(tmp_path):
    (tmp_path / "runs" / "recon").mkdir(parents=True)
    args = ["train", "--data", "shards", "--stage", "fusion", "--experts", "runs/recon", "runs/nope", "--out", "sef"]
    line = one_line_error(run_cli("sefmodel", args, tmp_path, UNREACHABLE))
    assert "expert run at runs/nope" in line and "unreachable" in line


def test_default_backbone_without_the_hub_names_it_and_the_offline_way(tmp_path, train_shards):
    args = ["train", "--data", str(train_shards), "--stage", "expert", "--domain", "recon", "--out",
            str(tmp_path / "run"), "--steps", "1", "--batch-size", "4", "--num-workers", "0"]  # fmt: skip
    line = one_line_error(run_cli("sefmodel", args, tmp_path, UNREACHABLE))
    assert "facebook/dinov2-large" in line and "--backbone-id DIR" in line
    assert not (tmp_path / "run" / "train_config.json").exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [(["--domain", "nope"], "unknown domain 'nope'"), (["--domain-fields", "recon=absent"], "domain 'recon' uses"),
     (["--stage", "nope"], "unknown stage 'nope'")],
)  # fmt: skip
def test_train_checks_stage_domain_and_fields_before_any_model(tmp_path, train_shards, extra, message):
    args = ["train", "--data", str(train_shards), "--domain", "recon", "--out", str(tmp_path / "run"),
            "--num-workers", "0", *extra]  # fmt: skip
    line = one_line_error(run_cli("sefmodel", args, tmp_path, UNREACHABLE))
    assert message in line and "Hub" not in line


@pytest.mark.parametrize("network", [UNREACHABLE, OFFLINE], ids=["unreachable", "offline"])
def test_build_with_a_hub_model_it_cannot_fetch(tmp_path, network):
    """The models load before the progress bar starts, so the failure is the one line on stderr (with --progress,
    the default), and no shard, stats or manifest is left behind."""
    photos = write_photos(tmp_path / "photos", 2, 20)
    args = ["build", str(photos), "--out", str(tmp_path / "out"), "--gen", "vae:model=someone/missing-vae"]
    line = one_line_error(run_cli("sefdata", args, tmp_path, network))
    assert "someone/missing-vae" in line and "local path" in line
    assert not list((tmp_path / "out").glob("shard-*")) and not (tmp_path / "out" / "manifest.json").exists()


def test_publish_without_a_network(tmp_path, finished_build):
    args = ["publish", str(finished_build), "--repo", "me/data", "--staging", str(tmp_path / "stage")]
    line = one_line_error(run_cli("sefdata", args, tmp_path, UNREACHABLE))
    assert "me/data" in line and "--dry-run" in line
    assert (tmp_path / "stage").is_dir()  # staged, so that a re-run only uploads


def test_a_local_backbone_folder_trains_without_the_hub(tmp_path, train_shards):
    """--backbone-id DIR: a transformers model folder on disk is all `train` needs; no TOML, no Hub."""
    from conftest_model import SIZE, TINY
    from transformers import Dinov2Config, Dinov2Model

    Dinov2Model(Dinov2Config(**TINY["dinov2"])).save_pretrained(tmp_path / "dinov2-local")
    args = ["train", "--data", str(train_shards), "--stage", "expert", "--domain", "recon", "--out",
            str(tmp_path / "run"), "--backbone", "dinov2", "--backbone-id", str(tmp_path / "dinov2-local"),
            "--image-size", str(SIZE), "--lora-rank", "2", "--steps", "1", "--batch-size", "4", "--num-workers", "0",
            "--shuffle-buffer", "4", "--no-progress"]  # fmt: skip
    result = run_cli("sefmodel", args, tmp_path, UNREACHABLE)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "trained expert for 1 steps" in result.stdout
    assert (tmp_path / "run" / "detector" / "model.safetensors").is_file()
