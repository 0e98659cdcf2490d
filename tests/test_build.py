"""End-to-end builds with tiny random models: alignment, bad input, shard contract, loaders, determinism, resume."""

from __future__ import annotations

import io
import json
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image, JpegImagePlugin
from train_helpers import write_photos

from sefcore.errors import SefError, SkipSample
from sefdata.build import build
from sefdata.config import BuildConfig, resolve_dtype
from sefdata.manifest import write_manifest
from sefdata.verify import verify


@pytest.fixture
def gens(tiny_vae_dir, tiny_sr_file, tiny_taesd_files) -> list[str]:
    enc, dec = tiny_taesd_files
    return [
        f"vae:model={tiny_vae_dir}",
        f"sr:weights={tiny_sr_file},scale=2",
        f"taesd:encoder={enc},decoder={dec}",
    ]


def _config(sources, out, gens, **kw) -> BuildConfig:
    kw = {"shard_size": 4, "batch_size": 2, **kw}
    return BuildConfig(sources=[str(s) for s in sources], out=str(out), gen=gens, **kw)


def _samples(out: Path) -> list[dict]:
    tars = sorted(str(p) for p in out.glob("shard-*.tar"))
    return list(wds.WebDataset(tars, shardshuffle=False, empty_check=False))


def _stats(out: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(out.glob("shard-*.stats.json"))]


def test_build_aligns_and_counts_bad_input(corpus, gens, tmp_path):
    out = tmp_path / "out"
    summary = build(_config([corpus], out, gens), progress=False)
    # 4 good photos + cmyk, 16-bit, palette, gray converted by rule; 5 skipped by reason
    assert summary.failed == Counter(empty=1, not_an_image=1, corrupt=1, animated=1, too_small=1)
    assert summary.written == 8 and summary.inputs == 13 and summary.num_shards == 4
    skipped = {s["source"].rsplit("/", 1)[-1]: s["reason"] for st in _stats(out) for s in st["skipped"]}
    assert skipped == {"empty.jpg": "empty", "text.png": "not_an_image", "truncated.jpg": "corrupt",
                       "anim.gif": "animated", "tiny.png": "too_small"}  # fmt: skip

    samples = _samples(out)
    assert len(samples) == 8
    for s in samples:
        meta = json.loads(s["json"])
        ext = "jpg" if meta["source_format"] == "JPEG" else "png"
        fields = {k for k in s if not k.startswith("__")}
        assert fields == {f"real.{ext}", f"vae.{ext}", f"sr.{ext}", f"taesd.{ext}", "json"}, fields
        assert "." not in s["__key__"]
        real = Image.open(io.BytesIO(s[f"real.{ext}"]))
        assert real.mode == "RGB" and list(real.size) == meta["size"]
        assert real.size[0] % 8 == 0 and real.size[1] % 8 == 0  # lcm of vae (2), sr (2) and taesd (8)
        for name in ("vae", "sr", "taesd"):
            fake = Image.open(io.BytesIO(s[f"{name}.{ext}"]))
            assert fake.size == real.size and fake.mode == "RGB" and fake.format == real.format
            if real.format == "JPEG":  # same quantisation tables and subsampling as the real
                assert fake.quantization == real.quantization
                assert JpegImagePlugin.get_sampling(fake) == JpegImagePlugin.get_sampling(real)
            assert meta["generators"][name]["seed"] >= 0
    by_source = {json.loads(s["json"])["source"].rsplit("/", 1)[-1]: s for s in samples}
    # the real keeps its source's JPEG tables (camera tables, not libjpeg defaults)
    rocket = by_source["rocket.jpg"]
    source = Image.open(corpus / "rocket.jpg")
    assert Image.open(io.BytesIO(rocket["real.jpg"])).quantization == source.quantization
    conversions = {k: json.loads(s["json"])["conversions"] for k, s in by_source.items()}
    assert conversions["cmyk.jpg"] == "cmyk_to_rgb" and conversions["sixteen.png"] == "16bit_to_8bit,gray_to_rgb"
    assert conversions["palette.png"] == "alpha_on_white" and conversions["gray.png"] == "gray_to_rgb"
    assert conversions["rocket.jpg"] == ""
    # under `match` the JPEG sources fill shards of their own, first: one encoding per shard; the last shard held
    # tiny.png alone, which was skipped: it is done (its skip is counted) but has no tar and is not in the manifest
    assert [st.get("encoding") for st in _stats(out)] == ["jpg", "png", "png", None]
    assert sorted(p.name for p in out.glob("*.tar")) == [f"shard-00000{i}.tar" for i in range(3)]

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["__kind__"] == "wids-shard-index-v1"
    assert [s["nsamples"] for s in manifest["shardlist"]] == [st["written"] for st in _stats(out)][:3]
    assert manifest["sef"]["totals"] == {
        "inputs": 13,
        "written": 8,
        "failed": dict(sorted(summary.failed.items())),
    }
    assert set(manifest["sef"]["generators"]) == {"vae", "sr", "taesd"}
    assert manifest["sef"]["versions"]["torch"]


def test_same_seed_builds_are_byte_identical_and_resume_redoes_only_missing(corpus, gens, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    build(_config([corpus], a, gens, workers=4), progress=False)
    for rank in (1, 0):  # what must not change the bytes: one thread instead of four, two ranks instead of one
        build(_config([corpus], b, gens, workers=1, rank=rank, world=2), progress=False)
    tars = sorted(p.name for p in a.glob("*.tar"))
    assert tars and tars == sorted(p.name for p in b.glob("*.tar"))
    for name in tars:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name

    # interrupted build: shard 1 lost its done marker and left a partial tar; the re-run redoes only shard 1
    (b / "shard-000001.stats.json").unlink()
    (b / "shard-000001.tar").rename(b / "shard-000001.tar.partial")
    (b / "shard-000001.tar.partial").write_bytes(b"garbage")
    summary = build(_config([corpus], b, gens), progress=False)
    assert summary.built == [1] and summary.already_done == 3
    assert (a / "shard-000001.tar").read_bytes() == (b / "shard-000001.tar").read_bytes()
    assert not (b / "shard-000001.tar.partial").exists()


def test_a_resume_refuses_sources_that_list_differently(tmp_path):
    """A file added where the listing sorts it first shifts every shard's inputs: a resume would build the rest from
    the new listing beside shards of the old one (some images twice, some never). A resume must see the same inputs:
    it stops, naming the first finished shard, and nothing is lost."""
    photos, out = write_photos(tmp_path / "photos", 3, 0), tmp_path / "out"
    config = _config([str(photos)], out, ["identity"], shard_size=2)
    build(config, progress=False)
    (out / "shard-000001.stats.json").unlink()  # interrupted before shard 1 was done
    before = (out / "shard-000000.tar").read_bytes()
    for name in ("a-first.png", "z-last.png"):  # ahead of the finished shard, or only in the unfinished one
        (photos / name).write_bytes((photos / "img0000.png").read_bytes())
        with pytest.raises(SefError, match=r"the sources list other files than when shard 0 of .* new --out"):
            build(config, progress=False)
        (photos / name).unlink()
    assert (out / "shard-000000.tar").read_bytes() == before
    assert build(config, progress=False).built == [1]  # the same listing again: the resume goes on


def test_shards_of_two_listings_get_no_manifest(tmp_path):
    """Ranks list the sources each on their own: a rank that saw one more file (a folder still being filled) cut
    other shards. Whoever writes the manifest (rank 0 at the end, or `sefdata manifest`) refuses, and `sefdata
    verify` names the sample that two shards hold."""
    photos, out = write_photos(tmp_path / "photos", 4, 0), tmp_path / "out"
    (photos / "a0.png").write_bytes((photos / "img0000.png").read_bytes())  # sorts first: shifts every shard
    build(_config([str(photos)], out, ["identity"], shard_size=2, rank=1, world=2), progress=False)
    (photos / "a0.png").unlink()  # rank 0 lists the folder without it
    with pytest.raises(SefError, match=r"planned from 2 different listings of the sources \(shards 0; shards 1\)"):
        build(_config([str(photos)], out, ["identity"], shard_size=2, rank=0, world=2), progress=False)
    with pytest.raises(SefError, match="different listings"):
        write_manifest(out)
    assert not (out / "manifest.json").exists()
    problems = verify(out).problems
    assert any("img0001" in p and "also in shard-000000.tar" in p for p in problems["shard-000001.tar"]), problems


def test_a_different_config_refuses_an_old_output_folder(corpus, gens, tmp_path):
    out = tmp_path / "out"
    build(_config([corpus], out, gens, limit=2), progress=False)
    with pytest.raises(SefError, match="different build"):
        build(_config([corpus], out, gens, limit=2, seed=1), progress=False)


def test_shards_load_with_plain_webdataset_decoding_and_hf_datasets(corpus, gens, tmp_path):
    out = tmp_path / "out"
    build(_config([corpus], out, gens), progress=False)
    decoded = list(wds.WebDataset(sorted(str(p) for p in out.glob("*.tar")), shardshuffle=False).decode("pil"))
    assert len(decoded) == 8 and all(isinstance(s.get("real.jpg", s.get("real.png")), Image.Image) for s in decoded)

    import datasets

    # one format per dataset for the HF builder: load the JPEG-only and PNG-only shards of a png build
    png_out = tmp_path / "png"
    build(_config([corpus], png_out, gens, format="png"), progress=False)
    ds = datasets.load_dataset("webdataset", data_files={"train": sorted(str(p) for p in png_out.glob("*.tar"))},
                               split="train")  # fmt: skip
    assert len(ds) == 8
    assert {"real.png", "vae.png", "sr.png", "taesd.png", "json"} <= set(ds.column_names)
    row = ds[0]
    for field in ("real.png", "vae.png", "sr.png", "taesd.png"):
        assert isinstance(row[field], Image.Image) and row[field].size == row["real.png"].size
    assert json.loads(row["json"]) if isinstance(row["json"], str) else row["json"]["key"] == row["__key__"]


def test_tar_members_have_fixed_metadata(corpus, gens, tmp_path):
    out = tmp_path / "out"
    build(_config([corpus], out, gens, limit=3), progress=False)
    members = []
    for path in sorted(out.glob("*.tar")):
        with tarfile.open(path) as tar:
            members += tar.getmembers()
    assert members and all(m.mtime == 0 and m.uname == "sef" and m.mode == 0o444 for m in members)
    keys = [m.name.split(".", 1)[0] for m in members]
    assert len(set(keys)) == sum(st["written"] for st in _stats(out)) == 2  # anim.gif, chelsea.png, cmyk.jpg
    assert len(keys) == 2 * 5  # real, vae, sr, taesd, json


def test_sources_list_tar_and_dataset_folder(corpus, gens, tmp_path):
    listing = tmp_path / "list.txt"
    listing.write_text("# two photos\n" + str(corpus / "rocket.jpg") + "\n\ncorpus/chelsea.png\n")
    out = tmp_path / "from_list"
    s = build(_config([listing], out, gens), progress=False)
    assert s.written == 2

    # a build's own shards are a source: its real.* field is used
    again = tmp_path / "from_tar"
    s = build(_config([str(out / "shard-*.tar")], again, gens), progress=False)
    assert s.written == 2
    first = _samples(again)[0]
    assert json.loads(first["json"])["source"] == "shard-000000.tar#" + _samples(out)[0]["__key__"]
    # sources are recorded relative to where they were found: the list's line, never an absolute path
    assert sorted(json.loads(x["json"])["source"] for x in _samples(out)) == ["corpus/chelsea.png", "corpus/rocket.jpg"]

    import datasets

    ds = datasets.Dataset.from_dict({"image": [str(corpus / "rocket.jpg"), str(corpus / "gray.png")], "label": [0, 1]})
    ds = ds.cast_column("image", datasets.Image())
    ds.save_to_disk(tmp_path / "hfds")
    s = build(_config([tmp_path / "hfds"], tmp_path / "from_hf", gens), progress=False)
    assert s.written == 2
    with pytest.raises(SefError, match="no image column named 'pixels'"):
        build(_config([tmp_path / "hfds"], tmp_path / "x", gens, image_field="pixels"), progress=False)


def test_a_streamed_dataset_with_unknown_features_reads_the_named_column(corpus, tmp_path, monkeypatch):
    """Hub datasets streamed from raw files often announce no features; --image-field then names the column."""
    import datasets

    from sefdata.sources import iter_sources, read_item

    photos = [corpus / "rocket.jpg", corpus / "gray.png"]

    def rows():
        yield {"img": {"bytes": photos[0].read_bytes(), "path": None}, "caption": "a"}
        yield {"img": photos[1].read_bytes(), "caption": "b"}
        yield {"img": {"bytes": None, "path": str(corpus / "vanished.png")}, "caption": "c"}

    streamed = datasets.IterableDataset.from_generator(rows)
    assert streamed.features is None
    monkeypatch.setattr(datasets, "load_dataset", lambda ref, split, streaming: streamed)
    items = list(iter_sources(["someone/photos"], image_field="img"))
    assert [read_item(i) for i in items[:2]] == [p.read_bytes() for p in photos]
    with pytest.raises(SkipSample, match="missing"):
        read_item(items[2])
    with pytest.raises(SefError, match="columns: unknown until read .name one with --image-field"):
        list(iter_sources(["someone/photos"]))
    with pytest.raises(SefError, match="no column 'pixels'; columns: img, caption"):
        list(iter_sources(["someone/photos"], image_field="pixels"))


def test_ranks_partition_the_shards(corpus, gens, tmp_path):
    whole = tmp_path / "whole"
    build(_config([corpus], whole, gens), progress=False)
    split = tmp_path / "split"
    results = [build(_config([corpus], split, gens, rank=r, world=3), progress=False) for r in (1, 2, 0)]
    assert sorted(i for r in results for i in r.built) == [0, 1, 2, 3]
    assert results[0].built == [1] and results[1].built == [2] and results[2].built == [0, 3]
    assert results[0].manifest is None and results[2].manifest is not None  # rank 0 finished last: writes it
    for p in whole.glob("*.tar"):
        assert (split / p.name).read_bytes() == p.read_bytes()


def test_a_generator_failure_skips_the_sample_not_the_build(corpus, gens, tmp_path, monkeypatch):
    from sefdata.generators.sr import SrGenerator

    original = SrGenerator.generate

    def flaky(self, images, seeds):
        if images.shape[-1] == 88:  # the chelsea photo (90x60 -> 88x56) breaks the model
            raise RuntimeError("boom")
        return original(self, images, seeds)

    monkeypatch.setattr(SrGenerator, "generate", flaky)
    s = build(_config([corpus / "chelsea.png", corpus / "rocket.jpg"], tmp_path / "o", gens), progress=False)
    assert s.written == 1 and s.failed == Counter(generation_failed=1)
    (entry,) = [e for st in _stats(tmp_path / "o") for e in st["skipped"]]
    assert entry["reason"] == "generation_failed" and "boom" in entry["detail"]


def test_auto_dtype_is_bf16_only_where_the_hardware_computes_it(monkeypatch):
    cpu, gpu = torch.device("cpu"), torch.device("cuda", 0)
    assert resolve_dtype("fp32", cpu) is torch.float32 and resolve_dtype("fp16", gpu) is torch.float16
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert resolve_dtype("auto", cpu) is torch.float32  # emulated bf16 is slower than fp32 on a CPU
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    assert resolve_dtype("auto", cpu) is torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: False)
    assert resolve_dtype("auto", gpu) is torch.float16  # pre-Ampere GPUs
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: not including_emulation)
    assert resolve_dtype("auto", gpu) is torch.bfloat16


def test_weights_are_hashed_once_per_build_not_per_sample(corpus, gens, tmp_path, monkeypatch):
    from sefdata.generators import taesd

    calls = []
    original = taesd.TaesdGenerator.model_info
    monkeypatch.setattr(taesd.TaesdGenerator, "model_info", lambda self: calls.append(1) or original(self))
    summary = build(_config([corpus], tmp_path / "o", gens, shard_size=2), progress=False)
    assert summary.written >= 4 and summary.num_shards >= 2 and len(calls) == 1


def test_the_resolved_precision_is_recorded_per_shard(corpus, gens, tmp_path):
    build(_config([corpus], tmp_path / "o", gens), progress=False)
    stats = json.loads(next((tmp_path / "o").glob("shard-*.stats.json")).read_text())
    want = str(resolve_dtype("auto", torch.device("cpu"))).removeprefix("torch.")
    assert {g["runtime"]["dtype"] for g in stats["generators"].values()} == {want}
    assert stats["generators"]["taesd"]["model"]["dtype"] == want


def test_the_batch_size_left_unset_is_one_on_a_cpu_and_recorded_as_resolved(corpus, gens, tmp_path):
    from sefdata.config import default_batch_size

    assert (default_batch_size(torch.device("cpu")), default_batch_size(torch.device("cuda", 0))) == (1, 8)
    build(BuildConfig(sources=[str(corpus)], out=str(tmp_path / "o"), gen=gens, device="cpu"), progress=False)
    stats = json.loads(next((tmp_path / "o").glob("shard-*.stats.json")).read_text())
    assert stats["settings"]["runtime"]["batch_size"] == 1
    # a build begun with another batch size stops a resume that leaves it unset, naming the difference
    build(_config([corpus], tmp_path / "o2", gens, batch_size=4), progress=False)
    with pytest.raises(SefError, match=r"batch_size: 4 -> 1"):
        build(_config([corpus], tmp_path / "o2", gens, batch_size=None), progress=False)
    with pytest.raises(SefError, match="--batch-size must be at least 1"):
        BuildConfig(sources=["x"], out="o", gen=gens, batch_size=0)


def test_a_cpu_build_records_torch_threads_and_a_resume_on_other_threads_stops(corpus, gens, tmp_path):
    """One image per call on a CPU: oneDNN splits each image's convolutions across threads, so the count changes
    bytes and the resume check must see it (the tests run torch on one thread)."""
    out = tmp_path / "o"
    build(_config([corpus], out, gens, batch_size=1), progress=False)
    stats = json.loads(next(out.glob("shard-*.stats.json")).read_text())
    assert stats["settings"]["runtime"]["torch_threads"] == 1
    torch.set_num_threads(2)
    try:
        with pytest.raises(SefError, match=r"torch_threads: 1 -> 2.*OMP_NUM_THREADS"):
            build(_config([corpus], out, gens, batch_size=1), progress=False)
    finally:
        torch.set_num_threads(1)


def test_no_input_and_bad_flags_are_clear_errors(tmp_path, gens):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SefError, match="no input images"):
        build(_config([tmp_path / "empty"], tmp_path / "o", gens), progress=False)
    with pytest.raises(SefError, match="same field"):
        _config([tmp_path], tmp_path / "o", [gens[0], gens[0]])
    with pytest.raises(SefError, match="--shard-size"):
        BuildConfig(sources=["x"], out="o", gen=gens, shard_size=0)
    with pytest.raises(SefError, match="--dtype"):
        BuildConfig(sources=["x"], out="o", gen=gens, dtype="fp8")
    px = np.zeros((8, 8, 3), np.uint8)
    Image.fromarray(px).save(tmp_path / "a.png")
    with pytest.raises(SefError, match="--crop 12 must be a multiple of 8"):
        build(_config([tmp_path / "a.png"], tmp_path / "o2", gens, crop=12), progress=False)


def test_the_manifest_is_a_wids_index(corpus, gens, tmp_path):
    """README: wids.ShardListDataset("DIR/manifest.json") reads the build by index (run where wids is installed)."""
    wids = pytest.importorskip("wids")
    out = tmp_path / "out"
    build(_config([corpus], out, gens[1:2]), progress=False)
    dataset = wids.ShardListDataset(str(out / "manifest.json"))
    samples = _samples(out)
    assert len(dataset) == len(samples)
    assert dataset[len(samples) - 1]["__key__"] == samples[-1]["__key__"]
