"""The documented benchmark commands work as written (issue #22): bench/generation.py skips and counts the photos the
build skips, its per-image loops run the build's own generators (in bf16 on a CPU too, without diffusers' float32
warning), bench/loader.py never runs more loader workers than it has shards, and bench/gpu.sh runs every step on the
CPU at tiny sizes. Tiny photos, real small weights."""

from __future__ import annotations

import importlib.util
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO, photo_like
from PIL import Image

from sefdata.build import build
from sefdata.config import resolve_dtype
from sefmodel.train.data import iter_samples, resolve_shards

FLOAT32_WARNING = "should be kept in float32"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def generation():
    return _load("generation")


@pytest.fixture
def kit(tmp_path, assets, taef2, realesr):
    """An assets folder: two small photos (one below a 64-px crop) and the real weights."""
    (tmp_path / "kit" / "photos").mkdir(parents=True)
    (tmp_path / "kit" / "weights").symlink_to(assets / "weights")
    Image.fromarray(photo_like(48, 40, 1)).save(tmp_path / "kit" / "photos" / "small.png")
    Image.fromarray(photo_like(80, 72, 2)).save(tmp_path / "kit" / "photos" / "wide.png")
    return tmp_path / "kit"


def test_generation_skips_and_counts_photos_smaller_than_the_crop(generation, kit, tmp_path):
    out = tmp_path / "generation.json"
    run = generation.main(["--assets", str(kit), "--crop", "64", "--images", "3", "--repeats", "1", "--dtype", "fp32",
                           "--out", str(out)])  # fmt: skip
    assert run["images"] == 3  # the one photo that fits, listed three times
    assert run["skipped"] == {"too_small": {"photos": 1, "names": ["small.png"]}}
    assert run["max_side"] is None  # a crop is cut from the full photo, not from one downscaled to 384 px
    assert json.loads(out.read_text())["runs"]["cpu/taef2-sr"]["skipped"] == run["skipped"]


def test_generation_identity_reports_the_pipeline_and_runs_the_ways_asked(generation, kit, tmp_path, capsys):
    """--model identity: the build with no model is the pipeline's own rate, per core; a lever's row (--compile,
    noted and left off on a CPU) runs only the ways asked and keeps its own key."""
    out = tmp_path / "generation.json"
    tiny = ["--assets", str(kit), "--crop", "64", "--images", "4", "--batch-size", "2", "--repeats", "1"]
    run = generation.main([*tiny, "--model", "identity", "--out", str(out)])
    pipe = run["pipeline"]
    assert pipe["images_per_second"] == run["images_per_second"]["build"]["median"] > 0
    assert pipe["images_per_second_per_core"] == pytest.approx(pipe["images_per_second"] / pipe["cores"], abs=1e-3)
    assert json.loads(out.read_text())["pipeline"] == pipe  # the CPU identity run's figure, at the top
    assert "per core" in capsys.readouterr().out.strip().splitlines()[-1]
    # the CPU's kind is recorded: rows from an AVX2 CPU and an AVX512-BF16 one differ many-fold in bf16
    cpu_record = run["machine"]["cpu"]
    assert cpu_record["model"] and cpu_record["capability"] == torch.backends.cpu.get_cpu_capability()
    assert cpu_record["native_bf16"] == (resolve_dtype("auto", torch.device("cpu")) == torch.bfloat16)

    lever = generation.main([*tiny, "--model", "identity", "--wait-ms", "5", "--compile", "--ways",
                             "models_alone,build", "--out", str(out)])  # fmt: skip
    assert set(lever["images_per_second"]) == {"models_alone", "build"} and "build_over_loop" not in lever
    cpu = lever["core_ms_per_image"]  # the wait holds no core: the build's CPU time is the pipeline's work
    assert set(cpu) == {"models_alone", "build"} and cpu["build"]["median"] > cpu["models_alone"]["median"] > 0
    share = lever["models_alone_cpu_over_build_cpu"]["median"]
    assert share == pytest.approx(cpu["models_alone"]["median"] / cpu["build"]["median"], rel=0.5) and share < 1
    assert lever["compile"] is False and lever["wait_ms_per_batch"] == 5 and "pipeline" not in lever
    assert "note: --compile is ignored on cpu" in capsys.readouterr().out
    assert set(json.loads(out.read_text())["runs"]) == {"cpu/identity", "cpu/identity+wait5ms+compile"}


def test_generation_refuses_bad_ways_and_batch_sizes_in_one_line(generation, capsys):
    for argv, message in ((["--ways", "build,nope"], "--ways: a comma-separated subset"),
                          (["--batch-size", "0"], "--batch-size must be at least 1")):  # fmt: skip
        with pytest.raises(SystemExit) as stopped:
            generation.main(argv)
        assert stopped.value.code == 2 and message in capsys.readouterr().err


def test_encoding_bench_runs_as_documented_and_times_jpeg_on_every_thread(tmp_path):
    (tmp_path / "photos").mkdir()
    Image.fromarray(photo_like(80, 72, 1)).save(tmp_path / "photos" / "a.png")
    Image.fromarray(photo_like(96, 80, 2)).save(tmp_path / "photos" / "b.jpg", quality=85)
    out = tmp_path / "encoding.json"
    run = subprocess.run(
        [sys.executable, str(REPO / "bench" / "encoding.py"), "--assets", str(tmp_path), "--side", "64",
         "--repeats", "2", "--threads", "3", "--out", str(out)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    results = json.loads(out.read_text())
    assert (results["images"], results["jpeg_images"]) == (2, 1)
    threaded = results["on_all_cores"]
    assert threaded["threads"] == 3 and len(threaded["jpeg_toolkit_over_pillow_buffer_per_repeat"]) == 2
    assert set(threaded["images_per_second"]) == {"jpeg_match_pillow", "jpeg_match_pillow_buffer"}
    bad = subprocess.run([sys.executable, str(REPO / "bench" / "encoding.py"), "--threads", "0"],
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert bad.returncode == 2 and "--threads and --repeats must be at least 1" in bad.stderr


def test_generation_help_keeps_its_usage_lines_as_written(generation):
    # a usage line continued with a backslash must show the backslash and the break, not one joined line
    usage = generation.__doc__.split("Usage: ", 1)[1]
    assert "--copies 4 \\\n           --ways models_alone,build " in usage
    assert all(len(line) <= 120 for line in usage.splitlines())


def test_sd_ddim_has_the_sd21_base_architecture(generation):
    """The bench's SD 2.1 base UNet and SD 2.x VAE have the published models' parameter counts (built on the meta
    device: no memory, no time)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel(**generation.SD21_BASE_UNET_CONFIG)
        vae = AutoencoderKL(**generation.SD_VAE_CONFIG)
    assert sum(p.numel() for p in unet.parameters()) == 865_910_724
    assert sum(p.numel() for p in vae.parameters()) == 83_653_863


def _fields(build_dir) -> dict[str, np.ndarray]:
    (sample,) = [s for url in resolve_shards([str(build_dir)]).urls for s in iter_samples(url)]
    return {k.split(".")[0]: np.asarray(Image.open(io.BytesIO(v))) for k, v in sample.items() if k.endswith(".png")}


def test_the_loop_runs_the_builds_generators(generation, kit, tmp_path):
    """At batch 1 and fp32 the per-image loop writes exactly the build's real and fakes; in bf16 it runs (its own copy
    of the SR path cast the input to bf16 before the antialiased downsample, which has no bf16 CPU kernel)."""
    listing = tmp_path / "photos.txt"
    listing.write_text(f"{kit / 'photos' / 'wide.png'}\n")
    specs = generation.generator_specs("taef2-sr", kit / "weights", tmp_path)
    args = generation.argparse.Namespace(max_side=None, crop=None, batch_size=1, device="cpu")
    build(generation.config_for(listing, tmp_path / "build", specs, args, "fp32"), progress=False)
    built = _fields(tmp_path / "build")
    for dtype, name in ((torch.float32, "fp32"), (torch.bfloat16, "bf16")):
        out = tmp_path / f"loop-{name}"
        out.mkdir()
        config = generation.config_for(listing, out, specs, args, name)
        generators, _ = generation.load_generators(config)
        assert {g.runtime.dtype for g in generators} == {dtype}
        generation.per_image_loop([kit / "photos" / "wide.png"], config, out, generators, pillow=False)
        looped = {f: np.asarray(Image.open(out / f"0_{f}.png")) for f in ("real", 0, 1)}
        assert looped["real"].shape == built["real"].shape == (72, 80, 3)
        if dtype == torch.float32:
            np.testing.assert_array_equal(looped["real"], built["real"])
            np.testing.assert_array_equal(looped[0], built["taef2"])
            np.testing.assert_array_equal(looped[1], built["sr"])


def test_vae_loads_without_the_float32_warning(generation, tiny_vae_dir, tmp_path, caplog):
    """diffusers warns on any ``.to(dtype)`` of a model; the generator loads in ``torch_dtype`` instead."""
    Image.fromarray(photo_like(16, 16)).save(tmp_path / "p.png")
    listing = tmp_path / "photos.txt"
    listing.write_text(f"{tmp_path / 'p.png'}\n")
    args = generation.argparse.Namespace(max_side=None, crop=None, batch_size=1, device="cpu")
    config = generation.config_for(listing, tmp_path, [f"vae:model={tiny_vae_dir}"], args, "bf16")
    generators, _ = generation.load_generators(config)
    generation.per_image_loop([tmp_path / "p.png"], config, tmp_path, generators, pillow=False)
    assert (tmp_path / "0_0.png").is_file()
    assert FLOAT32_WARNING not in caplog.text

    from diffusers import AutoencoderKL  # the check sees the warning where a cast does print it

    AutoencoderKL.from_pretrained(tiny_vae_dir, subfolder="vae").to("cpu", torch.bfloat16)
    assert FLOAT32_WARNING in caplog.text


def test_loader_shards_feed_the_workers_asked():
    loader = _load("loader")
    assert loader.shard_size_for(27, 0) == loader.shard_size_for(27, 1) == 4  # the CPU bench's shards, unchanged
    assert loader.shard_size_for(27, 12) == 2  # 14 shards for 12 workers
    assert loader.shard_size_for(10, 12) == 1  # 10 shards: the workers are lowered to them


def test_loader_never_runs_more_workers_than_shards(assets, taef2, realesr, tmp_path, capsys):
    loader = _load("loader")
    tiny = ["--max-side", "64", "--size", "32", "--pairs", "2", "--batches", "2", "--steps", "1", "--repeats", "1"]
    run = loader.main(["--limit", "3", "--workers", "8", *tiny, "--out", str(tmp_path / "l.json")])
    assert run["setup"]["shards"] == 3
    assert (run["setup"]["loader_workers"], run["setup"]["loader_workers_asked"]) == (3, 8)
    assert "note: 3 shard(s) feed 3 loader worker(s), not the 8 asked" in capsys.readouterr().out


@pytest.mark.slow
def test_gpu_check_rehearses_on_the_cpu(tmp_path):
    """bench/gpu.sh with SEF_GPU_CHECK_DEVICE=cpu: every step of the GPU check at tiny sizes (2 to 4 minutes on 2
    cores, a third of it the SD 2.1 UNet's), merging into copies of the committed results, never into them."""
    committed = {name: (REPO / "bench" / "results" / name).read_bytes() for name in ("generation.json", "loader.json")}
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "SEF_GPU_CHECK_DEVICE": "cpu", "SEF_GPU_CHECK_OUT": str(tmp_path / "out"),
           "SEF_GPU_CHECK_SITE": str(tmp_path / "site")}  # fmt: skip
    done = subprocess.run(["bash", str(REPO / "bench" / "gpu.sh")], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "every step passed" in (tmp_path / "out" / "gpu.log").read_text()
    runs = json.loads((tmp_path / "out" / "results" / "generation.json").read_text())["runs"]
    assert {"cpu/sd-vae", "cpu/sd-vae+compile", "cpu/sd-vae+nchw", "cpu/sd-ddim", "cpu/identity",
            "cpu/taef2-sr"} <= set(runs)  # fmt: skip
    assert runs["cpu/sd-ddim"]["steps"] == 1 and runs["cpu/sd-vae+compile"]["compile"] is False
    assert committed == {name: (REPO / "bench" / "results" / name).read_bytes() for name in committed}
