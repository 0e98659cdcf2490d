"""The trainer on tiny random backbones: each stage end to end, resume == uninterrupted, run-folder rules, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import train_helpers
from conftest_model import pixels
from safetensors.torch import load_file
from sef_cli.sefmodel import app
from train_helpers import TINY_DETECTOR, tiny_train_config, write_contract_shards
from typer.testing import CliRunner

from sefmodel import SEFDetector
from sefmodel.model.combine import combine_experts
from sefmodel.train import TrainConfig, train

shards, tiny_gens = train_helpers.shards, train_helpers.tiny_gens  # fixtures


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def expert_runs(shards, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("runs")
    runs = {}
    for domain in ("recon", "sr"):
        cfg = tiny_train_config(root / domain, shards["train"], domain=domain, val_data=[str(shards["val"])])
        result = train(cfg, progress=False)
        assert result.finished and result.step == 4
        runs[domain] = root / domain
    return runs


def test_expert_run_writes_a_complete_run_folder(expert_runs, shards):
    run = expert_runs["recon"]
    assert (run / "train_config.json").is_file() and (run / "checkpoints" / "last").is_dir()
    assert TrainConfig.load(run).domain == "recon"
    lines = metrics(run)
    assert [m["step"] for m in lines if m["split"] == "train"] == [1, 2, 3, 4]
    val = [m for m in lines if m["split"] == "val"]
    assert [m["step"] for m in val] == [2, 4]
    assert {"ap", "auroc", "accuracy", "real_acc", "fake_acc", "ap/recon", "map"} <= set(val[-1])
    assert val[-1]["n"] == 6 * 2  # 6 held-out samples: each real and its one recon fake
    detector = SEFDetector.from_pretrained(run / "detector")
    assert detector.expert_names == ["recon"] and detector.config.fusion == "single"
    best = SEFDetector.from_pretrained(run / "checkpoints" / "best")  # a checkpoint is a detector folder too
    assert best.expert_names == ["recon"]
    # only the adapter and head trained: the frozen backbone is the one the run started from
    torch.manual_seed(0)
    fresh = SEFDetector(detector.config)
    for k, v in fresh.backbone_state_dict().items():
        assert torch.equal(v, detector.backbone_state_dict()[k]), k
    changed = [k for k, v in fresh.trained_state_dict().items() if not torch.equal(v, detector.trained_state_dict()[k])]
    assert changed and all(".lora_B." in k or k.startswith("heads.recon") or ".lora_A." in k for k in changed)


def test_fusion_run_trains_only_the_gate_over_two_expert_runs(expert_runs, shards, tmp_path):
    cfg = tiny_train_config(tmp_path / "sef", shards["train"], stage="fusion", domain=None, fusion="sef",
                            experts=[str(expert_runs["recon"]), str(expert_runs["sr"])])  # fmt: skip
    result = train(cfg, progress=False)
    fused = SEFDetector.from_pretrained(result.detector)
    assert fused.expert_names == ["recon", "sr"] and fused.config.fusion == "sef"
    start = combine_experts([expert_runs["recon"] / "detector", expert_runs["sr"] / "detector"])
    after, before = fused.trained_state_dict(), start.trained_state_dict()
    changed = {k for k in after if not torch.equal(after[k], before[k])}
    assert changed and all(k.startswith("fusion.") for k in changed)
    x = pixels(2)
    assert fused(x)["gate_weights"].shape == (2, 2)


def test_fixed_rule_fusion_is_validated_and_saved_without_training(expert_runs, shards, tmp_path):
    cfg = tiny_train_config(tmp_path / "max", shards["train"], stage="fusion", domain=None, fusion="max",
                            experts=[str(expert_runs["recon"]), str(expert_runs["sr"])],
                            val_data=[str(shards["val"])])  # fmt: skip
    result = train(cfg, progress=False)
    assert result.finished and result.best_ap is not None
    fused = SEFDetector.from_pretrained(result.detector)
    best = SEFDetector.from_pretrained(tmp_path / "max" / "checkpoints" / "best")
    assert fused.config.fusion == best.config.fusion == "max"
    x = pixels(2)
    with torch.no_grad():
        out = fused(x)
    torch.testing.assert_close(out["logits"], out["expert_logits"].max(dim=1).values)
    assert [m["split"] for m in metrics(tmp_path / "max")] == ["val"]


def test_moe_fusion_over_logits_trains_only_its_gate(expert_runs, shards, tmp_path):
    cfg = tiny_train_config(tmp_path / "moe", shards["train"], stage="fusion", domain=None, fusion="moe",
                            experts=[str(expert_runs["recon"]), str(expert_runs["sr"])])  # fmt: skip
    cfg.detector["gate_input"] = "logits"
    result = train(cfg, progress=False)
    fused = SEFDetector.from_pretrained(result.detector)
    assert fused.config.gate_input == "logits" and fused.fusion.gate.net[0].in_features == 2
    start = combine_experts([expert_runs["recon"] / "detector", expert_runs["sr"] / "detector"],
                                     fusion="moe", gate_input="logits")  # fmt: skip
    after, before = fused.trained_state_dict(), start.trained_state_dict()
    changed = {k for k in after if not torch.equal(after[k], before[k])}
    assert changed and all(k.startswith("fusion.gate.") for k in changed)


def test_mixed_run_trains_one_lora_on_both_domains(shards, tmp_path):
    cfg = tiny_train_config(tmp_path / "mixed", shards["train"], stage="mixed", domain=None, record_keys=True)
    result = train(cfg, progress=False)
    detector = SEFDetector.from_pretrained(result.detector)
    assert detector.expert_names == ["mixed"] and detector.config.fusion == "single"
    assert sum(1 for _ in (tmp_path / "mixed" / "keys-rank0.txt").open()) == 4 * 2  # 4 steps x 2 pairs


def test_a_build_of_fewer_shards_than_workers_trains_with_one_worker_per_shard(tmp_path, capsys):
    write_contract_shards(tmp_path / "train", 2, 4)
    val_shards = write_contract_shards(tmp_path / "val", 1, 3)  # held-out data is split by sample: 1 shard serves
    cfg = tiny_train_config(tmp_path / "run", tmp_path / "train", stage="mixed", domain=None, num_workers=4,
                            steps=2, val_data=val_shards, record_keys=True)  # fmt: skip
    result = train(cfg, progress=False)
    assert result.finished and result.val["n"] == 3 * 3  # every held-out real and its two fakes, once
    err = capsys.readouterr().err
    assert err.count("note: 2 training shard(s) over 1 rank(s): 2 data worker(s) per rank instead of 4") == 1
    # both workers were fed: batch b comes from worker b % 2, i.e. from shard b % 2 (keys s0000-s0003 | s0004-s0007)
    keys = [line.split("\t")[1] for line in (tmp_path / "run" / "keys-rank0.txt").read_text().splitlines()]
    shard_of = [int(k[1:]) // 4 for k in keys]
    assert shard_of == [0, 0, 1, 1]  # 2 steps x 2 pairs


def test_resume_after_an_interruption_equals_an_uninterrupted_run(shards, tmp_path):
    kw = dict(steps=6, save_every=4, val_data=[str(shards["val"])], val_every=3)  # stop inside a data segment
    train(tiny_train_config(tmp_path / "full", shards["train"], **kw), progress=False)
    cut = train(tiny_train_config(tmp_path / "cut", shards["train"], **kw), progress=False, stop_after=3)
    assert not cut.finished and cut.step == 3 and not (tmp_path / "cut" / "detector").exists()
    resumed = train(tiny_train_config(tmp_path / "cut", shards["train"], **kw), resume=True, progress=False)
    assert resumed.finished and resumed.step == 6
    steps = [m["step"] for m in metrics(tmp_path / "cut") if m["split"] == "train"]
    assert steps == [1, 2, 3, 4, 5, 6]  # the step count continues
    a = load_file(str(tmp_path / "full" / "detector" / "model.safetensors"))
    b = load_file(str(tmp_path / "cut" / "detector" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k  # bit for bit
    fa = [m["loss"] for m in metrics(tmp_path / "full") if m["split"] == "train"]
    fb = [m["loss"] for m in metrics(tmp_path / "cut") if m["split"] == "train"]
    assert fa == fb
    # a different seed really gives different weights (the comparison above can fail)
    other = train(tiny_train_config(tmp_path / "seed1", shards["train"], seed=1, **kw), progress=False)
    c = load_file(str(other.detector / "model.safetensors"))
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_run_folder_rules(shards, tmp_path):
    cfg = tiny_train_config(tmp_path / "run", shards["train"], steps=2)
    train(cfg, progress=False)
    with pytest.raises(ValueError, match="already holds a training run"):
        train(cfg, progress=False)
    with pytest.raises(ValueError, match="with a different configuration \\(lr\\)"):
        train(tiny_train_config(tmp_path / "run", shards["train"], steps=2, lr=0.5), resume=True, progress=False)
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        train(tiny_train_config(tmp_path / "empty", shards["train"]), resume=True, progress=False)


def test_config_validation():
    with pytest.raises(ValueError, match="needs a domain"):
        TrainConfig(data=["x"], out="y", stage="expert")
    with pytest.raises(ValueError, match="at least two expert runs"):
        TrainConfig(stage="fusion", experts=["a"])
    with pytest.raises(ValueError, match="must be even"):
        TrainConfig(stage="mixed", batch_size=6, micro_batch_size=3)
    with pytest.raises(ValueError, match="unknown domain"):
        TrainConfig(stage="expert", domain="gan")


def _toml(path: Path, **extra) -> Path:
    """A TrainConfig TOML with the given top-level keys and the tiny detector as a [detector] table."""
    d = TINY_DETECTOR
    lines = [f"{k} = {json.dumps(v)}" for k, v in extra.items()]
    lines += ["[detector]", f'backbone = "{d["backbone"]}"', f"processor = {{ size = {d['processor']['size']} }}"]
    lines += ['lora = { rank = 4, blocks = "last:2" }', "[detector.backbone_config]"]
    lines += [f"{k} = {v}" for k, v in d["backbone_config"].items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_cli_trains_from_flags_and_toml_and_reports_domain_errors(shards, tmp_path):
    runner = CliRunner()
    conf = _toml(tmp_path / "tiny.toml", steps=2, batch_size=4, num_workers=0, save_every=2, shuffle_buffer=4)
    args = ["train", "--data", str(shards["train"]), "--config", str(conf), "--no-progress"]
    res = runner.invoke(app, [*args, "--stage", "expert", "--domain", "sr", "--out", str(tmp_path / "sr"),
                              "--val-data", str(shards["val"]), "--aug", "jpeg_p=0.5"])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "trained expert for 2 steps" in res.output and "held-out AP" in res.output
    saved = TrainConfig.load(tmp_path / "sr")
    assert (
        saved.augment.jpeg_p == 0.5 and saved.steps == 2 and saved.lr == TrainConfig.__dataclass_fields__["lr"].default
    )
    res = runner.invoke(app, [*args, "--stage", "expert", "--domain", "recon", "--domain-fields", "recon=vae,ddim",
                              "--out", str(tmp_path / "bad")])  # fmt: skip
    assert res.exit_code == 2
    assert "domain 'recon' uses fields ['vae', 'ddim'], but the shards hold taesd, sr" in res.output
    # --experts RUN_A RUN_B, stop and resume from the CLI
    res = runner.invoke(app, [*args, "--stage", "expert", "--domain", "recon", "--out", str(tmp_path / "recon")])
    assert res.exit_code == 0, res.output
    out = str(tmp_path / "sef")
    # the experts' config file serves the fusion stage too: its detector comes from the experts, with a note
    res = runner.invoke(app, [*args, "--stage", "fusion", "--experts", str(tmp_path / "recon"), str(tmp_path / "sr"),
                              "--out", out, "--steps", "3", "--stop-after", "1"])  # fmt: skip
    assert res.exit_code == 0 and "stopped at step 1" in res.output, res.output
    assert "note: the fusion stage takes its detector from the experts; ignoring detector settings" in res.output
    res = runner.invoke(app, ["train", "--resume", "--out", out, "--no-progress"])
    assert res.exit_code == 0 and "trained fusion for 3 steps" in res.output, res.output


def test_tensorboard_without_the_package_warns_and_trains(shards, tmp_path, capsys):
    try:
        import torch.utils.tensorboard  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("tensorboard is installed here")
    result = train(tiny_train_config(tmp_path / "tb", shards["train"], steps=1, tensorboard=True), progress=False)
    assert result.finished and "tensorboard package is not installed" in capsys.readouterr().out
