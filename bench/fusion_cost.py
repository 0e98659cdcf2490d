"""Forward cost of a fused SEF detector relative to a single expert (DESIGN.md §11), on CPU, offline.

Times, in the same run and on the same random backbone, the forward pass of
  * a single expert (one LoRA + head): the baseline;
  * a fused two-expert SEF detector, straightforward (the backbone runs once per expert);
  * the same fused detector in shared-trunk mode (blocks before the LoRA blocks run once, then branch),
and writes ``bench/results/fusion_cost.json``. Headline: fused shared-trunk cost / single-expert cost.
Expected: straightforward about 2x; shared trunk (L - k + 2k) / L, i.e. 14/12 = 1.17x for LoRA in the last
k = 2 of L = 12 blocks.

    python bench/fusion_cost.py [--repeats 7] [--batch 8] [--size 224]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from sefmodel import DetectorConfig, SEFDetector

RESULTS = Path(__file__).resolve().parent / "results" / "fusion_cost.json"
# A ViT-S/16-shaped DINOv2 at 224 px with LoRA in the last two blocks: small enough for CPU, deep enough that
# the trunk/branch split behaves like the real 24-block ViT-L.
BACKBONE = dict(
    hidden_size=192, num_hidden_layers=12, num_attention_heads=3, mlp_ratio=4, image_size=224, patch_size=16
)


def build(experts: list[str], fusion: str, last_k: int, size: int) -> SEFDetector:
    torch.manual_seed(0)  # same backbone weights for every detector
    config = DetectorConfig(
        backbone="dinov2",
        backbone_config=BACKBONE,
        image_size=size,
        experts=experts,
        fusion=fusion,
        lora={"rank": 8, "blocks": f"last:{last_k}"},
    )
    return SEFDetector(config).eval()


def time_ms(fn, x: torch.Tensor, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(x)
        out.append((time.perf_counter() - start) * 1000)
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=9, help="timed forwards per mode, interleaved (median)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed forwards per mode first")
    parser.add_argument("--batch", type=int, default=8, help="images per forward")
    parser.add_argument("--size", type=int, default=224, help="input side in pixels")
    parser.add_argument("--last-k", type=int, default=2, help="LoRA in the last K blocks")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads; 1 (default) measures compute cost without thread-scheduling noise on small "
        "or shared machines, where 2+ threads made single runs swing by 5x",
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="results JSON path")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    single = build(["recon"], "single", args.last_k, args.size)
    fused = build(["recon", "sr"], "sef", args.last_k, args.size)
    x = torch.randn(args.batch, 3, args.size, args.size, generator=torch.Generator().manual_seed(0))
    modes = {
        "single_expert": lambda t: single(t),
        "fused_straightforward": lambda t: fused(t, shared_trunk=False),
        "fused_shared_trunk": lambda t: fused(t, shared_trunk=True),
    }
    samples: dict[str, list[float]] = {name: [] for name in modes}
    with torch.inference_mode():
        for fn in modes.values():
            time_ms(fn, x, args.warmup)
        # Interleave the modes so drift in machine load hits all three alike.
        for _ in range(args.repeats):
            for name, fn in modes.items():
                samples[name] += time_ms(fn, x, 1)
        straight, shared = fused(x, shared_trunk=False), fused(x, shared_trunk=True)
        max_diff = (straight["logits"] - shared["logits"]).abs().max().item()

    median = {name: statistics.median(v) for name, v in samples.items()}
    shared_ratio = median["fused_shared_trunk"] / median["single_expert"]
    straight_ratio = median["fused_straightforward"] / median["single_expert"]
    layers, k = BACKBONE["num_hidden_layers"], args.last_k
    result = {
        "headline": {"metric": "fused_shared_over_single_cost", "value": round(shared_ratio, 3), "unit": "x"},
        "ratios": {
            "fused_shared_over_single": round(shared_ratio, 3),
            "fused_straightforward_over_single": round(straight_ratio, 3),
            "expected_shared_block_ratio": round((layers - k + 2 * k) / layers, 3),
            "expected_straightforward_block_ratio": 2.0,
        },
        "ms_per_batch_median": {name: round(v, 2) for name, v in median.items()},
        "ms_per_batch_samples": {name: [round(s, 2) for s in v] for name, v in samples.items()},
        "max_abs_logit_diff_shared_vs_straightforward": max_diff,
        "config": {
            "backbone": "dinov2 (random, from config)",
            "backbone_config": BACKBONE,
            "experts": 2,
            "fusion": "sef",
            "lora": {"rank": 8, "blocks": f"last:{k}", "targets": ["attention", "mlp"]},
            "batch": args.batch,
            "image_size": args.size,
            "repeats": args.repeats,
            "warmup": args.warmup,
        },
        "environment": {
            "torch": torch.__version__,
            "python": platform.python_version(),
            "device": "cpu",
            "torch_threads": torch.get_num_threads(),
            "load_average_1min_at_end": round(os.getloadavg()[0], 2),
            "cpu_count": os.cpu_count(),
            "machine": platform.machine(),
            "processor": platform.processor() or platform.uname().machine,
            "platform": platform.platform(),
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for name, value in median.items():
        print(f"{name:24s} {value:9.1f} ms/batch")
    print(f"fused straightforward / single: {straight_ratio:.2f}x")
    print(f"fused_shared_over_single_cost: {shared_ratio:.2f}x")
    return result


if __name__ == "__main__":
    main()
