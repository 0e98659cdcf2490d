"""The reader beside the shard writer: keys as webdataset splits them, the header-only index, every member for the
publish scan, and the typed manifest of old, current and foreign builds."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile

import pytest
import webdataset as wds

from sefcore.errors import SefError
from sefdata.shards import (
    Manifest,
    ShardWriter,
    field_key,
    field_keys,
    index_samples,
    iter_members,
    iter_samples,
    resolve_shards,
    sample_encoding,
    sample_fields,
    split_name,
)
from sefdata.verify import verify

# member names as a foreign tar may hold them: folders, dots in folders, several dots, upper case, no dot, metadata
NAMES = ["a.real.png", "a.json", "dir.v2/b.JPG", "dir.v2/b.Real.Txt", "c.tar.gz", "noext", "__meta__", "d.vae.PNG"]


def _tar(path, names, data=lambda name: name.encode()):
    with tarfile.open(path, "w") as tar:
        for name in names:
            payload = data(name)
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return path


def test_keys_and_fields_are_split_as_plain_webdataset_splits_them(tmp_path):
    path = str(_tar(tmp_path / "t.tar", NAMES))
    expected = list(wds.WebDataset(path, shardshuffle=False, empty_check=False))  # the reference reader
    ours = list(iter_samples(path))
    assert [s["__key__"] for s in ours] == [s["__key__"] for s in expected] == ["a", "dir.v2/b", "c", "d"]
    assert [sorted(k for k in s if not k.startswith("__")) for s in ours] == [
        sorted(k for k in s if not k.startswith("__")) for s in expected
    ]
    assert split_name("dir.v2/b.Real.Txt") == ("dir.v2/b", "real.txt") and split_name("noext") is None
    # the header-only index groups members by the same rule and gives ranges that read back each member
    with open(path, "rb") as f:
        index = list(index_samples(f))
        assert [(key, sorted(fields)) for key, fields in index] == [
            (s["__key__"], sorted(k for k in s if not k.startswith("__"))) for s in expected
        ]
        offset, size = index[1][1]["jpg"]
        f.seek(offset)
        assert f.read(size) == b"dir.v2/b.JPG"


def test_fields_of_a_sample():
    sample = {"__key__": "k", "__url__": "u", "real.jpg": b"", "vae.png": b"", "json": b"", "sr.webp": b""}
    assert field_keys(sample) == {"real": "real.jpg", "vae": "vae.png", "json": "json", "sr": "sr.webp"}
    assert sample_fields(sample) == ["real", "vae", "sr"]
    assert sample_fields({"__key__": "k", "vae.png": b"", "real.png": b""}) == ["real", "vae"]  # real first
    assert field_key(sample, "sr") == "sr.webp" and sample_encoding(sample) == "jpg"
    with pytest.raises(ValueError, match=r"sample 'k' in u has no field 'ddim' \(real, vae, sr\)"):
        field_key(sample, "ddim")
    assert sample_encoding({"__key__": "k", "vae.png": b""}) is None


def test_every_member_for_the_scan_and_only_the_selected_ones_read(tmp_path):
    path = str(_tar(tmp_path / "t.tar", NAMES))
    assert [name for name, _ in iter_members(path)] == NAMES  # metadata webdataset skips included
    text = list(iter_members(path, lambda name: not name.lower().endswith((".png", ".jpg"))))
    assert [name for name, _ in text] == [n for n in NAMES if not n.lower().endswith((".png", ".jpg"))]
    assert all(data == name.encode() for name, data in text)


def _entry(url, n):
    return {"url": url, "nsamples": n, "filesize": 10 * n, "sha256": "ab" * 32}


CURRENT = {
    "__kind__": "wids-shard-index-v1",
    "wids_version": 1,
    "name": "build",
    "shardlist": [{**_entry("shard-000000.tar", 3), "encoding": "png", "config_hash": "h"}],
    "sef": {
        "format_version": 2,
        "config": {"format": "match", "seed": 0},
        "config_hash": "h",
        "fields": ["real", "vae"],
        "generators": {"vae": {"generator": "vae"}},
        "totals": {"inputs": 4, "written": 3, "failed": {"corrupt": 1}},
        "provenance": {"command": "sefdata build"},  # a key this reader does not name yet
    },
}
FORMAT_1 = {  # before shards kept one encoding each: no encoding, generators could be null
    "shardlist": [_entry("shard-000000.tar", 2)],
    "sef": {"format_version": 1, "config": {}, "config_hash": "h", "fields": ["real", "sr"], "generators": None,
            "totals": {"inputs": 2, "written": 2, "failed": {}}},
}  # fmt: skip
WIDS = {"__kind__": "wids-shard-index-v1", "shardlist": [_entry("a.tar", 5), _entry("b.tar", 6)]}


def test_manifest_of_each_kind_loads_and_keeps_what_it_does_not_name(tmp_path):
    for name, data in {"current": CURRENT, "v1": FORMAT_1, "wids": WIDS}.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "manifest.json").write_text(json.dumps(data))
    m = Manifest.load(tmp_path / "current")
    assert (m.format_version, m.fields, m.config_hash, m.totals.written, m.totals.failed) == (
        2, ["real", "vae"], "h", 3, {"corrupt": 1},
    )  # fmt: skip
    assert m.shards[0].encoding == "png" and m.shards[0].nsamples == 3 and m.generators["vae"]["generator"] == "vae"
    assert m.raw["sef"]["provenance"] == {"command": "sefdata build"}
    assert m.shard_urls(tmp_path / "current") == [f"{tmp_path}/current/shard-000000.tar"]
    old = Manifest.load(tmp_path / "v1" / "manifest.json")  # the file itself works too
    assert old.shards[0].encoding is None and old.generators == {} and old.fields == ["real", "sr"]
    bare = Manifest.load(f"file://{tmp_path}/wids")  # through fsspec, as hf:// is
    assert bare.format_version is None and bare.totals is None and [s.nsamples for s in bare.shards] == [5, 6]


def test_a_missing_or_damaged_manifest(tmp_path):
    assert Manifest.find(tmp_path) is None and Manifest.find(tmp_path / "nowhere") is None
    with pytest.raises(SefError, match="has no manifest.json: finish the build"):
        Manifest.load(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(SefError, match="manifest.json does not parse"):
        Manifest.find(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"shardlist": [{"url": "a.tar"}]}))  # no nsamples
    with pytest.raises(SefError, match=r"manifest.json is not a shard index \(KeyError: 'nsamples'\)"):
        Manifest.find(tmp_path)
    with pytest.raises(SefError, match="not a shard index"):
        resolve_shards([str(tmp_path)])


def _one_shard_build(out, names):
    """A build folder of one shard whose tar holds ``names`` (each member's bytes: a tiny PNG or a record)."""
    out.mkdir()
    (out / "build.json").write_text(json.dumps({"fields": ["real"], "num_shards": 1}))
    tar = _tar(out / "shard-000000.tar", names, lambda name: b"{}" if name.endswith(".json") else b"x")
    data = tar.read_bytes()
    stats = {"written": len({split_name(n)[0] for n in names}), "bytes": len(data),
             "sha256": hashlib.sha256(data).hexdigest()}  # fmt: skip
    (out / "shard-000000.stats.json").write_text(json.dumps(stats))
    return out


def test_verify_names_a_key_whose_members_are_apart_and_a_damaged_manifest(tmp_path):
    out = _one_shard_build(tmp_path / "b", ["a.real.png", "a.json", "b.real.png", "b.json", "a.real.png"])
    (out / "manifest.json").write_text("[]")
    problems = verify(out).problems
    assert "a: the key of 2 samples (its members are not together)" in problems["shard-000000.tar"]
    assert "3 samples, stats say 2" in problems["shard-000000.tar"]  # as webdataset and `datasets` count them
    assert problems["manifest.json"] and "is not a shard index" in problems["manifest.json"][0]


def test_the_writer_records_the_encoding_the_reader_reads(tmp_path):
    writer = ShardWriter(tmp_path, 0)
    writer.write({"__key__": "k1", "real.jpg": b"1", "vae.jpg": b"2", "json": b"{}"})
    writer.commit()
    assert writer.encodings == {"jpg"}
    (sample,) = iter_samples(str(tmp_path / "shard-000000.tar"))
    assert sample_encoding(sample) == "jpg" and sample_fields(sample) == ["real", "vae"]


def test_a_detector_card_describes_its_local_build_from_the_manifest(tmp_path):
    from sefmodel.publish import _describe_build

    for name, data in {"current": CURRENT, "wids": WIDS}.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "manifest.json").write_text(json.dumps(data))
    described = " (a sefdata build: 3 samples, fields real, vae)"
    assert _describe_build(tmp_path / "current") == _describe_build(tmp_path / "current" / "a.tar") == described
    assert _describe_build(tmp_path / "wids") == " (local shards)"  # a bare shard index says nothing of a build
    assert _describe_build(tmp_path / "nowhere") == " (local shards)"
