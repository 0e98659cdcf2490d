"""Forward cost of a fused SEF detector and of its distilled student relative to a single expert (DESIGN.md §11), on
CPU, offline, for the default detector configuration, a cheaper LoRA placement and the learning bench's detector,
side by side with what that detector scored on held-out photos in ``bench/learning.py``.

For each configuration (case), in the same run and on the same random backbone built from config, it times the
forward pass of
  * a single expert (one LoRA + head): the baseline;
  * a fused two-expert detector, straightforward (the backbone runs once per expert);
  * the same fused detector in shared-trunk mode (blocks before the first LoRA block run once, then branch);
  * the distilled student of that fused detector (``--stage distill``: one LoRA, the teacher's settings).
Every forward of every case is interleaved with the others, so drift in machine load hits them alike.

Cases:
  * ``vit_default``: a ViT-S/16-shaped DINOv2 with the default ``LoraSettings`` (LoRA in every block: nothing
    before the first adapted block, so no shared trunk; expected 2x) — what a detector gets unless told otherwise;
  * ``vit_last:2``: the same with LoRA in the last 2 of 12 blocks (expected (12 - 2 + 2*2) / 12 = 1.17x);
  * ``mobilenet_v2_learning``: the MobileNetV2 architecture (random weights, same FLOPs as the pretrained one) at
    the setting and with the fusion head that ``bench/learning.py`` chose (stage, pooling, input filter, spectrum
    feature, tile size), carrying the held-out AP of its experts, fused detector and student from
    ``bench/results/learning.json`` (by-source split).

Writes ``bench/results/fusion_cost.json``. Headline: the default configuration's fused (shared-trunk mode) cost
over a single expert; each case also reports its student's cost over a single expert.

    python bench/fusion_cost.py [--repeats 9] [--batch 8] [--size 224]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from sefmodel import DetectorConfig, SEFDetector
from sefmodel.train.tasks import student_config

RESULTS = Path(__file__).resolve().parent / "results"
LEARNING = RESULTS / "learning.json"
# A ViT-S/16-shaped DINOv2 at 224 px: small enough for CPU, deep enough that the trunk/branch split behaves like
# the real 24-block ViT-L.
VIT_LAST_K = 2  # the cheaper ViT placement timed beside the default
VIT = dict(hidden_size=192, num_hidden_layers=12, num_attention_heads=3, mlp_ratio=4, image_size=224, patch_size=16)
# The MobileNetV2 setting when learning.json has none yet.
CNN_FALLBACK = {"feature_layer": 2, "feature_pool": "mean_std", "input_filter": "none", "spectrum": False}


def build(case: dict, experts: list[str], fusion: str) -> SEFDetector:
    torch.manual_seed(0)  # same backbone weights for every detector of a case
    head = {k: v for k, v in case.get("fusion_head", {}).items() if k != "fusion"} if fusion != "single" else {}
    config = DetectorConfig(experts=experts, fusion=fusion, **case["config"], **head)
    return SEFDetector(config).eval()


def student_of(fused: SEFDetector) -> SEFDetector:
    """The distill stage's student of ``fused``: its settings, one expert (as ``--stage distill`` builds it)."""
    torch.manual_seed(0)
    return SEFDetector(student_config(fused.config, {})).eval()


def cases(size: int) -> list[dict]:
    """The configurations timed: the default, a cheaper ViT placement, and the learning bench's detector."""
    vit = {"backbone": "dinov2", "backbone_config": VIT, "processor": {"size": size}}
    out = [
        {"name": "vit_default", "config": vit, "note": "DetectorConfig defaults (LoRA in every block)"},
        {
            "name": f"vit_last:{VIT_LAST_K}",
            "config": {**vit, "lora": {"blocks": f"last:{VIT_LAST_K}"}},
            "note": f"LoRA in the last {VIT_LAST_K} of {VIT['num_hidden_layers']}",
        },
    ]
    learned = json.loads(LEARNING.read_text()) if LEARNING.is_file() else {}
    split = learned.get("by_source", {})
    chosen = split.get("chosen", {})
    setting = {k: chosen.get("setting", {}).get(k, v) for k, v in CNN_FALLBACK.items()}
    held = split.get("heldout", {})
    out.append({
        "name": "mobilenet_v2_learning",
        "config": {"backbone": "mobilenet_v2", "backbone_config": {}, **setting,
                   "processor": {"size": learned.get("data", {}).get("tile", 96)}, "lora": {"blocks": "all"}},
        "fusion_head": chosen.get("fusion_head", {"fusion": "sef"}),
        "note": f"the learning bench's detector and fusion ({chosen.get('fusion', 'sef, no learning.json yet')})",
        "accuracy": {name: held[name]["map"] for name in ("recon", "sr", "sef", "distilled") if name in held},
    })  # fmt: skip
    return out


def time_ms(fn: Callable[[torch.Tensor], object], x: torch.Tensor) -> float:
    start = time.perf_counter()
    fn(x)
    return (time.perf_counter() - start) * 1000


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=9, help="timed forwards per mode, interleaved (median)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed forwards per mode first")
    parser.add_argument("--batch", type=int, default=8, help="images per forward")
    parser.add_argument("--size", type=int, default=224, help="input side of the ViT cases in pixels")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads; 1 (default) measures compute cost without thread-scheduling noise on small "
        "or shared machines, where 2+ threads made single runs swing by 5x",
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "fusion_cost.json", help="results JSON path")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    timed: list[tuple[str, str, Callable, torch.Tensor]] = []  # (case, mode, forward, input)
    checks: dict[str, float] = {}
    table = cases(args.size)
    for case in table:
        single = build(case, ["recon"], "single")
        fused = build(case, ["recon", "sr"], case.get("fusion_head", {}).get("fusion", "sef"))
        student = student_of(fused)
        side = fused.image_size
        x = torch.randn(args.batch, 3, side, side, generator=torch.Generator().manual_seed(0))
        case.update(image_size=side, trunk_blocks=fused.trunk_split, blocks=fused.feature_index + 1)
        timed += [
            (case["name"], "single_expert", single, x),
            (case["name"], "fused_straightforward", lambda t, f=fused: f(t, shared_trunk=False), x),
            (case["name"], "fused_shared_trunk", lambda t, f=fused: f(t, shared_trunk=True), x),
            (case["name"], "distilled_student", student, x),
        ]
        with torch.inference_mode():
            straight, shared = fused(x, shared_trunk=False), fused(x, shared_trunk=True)
        checks[case["name"]] = (straight["logits"] - shared["logits"]).abs().max().item()

    samples: dict[str, dict[str, list[float]]] = {c["name"]: {} for c in table}
    with torch.inference_mode():
        for _, _, fn, x in timed:
            for _ in range(args.warmup):
                fn(x)
        for _ in range(args.repeats):  # one forward of every mode of every case per round
            for name, mode, fn, x in timed:
                samples[name].setdefault(mode, []).append(time_ms(fn, x))

    rows = []
    for case in table:
        median = {mode: statistics.median(v) for mode, v in samples[case["name"]].items()}
        rows.append({
            "name": case["name"], "note": case["note"], "config": case["config"], "image_size": case["image_size"],
            "shared_trunk_blocks": case["trunk_blocks"], "blocks_run": case["blocks"],
            "fused_shared_over_single": round(median["fused_shared_trunk"] / median["single_expert"], 3),
            "fused_straightforward_over_single": round(median["fused_straightforward"] / median["single_expert"], 3),
            "distilled_over_single": round(median["distilled_student"] / median["single_expert"], 3),
            "fusion": case.get("fusion_head", {"fusion": "sef"}),
            "ms_per_batch_median": {m: round(v, 2) for m, v in median.items()},
            "ms_per_batch_spread": {m: [round(min(v), 2), round(max(v), 2)] for m, v in samples[case["name"]].items()},
            "max_abs_logit_diff_shared_vs_straightforward": checks[case["name"]],
            **({"heldout_map_from_learning_json": case["accuracy"]} if case.get("accuracy") else {}),
        })  # fmt: skip
    layers = VIT["num_hidden_layers"]
    result = {
        "headline": {
            "metric": "default_fused_over_single_cost",
            "value": rows[0]["fused_shared_over_single"],
            "unit": "x",
            "is": "the default detector configuration's two-expert SEF forward over one expert's (shared-trunk mode)",
        },
        "cases": rows,
        "expected_block_ratios": {
            "vit_default": 2.0,
            f"vit_last:{VIT_LAST_K}": round((layers - VIT_LAST_K + 2 * VIT_LAST_K) / layers, 3),
        },
        "settings": {"batch": args.batch, "repeats": args.repeats, "warmup": args.warmup, "interleaved": True},
        "environment": {
            "torch": torch.__version__,
            "python": platform.python_version(),
            "device": "cpu",
            "torch_threads": torch.get_num_threads(),
            "load_average_1min_at_end": round(os.getloadavg()[0], 2),
            "cpu_count": os.cpu_count(),
            "machine": platform.machine(),
            "platform": platform.platform(),
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for row in rows:
        acc = row.get("heldout_map_from_learning_json", {})
        print(f"{row['name']:24s} fused/single {row['fused_shared_over_single']:.2f}x shared trunk, "
              f"{row['fused_straightforward_over_single']:.2f}x straightforward, "
              f"student/single {row['distilled_over_single']:.2f}x"
              + (f"; held-out mean AP {acc}" if acc else ""))  # fmt: skip
    print(f"default_fused_over_single_cost: {rows[0]['fused_shared_over_single']:.2f}x")
    return result


if __name__ == "__main__":
    main()
