"""sefdata on real corpora: shards load in `datasets` for any input mix, ranks read only their own inputs, resume
never mixes outputs silently, nothing private leaks, nothing empty passes (tiny random models, real photos)."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import datasets
import pytest
import webdataset as wds
from conftest import asset
from PIL import Image
from typer.testing import CliRunner

from sefcore.errors import SefError
from sefcore.privacy import json_local_paths
from sefdata import sources
from sefdata.build import NothingWritten, build
from sefdata.config import BuildConfig
from sefdata.plan import plan_shards
from sefdata.publish import publish
from sefdata.verify import verify


@pytest.fixture
def gens(tiny_sr_file, tiny_taesd_files) -> list[str]:
    enc, dec = tiny_taesd_files
    return [f"sr:weights={tiny_sr_file},scale=2", f"taesd:encoder={enc},decoder={dec}"]


def _config(sources_, out, gens, **kw) -> BuildConfig:
    kw = {"shard_size": 2, "batch_size": 2, "max_side": 64, **kw}
    return BuildConfig(sources=[str(s) for s in sources_], out=str(out), gen=gens, **kw)


def _photos(folder: Path, assets: Path, first: str) -> Path:
    """Two PNG and three camera-JPEG photos, named so that the folder lists the ``first`` kind first."""
    folder.mkdir()
    for name in ("chelsea.png", "coffee.png", "rocket.jpg", "hubble_deep_field.jpg", "retina.jpg"):
        kind = "png" if name.endswith(".png") else "jpeg"
        prefix = "a" if kind == first else "b"
        (folder / f"{prefix}_{name}").write_bytes((assets / "photos" / name).read_bytes())
    return folder


def _by_encoding(out: Path) -> dict[str, list[str]]:
    groups: dict[str, list[str]] = {}
    for entry in json.loads((out / "manifest.json").read_text())["shardlist"]:
        groups.setdefault(entry["encoding"], []).append(str(out / entry["url"]))
    return groups


@pytest.mark.parametrize("first", ["png", "jpeg"])
@pytest.mark.parametrize("format", ["match", "png"])
def test_every_build_loads_with_datasets_and_webdataset_as_written(assets, gens, tmp_path, first, format):
    photos = _photos(tmp_path / "photos", assets, first)
    out = tmp_path / "out"
    summary = build(_config([photos], out, gens, format=format), progress=False)
    assert summary.written == 5
    groups = _by_encoding(out)
    assert set(groups) == ({"jpg", "png"} if format == "match" else {"png"})
    for ext, tars in groups.items():
        for streaming in (False, True):
            ds = datasets.load_dataset("webdataset", data_files={"train": tars}, split="train", streaming=streaming)
            rows = list(ds)
            assert len(rows) == sum(1 for t in tars for _ in wds.WebDataset(t, shardshuffle=False))
            for row in rows:
                assert isinstance(row[f"real.{ext}"], Image.Image)
                assert row[f"sr.{ext}"].size == row[f"taesd.{ext}"].size == row[f"real.{ext}"].size
                record = row["json"]
                assert record["key"] == row["__key__"] and isinstance(record["jpeg"]["quality_estimate"], int)
                assert (record["jpeg"]["subsampling"] != "") == (record["source_format"] == "JPEG")
    records = [json.loads(s["json"]) for s in wds.WebDataset(sorted(map(str, out.glob("*.tar"))), shardshuffle=False)]
    assert len(records) == 5 and all(isinstance(r["conversions"], str) for r in records)

    # one schema: the same keys, nested alike, in every record whatever its source
    def shape(value):
        return {k: shape(v) for k, v in value.items()} if isinstance(value, dict) else type(value).__name__

    assert len({json.dumps(shape(r), sort_keys=True) for r in records}) == 1


class _Counting:
    """A file object that counts the bytes read through it."""

    total = 0

    def __init__(self, f) -> None:
        self._f = f

    def read(self, n=-1):
        data = self._f.read(n)
        _Counting.total += len(data)
        return data

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()


def test_each_rank_reads_only_its_shards_inputs_from_tar_sources(assets, gens, tmp_path, monkeypatch):
    photos = Image.open(asset(assets, "photos/astronaut.png")).convert("RGB")
    tars = []
    for t in range(2):  # two source tars of 8 samples, each image ~12 KB of PNG
        path = tmp_path / f"src-{t}.tar"
        with wds.TarWriter(str(path)) as sink:
            for i in range(8):
                crop = photos.crop((i * 40, t * 200, i * 40 + 64, t * 200 + 64))
                sink.write({"__key__": f"img{i:02d}", "png": crop})
        tars.append(path)
    source = str(tmp_path / "src-{0..1}.tar")
    sizes = []  # the images' byte sizes in listing order: shard i holds images 4i..4i+3
    for path in tars:
        with tarfile.open(path) as tar:
            sizes += [m.size for m in tar.getmembers()]
    original = sources.open_url
    monkeypatch.setattr(sources, "open_url", lambda url: _Counting(original(url)))

    _Counting.total = 0
    plan_shards(sources.iter_sources([source]), 4, by_encoding=True)
    listing = _Counting.total  # tar headers and each image's first 3 bytes (its format): no image is read
    assert listing <= len(sizes) * (3 * 512 + 3) + 2 * 1024  # header, pax header and its data; the end blocks

    def read_by(**kw) -> int:
        _Counting.total = 0
        build(_config([source], tmp_path / "out", gens, shard_size=4, **kw), progress=False)
        return _Counting.total - listing

    per_rank = {r: read_by(rank=r, world=4) for r in (1, 2, 3, 0)}  # rank 0 last: it writes the manifest
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["sef"]["totals"]["written"] == 16
    for rank, n in per_rank.items():  # exactly its own shard's images, a quarter of the corpus
        assert n == sum(sizes[4 * rank : 4 * rank + 4])
    (tmp_path / "out" / "shard-000002.stats.json").unlink()  # 3 of 4 shards done: a resume reads shard 2 alone
    assert read_by() == sum(sizes[8:12])


def _stream_photos(assets, monkeypatch) -> list[int]:
    """load_dataset streams eight rows (four shared photos twice); returns the list of row numbers fetched."""
    cells = [asset(assets, f"photos/{n}").read_bytes() for n in ("chelsea.png", "rocket.jpg", "coffee.png", "ihc.png")]
    fetched = []

    def rows():
        for i, data in enumerate(cells * 2):
            fetched.append(i)
            yield {"image": {"bytes": data, "path": None}}

    streamed = datasets.IterableDataset.from_generator(rows)
    monkeypatch.setattr(datasets, "load_dataset", lambda ref, split, streaming: streamed)
    return fetched


def test_a_streamed_dataset_is_read_by_rank_and_matches_a_whole_build(assets, gens, tmp_path, monkeypatch):
    _stream_photos(assets, monkeypatch)
    whole, split = tmp_path / "whole", tmp_path / "split"
    build(_config(["someone/photos"], whole, gens, image_field="image"), progress=False)
    for rank in (1, 0):
        build(_config(["someone/photos"], split, gens, image_field="image", rank=rank, world=2), progress=False)
    assert sorted(p.name for p in split.glob("*.tar")) == sorted(p.name for p in whole.glob("*.tar"))
    for p in whole.glob("*.tar"):
        assert (split / p.name).read_bytes() == p.read_bytes()


def test_a_streamed_dataset_is_read_in_one_pass_with_many_shards_in_flight(assets, tmp_path, monkeypatch):
    """Shards of one input: the pipeline reads several shards ahead, and the stream keeps every row of the shards
    in flight as it passes them, so no read sends it back to the start."""
    fetched = _stream_photos(assets, monkeypatch)
    config = BuildConfig(sources=["someone/photos"], out=str(tmp_path / "o"), gen=["identity"], image_field="image",
                         shard_size=1, batch_size=1, max_side=64, format="png", workers=2)  # fmt: skip
    assert build(config, progress=False).written == 8
    assert fetched == list(range(8)) * 2  # the listing pass, then one reading pass


def test_a_resume_with_other_settings_stops_naming_them_or_records_each_shards(corpus, gens, tmp_path):
    out = tmp_path / "out"
    build(_config([corpus], out, gens, batch_size=2), progress=False)
    (out / "shard-000001.stats.json").unlink()
    with pytest.raises(SefError, match=r"batch_size: 2 -> 1.*--allow-mixed"):
        build(_config([corpus], out, gens, batch_size=1), progress=False)
    with pytest.raises(SefError, match=r"a different build .*seed: 0 -> 1"):
        build(_config([corpus], out, gens, seed=1, allow_mixed=True), progress=False)
    summary = build(_config([corpus], out, gens, batch_size=1, allow_mixed=True), progress=False)
    assert summary.built == [1]
    manifest = json.loads((out / "manifest.json").read_text())["sef"]
    assert manifest["mixed"] and sorted(r["runtime"]["batch_size"] for r in manifest["runs"]) == [1, 2]
    assert next(r for r in manifest["runs"] if r["runtime"]["batch_size"] == 1)["shards"] == [1]
    assert verify(out).ok


def test_auto_precision_is_hashed_as_what_it_resolves_to(corpus, gens, tmp_path):
    from sefdata.build import Builder

    auto = Builder(_config([corpus], tmp_path / "a", gens, dtype="auto"), progress=False)
    name = auto.settings["runtime"]["dtype"]
    explicit = Builder(_config([corpus], tmp_path / "a", gens, dtype={"float32": "fp32", "bfloat16": "bf16"}[name]))
    assert auto.config_hash == explicit.config_hash
    for b in (auto, explicit):
        b.close()
    assert {"batch_size", "device", "dtype", "versions"} <= set(auto.settings["runtime"])
    assert auto.settings["runtime"]["versions"]["torch"]


def test_no_absolute_path_is_recorded_or_published(corpus, gens, tmp_path):
    listing = tmp_path / "list.txt"
    listing.write_text(f"{corpus / 'rocket.jpg'}\n{corpus.parent.parent / 'elsewhere.png'}\n")
    Image.new("RGB", (64, 64), "red").save(corpus.parent.parent / "elsewhere.png")
    out = tmp_path / "out"
    build(_config([corpus.resolve(), listing], out, gens), progress=False)
    records = [json.loads(s["json"]) for s in wds.WebDataset(sorted(map(str, out.glob("*.tar"))), shardshuffle=False)]
    assert records and not [r for r in records if json_local_paths(r)]
    assert {r["source"] for r in records} >= {"rocket.jpg", "corpus/rocket.jpg", "elsewhere.png"}
    manifest = json.loads((out / "manifest.json").read_text())
    assert not json_local_paths(manifest) and manifest["sef"]["config"]["sources"] == ["corpus", "list.txt"]
    staged = publish(out, "me/x", dry_run=True, staging=tmp_path / "stage")
    assert str(tmp_path) not in (staged.folder / "README.md").read_text()

    manifest["sef"]["note"] = f"built in {tmp_path}/work"  # e.g. a hand-edited manifest
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(SefError, match=r"^manifest\.json holds a local path of this machine"):
        publish(out, "me/x", dry_run=True, staging=tmp_path / "stage")


def test_a_build_whose_inputs_were_all_skipped_fails_and_writes_nothing(corpus, gens, tmp_path):
    bad = [corpus / n for n in ("empty.jpg", "text.png", "truncated.jpg", "tiny.png")]
    out = tmp_path / "out"
    with pytest.raises(NothingWritten, match="every input was skipped .*corrupt: 1.*empty: 1"):
        build(_config(bad, out, gens), progress=False)
    assert not list(out.glob("shard-*"))

    from sef_cli.sefdata import app

    result = CliRunner().invoke(app, ["build", *map(str, bad), "--out", str(out), "--no-progress",
                                      "--gen", gens[0]])  # fmt: skip
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "skipped 4 input(s):" in result.output and "corrupt:" in result.output
    assert result.output.strip().splitlines()[-1].startswith("error: every input was skipped")


def test_verify_fails_a_build_with_no_sample(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "build.json").write_text(json.dumps({"fields": ["real", "sr"], "num_shards": 1, "config_hash": "x"}))
    stats = {"written": 0, "inputs": 2, "failed": {"corrupt": 2}, "skipped": [], "config_hash": "x"}
    (out / "shard-000000.stats.json").write_text(json.dumps(stats))
    report = verify(out)
    assert not report.ok and any("no sample" in p for ps in report.problems.values() for p in ps)


def test_a_shard_of_only_bad_inputs_is_done_without_a_tar(corpus, gens, tmp_path):
    sources_ = [corpus / "rocket.jpg", corpus / "chelsea.png", corpus / "text.png", corpus / "tiny.png"]
    out = tmp_path / "out"
    build(_config(sources_, out, gens, format="png"), progress=False)  # shard 1 = text.png, tiny.png
    assert (out / "shard-000001.stats.json").is_file() and not (out / "shard-000001.tar").exists()
    assert verify(out).ok
    with tarfile.open(out / "shard-000000.tar") as tar:
        assert len(tar.getnames()) == 2 * 4
