"""How long ``--help`` takes, for both CLIs and their commands (DESIGN.md §11; the issue asks for under 0.5 s).

Each case is a fresh interpreter running this checkout's CLI (``python -m cli.sefdata ...`` from the repository
root), timed from process start to exit. Measured in the same run, interleaved, for comparison:
  * ``python -c pass``: the interpreter's own start-up, the floor no CLI can beat;
  * the import of the model stack (torch, transformers, peft, the detector and the trainer): what every ``--help``
    paid before the commands imported it lazily (2.7-3 s on the machine the issue was filed from).

Writes ``bench/results/cli_help.json`` with median and spread (min, max) per case. Headline: the slowest
``--help`` median.

    python bench/cli_help.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results" / "cli_help.json"
HELP_CASES = {
    "sefdata --help": ["-m", "cli.sefdata", "--help"],
    "sefdata build --help": ["-m", "cli.sefdata", "build", "--help"],
    "sefdata publish -h": ["-m", "cli.sefdata", "publish", "-h"],
    "sefmodel --help": ["-m", "cli.sefmodel", "--help"],
    "sefmodel train --help": ["-m", "cli.sefmodel", "train", "--help"],
    "sefmodel predict -h": ["-m", "cli.sefmodel", "predict", "-h"],
    "sefmodel --version": ["-m", "cli.sefmodel", "--version"],
}
BASELINES = {
    "python -c pass (interpreter floor)": ["-c", "pass"],
    "import of the model stack (the old --help cost)": [
        "-c",
        "import torch, transformers, peft, sefmodel.model.detector, sefmodel.train.trainer",
    ],
}


def run_once(args: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, *args], cwd=REPO, check=True, stdout=subprocess.DEVNULL,
                   env={**os.environ, "COLUMNS": "100"})  # fmt: skip
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="runs per case (>= 3), interleaved")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results JSON path")
    args = parser.parse_args(argv)
    if args.repeats < 3:
        parser.error("--repeats must be at least 3")
    cases = {**HELP_CASES, **BASELINES}
    for argv_ in cases.values():  # warm the file cache once, unmeasured
        run_once(argv_)
    samples: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(args.repeats):  # interleaved: a load spike hits every case alike
        for name, argv_ in cases.items():
            samples[name].append(run_once(argv_))

    def summary(values: list[float]) -> dict:
        return {"median": round(statistics.median(values), 3), "min": round(min(values), 3),
                "max": round(max(values), 3)}  # fmt: skip

    stats = {name: summary(values) for name, values in samples.items()}
    slowest = max(HELP_CASES, key=lambda name: stats[name]["median"])
    result = {
        "headline": {"metric": "slowest_help_median", "value": stats[slowest]["median"], "unit": "s"},
        "slowest_case": slowest,
        "seconds": stats,
        "samples": {name: [round(v, 3) for v in values] for name, values in samples.items()},
        "repeats": args.repeats,
        "environment": {
            "python": platform.python_version(),
            "machine": platform.machine(),
            "cpus": os.cpu_count(),
            "load_average_1min": round(os.getloadavg()[0], 2),
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for name, s in stats.items():
        print(f"{name:50s} median {s['median']:.3f} s  (min {s['min']:.3f}, max {s['max']:.3f})")
    print(f"slowest_help_median: {stats[slowest]['median']:.3f} s ({slowest})")
    return result


if __name__ == "__main__":
    main()
