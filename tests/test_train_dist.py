"""Two training processes on the CPU (gloo), launched the way docs/training.md documents: torchrun + the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import train_helpers
from test_train_loop import _toml

from sefmodel import SEFDetector
from sefmodel.train.data import iter_samples, resolve_shards

shards, tiny_gens = train_helpers.shards, train_helpers.tiny_gens  # fixtures
REPO = Path(__file__).resolve().parents[1]


def test_two_process_run_trains_on_disjoint_data(shards, tmp_path):
    conf = _toml(
        tmp_path / "tiny.toml", steps=3, batch_size=4, num_workers=0, save_every=3, shuffle_buffer=2, log_every=1
    )
    run = tmp_path / "run"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
        "-m", "sef_cli.sefmodel", "train", "--data", str(shards["train"]), "--val-data", str(shards["val"]),
        "--config", str(conf), "--stage", "expert", "--domain", "sr", "--out", str(run), "--record-keys", "--cpu",
        "--no-progress",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("trained expert for 3 steps") == 1  # the main process reports

    keys = {}
    for rank in (0, 1):
        lines = (run / f"keys-rank{rank}.txt").read_text().split()
        keys[rank] = set(lines[1::2])
        assert len(lines) // 2 == 3  # 3 steps x 1 pair (batch 4 = 2 ranks x 1 real/fake pair)
    assert not keys[0] & keys[1]
    urls = resolve_shards([str(shards["train"])]).urls
    for rank in (0, 1):
        own = {s["__key__"] for url in urls[rank::2] for s in iter_samples(url)}
        assert keys[rank] <= own  # each rank reads only its own shards

    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    val = [m for m in metrics if m["split"] == "val"]
    assert val and val[-1]["n"] == 6 * 2  # both ranks' held-out predictions gathered: every sample once
    assert [m["step"] for m in metrics if m["split"] == "train"] == [1, 2, 3]  # written once, by rank 0
    assert SEFDetector.from_pretrained(run / "detector").expert_names == ["sr"]
