#!/usr/bin/env bash
# One GPU check (issue #22 item 4): every GPU measurement that exists today, on one GPU; each script merges its run
# into its own results file, as it does when run by hand:
#
#   1. bench/generation.py --model sd-vae --crop 512   the SD 2.x VAE's architecture with random weights (the real
#                                                      FLOPs, no download): models alone, build, per-image loops
#   2.   ... --compile --ways models_alone,build       the same with torch.compile (the build's --compile lever)
#   3. bench/generation.py --model sd-ddim --crop 512  DDIM inversion + regeneration (50 + 50 steps) with the SD 2.1
#                                                      base UNet, VAE and scheduler from config, random weights:
#                                                      models alone, build, per-image loop (loop_public left out:
#                                                      fp32 DDIM one image at a time would take minutes)
#   4. bench/generation.py --model identity --crop 512 the pipeline with no model (pinned copies to the GPU and back,
#                                                      encode, write): its images/s per core on this machine
#   5. bench/generation.py --model taef2-sr            the real small TAEF2 and x4 Real-ESRGAN weights of the assets
#   6.   ... --model sd-vae --no-channels-last --ways models_alone    the NCHW lever's row
#   7. bench/loader.py --step vit-l                    the loader's 12 workers against a DINOv2-L/14 training step
#   8. sefdata build + a short sefmodel train          an expert run on the GPU (MobileNetV2 from the assets'
#                                                      weights): it has no results file; its times are in the log
#
# Steps 1-6 were added before any GPU ran them: their limits are guesses (about 12 minutes in all on an H200, most of
# it step 2's compilation and step 3's per-image loop); SEF_GPU_CHECK_STEPS runs a part of the check per call, e.g.
# two calls under the device tool's 10-minute limit. bench/learning.py measures accuracy over many long runs,
# fusion_cost.py runs on the CPU.
#
# Usage, from the repository root:
#   bash bench/gpu.sh [WHEELS]          WHEELS: a folder of wheels to install first (see below)
#   SEF_GPU_CHECK_DEVICE=cpu bash bench/gpu.sh [WHEELS]
#                                       a rehearsal on the CPU: the same commands at tiny sizes (2 to 4 minutes on
#                                       2 cores, a third of it the SD 2.1 UNet: its random weights are made, saved
#                                       and loaded, and a call at 64 px takes a second; --compile is noted and left
#                                       off);
#                                       its results go under the log folder, never into bench/results
# Environment:
#   SEF_ASSETS            photos/ and weights/ (default: ../shared/assets, else the repo's examples/ kit:
#                         sefdata/assets.py decides, for the benches and this script alike)
#   SEF_GPU_CHECK_OUT     the log (gpu.log) and a copy of each results file it merged into (default: out/gpu-check)
#   SEF_GPU_CHECK_SITE    where the wheels go (default: /tmp/site)
#   SEF_GPU_CHECK_STEPS   the steps to run, by name, space-separated (default: all of them, in the order above):
#                         generation-sd-vae generation-sd-vae-compile generation-sd-ddim generation-identity
#                         generation-taef2-sr generation-sd-vae-nchw loader train-shards train
# Nothing reaches the network (HF_HUB_OFFLINE=1): the SD VAE and the SD 2.1 pipeline are built from their configs,
# every other weight file comes from the assets.
#
# Wheels. The GPU machine's python3 has torch 2.11 (CUDA), transformers 5.17, accelerate, peft, huggingface_hub,
# safetensors, scikit-learn, numpy, pillow (and, through transformers, typer), but not diffusers, webdataset, spandrel,
# imagecodecs or braceexpand. Download these here (versions as in the dev venv) into .whl/ (git ignores it; the
# device tool carries it with carry: [".whl"], 41 MB):
#
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
#       diffusers==0.42.1 webdataset==1.0.2 braceexpand==0.1.7 spandrel==0.4.2 imagecodecs==2026.3.6 \
#       einops==0.8.2 requests==2.34.2 urllib3==2.8.0 certifi==2026.10.19.post1 charset_normalizer==3.5.3 \
#       huggingface_hub==1.33.0 torchvision==0.26.0
#
# Besides the five: spandrel imports einops and torchvision; diffusers checks for requests at import (requests needs
# urllib3, certifi, charset_normalizer); diffusers 0.42 needs huggingface_hub >= 1.32 while transformers 5.17 needs
# < 2, so 1.33.0 is installed only where python3's is older; torchvision 0.26.0 is the release built for torch 2.11,
# installed only where python3 has none (one it has was built for its torch). Wheels install with
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
# and run with PYTHONPATH=/tmp/site:$PWD; the CLI's package (cli/, installed as sef_cli) is linked into /tmp/site.
# The rehearsal has also run with that machine's stack rebuilt on a CPU (2026-12-06: a Python 3.12 venv with torch
# 2.11.0, torchvision 0.26.0, transformers 5.17.0, accelerate 1.15.0, huggingface_hub 1.33.0, numpy 2.5.2, plus
# these wheels): every step passed, in 1 min 52 s on 2 cores, with no warning but the DataLoader's core count.

set -uo pipefail
cd "$(dirname "$0")/.."

WHEELS=${1:-}
DEVICE=${SEF_GPU_CHECK_DEVICE:-cuda}
OUT_DIR=${SEF_GPU_CHECK_OUT:-out/gpu-check}
SITE=${SEF_GPU_CHECK_SITE:-/tmp/site}
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1

# which wheels python3 needs: all, except a torchvision or huggingface_hub (>= 1.32) it already has
choose_wheels() {
    env -u PYTHONPATH python3 - "$1" <<'EOF'
import importlib.metadata as md
import pathlib
import re
import sys

from packaging.version import Version

keep_theirs = {"torchvision": "0", "huggingface-hub": "1.32"}  # name -> the oldest release of theirs that will do
for wheel in sorted(pathlib.Path(sys.argv[1]).glob("*.whl")):
    name = re.sub(r"[-_.]+", "-", wheel.name.split("-")[0]).lower()
    try:
        have = md.version(name)
    except md.PackageNotFoundError:
        have = None
    if name in keep_theirs and have and Version(have) >= Version(keep_theirs[name]):
        print(f"python3 has {name} {have}: {wheel.name} not installed", file=sys.stderr)
        continue
    print(wheel)
EOF
}

STEPS=${SEF_GPU_CHECK_STEPS:-}
FAILED=()
step() { # step NAME SECONDS COMMAND...: run under a time limit; a failure is logged and the next step still runs
    local name=$1 limit=$2
    shift 2
    # a rehearsal checks that every command works, not how fast: on a busy CPU (CI beside other jobs) a step took
    # 4x its GPU limit, so there the limits are 4x
    [ "$DEVICE" = cpu ] && limit=$((limit * 4))
    if [ -n "$STEPS" ] && [[ " $STEPS " != *" $name "* ]]; then
        echo "=== $name: not in SEF_GPU_CHECK_STEPS, skipped"
        return
    fi
    echo
    echo "=== $name (limit ${limit}s): $*"
    local started=$SECONDS rc=0
    timeout --kill-after=15 "$limit" "$@" || rc=$?
    echo "=== $name: exit $rc after $((SECONDS - started))s"
    [ "$rc" -eq 0 ] || FAILED+=("$name")
}

main() {
    echo "bench/gpu.sh on $(hostname) at $(date -u +%FT%TZ), device $DEVICE, commit $(git rev-parse --short HEAD 2>/dev/null)"
    mkdir -p "$SITE"
    if [ -n "$WHEELS" ]; then
        local wheels
        mapfile -t wheels < <(choose_wheels "$WHEELS")
        echo "installing ${#wheels[@]} wheel(s) into $SITE"
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
            "${wheels[@]}" || return 1
    fi
    ln -sfn "$PWD/cli" "$SITE/sef_cli" # the CLI's installed name (pyproject.toml maps cli/ to sef_cli)
    export PYTHONPATH="$SITE:$PWD"

    python3 - "$DEVICE" <<'EOF' || return 1
import importlib.metadata as md
import platform
import sys

import torch

import sef_cli.sefdata, sef_cli.sefmodel, sefdata.build, sefmodel.train.data  # noqa: F401  (everything the steps import)

gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
print(f"python {platform.python_version()}, torch {torch.__version__} (CUDA {torch.version.cuda}), GPU {gpu}")
names = ("transformers", "diffusers", "huggingface_hub", "accelerate", "peft", "torchvision", "spandrel", "webdataset",
         "imagecodecs", "typer")
print(", ".join(f"{n} {md.version(n)}" for n in names))
if sys.argv[1] != "cpu" and gpu is None:
    sys.exit(f"no CUDA GPU visible for device {sys.argv[1]}; SEF_GPU_CHECK_DEVICE=cpu rehearses on the CPU")
EOF
    local assets work results
    assets=$(python3 -c "from sefdata.assets import find_assets; print(find_assets() or '')")
    [ -n "$assets" ] || { echo "no assets: set SEF_ASSETS to a folder with photos/ and weights/"; return 1; }
    echo "assets: $assets"
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT # main runs in the pipeline's subshell: this fires when it ends

    # the same commands in both modes; only the device and the sizes differ
    local gen_vae gen_ddim gen_identity gen_taef2 loader build train
    if [ "$DEVICE" = cpu ]; then
        results="$OUT_DIR/results" # a rehearsal merges into copies of the committed files, never into them
        mkdir -p "$results"
        cp bench/results/generation.json bench/results/loader.json "$results/"
        gen_vae=(--device cpu --model sd-vae --crop 64 --limit 2 --repeats 1 --batch-size 2)
        # fp32: this CPU's bf16 runs the SD 2.1 UNet at half fp32's speed; one image, one step
        gen_ddim=(--device cpu --model sd-ddim --crop 64 --steps 1 --limit 2 --images 1 --batch-size 1 --repeats 1
            --dtype fp32)
        gen_identity=(--device cpu --model identity --crop 64 --limit 2 --repeats 1 --batch-size 2)
        gen_taef2=(--device cpu --max-side 96 --limit 2 --repeats 1 --batch-size 2)
        loader=(--step vit-ti --device cpu --precision no --workers 3 --limit 4 --max-side 96 --size 32 --pairs 2
            --batches 2 --steps 1 --repeats 1)
        build=(--device cpu --limit 4 --max-side 128)
        train=(--cpu --steps 4 --batch-size 8 --num-workers 2 --image-size 64)
    else
        results=bench/results
        gen_vae=(--device "$DEVICE" --model sd-vae --crop 512 --images 64 --batch-size 16)
        gen_ddim=(--device "$DEVICE" --model sd-ddim --crop 512 --images 8 --batch-size 8)
        gen_identity=(--device "$DEVICE" --model identity --crop 512 --images 96 --batch-size 16)
        gen_taef2=(--device "$DEVICE" --images 64 --batch-size 16)
        loader=(--step vit-l --device "$DEVICE" --precision bf16 --workers 12 --pairs 16)
        build=(--device "$DEVICE" --max-side 384)
        train=(--steps 60 --batch-size 32 --num-workers 4 --image-size 96)
    fi
    local w="$assets/weights"
    local g=bench/generation.py gout=(--out "$results/generation.json")
    step generation-sd-vae 150 python3 $g "${gen_vae[@]}" "${gout[@]}"
    step generation-sd-vae-compile 300 python3 $g "${gen_vae[@]}" --compile --ways models_alone,build "${gout[@]}"
    step generation-sd-ddim 240 python3 $g "${gen_ddim[@]}" --ways models_alone,build,loop "${gout[@]}"
    step generation-identity 90 python3 $g "${gen_identity[@]}" "${gout[@]}"
    step generation-taef2-sr 70 python3 $g "${gen_taef2[@]}" "${gout[@]}"
    step generation-sd-vae-nchw 90 python3 $g "${gen_vae[@]}" --no-channels-last --ways models_alone "${gout[@]}"
    step loader 100 python3 bench/loader.py "${loader[@]}" --out "$results/loader.json"
    step train-shards 40 python3 -m sef_cli.sefdata build "$assets/photos" --out "$work/shards" --shard-size 2 \
        --gen "taesd:encoder=$w/taef2_encoder.pth,decoder=$w/taef2_decoder.pth" \
        --gen "sr:weights=$w/realesr-animevideov3.pth,scale=4" "${build[@]}"
    step train 80 python3 -m sef_cli.sefmodel train --data "$work/shards" --stage expert --domain recon \
        --backbone mobilenet_v2 --backbone-id "$w/mobilenet_v2_1.0_224" --log-every 10 --val-every 1000 \
        --save-every 1000 --out "$work/run" "${train[@]}"

    [ "$results" = bench/results ] && cp bench/results/generation.json bench/results/loader.json "$OUT_DIR/"
    echo
    echo "bench/gpu.sh: ${SECONDS}s in all; results in $results/{generation,loader}.json, log in $OUT_DIR/gpu.log"
    if [ ${#FAILED[@]} -gt 0 ]; then
        echo "FAILED: ${FAILED[*]}"
        return 1
    fi
    echo "every step passed"
}

mkdir -p "$OUT_DIR"
main 2>&1 | tee "$OUT_DIR/gpu.log"
exit "${PIPESTATUS[0]}"
