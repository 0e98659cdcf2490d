"""sefdata publish: the staged folder loads with `datasets` through the card's configs; the card validates; the
upload receives exactly that folder (the network replaced at the HfApi boundary only)."""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import datasets
import numpy as np
import pytest
from conftest import FakeHubApi
from huggingface_hub import DatasetCard, DatasetCardData
from PIL import Image
from sef_cli.sefdata import app
from typer.testing import CliRunner

from sefcore.errors import SefError
from sefdata.build import build
from sefdata.config import BuildConfig
from sefdata.publish import publish


@pytest.fixture
def gens(tiny_sr_file, tiny_taesd_files) -> list[str]:
    enc, dec = tiny_taesd_files
    return [f"sr:weights={tiny_sr_file},scale=2", f"taesd:encoder={enc},decoder={dec},as=taef2"]


def _build(sources, out: Path, gens, **kw) -> dict:
    build(BuildConfig(sources=[str(s) for s in sources], out=str(out), gen=gens, shard_size=3, **kw), progress=False)
    return json.loads((out / "manifest.json").read_text())


def _load_all(folder: Path, card: DatasetCard) -> list[dict]:
    rows = []
    for config in card.data.configs:
        ds = datasets.load_dataset(str(folder), config["config_name"], split="train")
        rows.extend(ds)
    return rows


def test_mixed_encodings_are_staged_as_one_loadable_config_each(corpus, gens, tmp_path):
    manifest = _build([corpus], tmp_path / "build", gens)
    staged = publish(tmp_path / "build", "me/aligned", dry_run=True, staging=tmp_path / "stage")
    card = DatasetCard.load(staged.folder / "README.md")
    assert {c["config_name"] for c in card.data.configs} == {"jpg", "png"}
    rows = _load_all(staged.folder, card)
    assert len(rows) == manifest["sef"]["totals"]["written"] == 8
    for row in rows:
        ext = "jpg" if "real.jpg" in row else "png"
        images = [row[f"{f}.{ext}"] for f in ("real", "sr", "taef2")]
        assert all(isinstance(img, Image.Image) for img in images)
        assert len({img.size for img in images}) == 1
    assert len({r["json"]["key"] for r in rows}) == 8
    for entry in manifest["shardlist"]:  # the build's own shards, by encoding: nothing re-packed
        staged_tar = staged.folder / "data" / entry["encoding"] / entry["url"]
        assert staged_tar.read_bytes() == (tmp_path / "build" / entry["url"]).read_bytes()
    # the card declares each config's schema, so nothing is inferred from the first samples
    declared = {i["config_name"]: datasets.Features._from_yaml_list(i["features"]) for i in card.data.dataset_info}
    assert set(declared) == {"jpg", "png"}
    assert isinstance(declared["jpg"]["real.jpg"], datasets.Image) and "jpeg" in declared["png"]["json"]
    assert datasets.load_dataset(str(staged.folder), "png", split="train").features == declared["png"]


def test_single_encoding_build_keeps_its_shards_and_card_validates(corpus, gens, tmp_path):
    manifest = _build([corpus], tmp_path / "build", gens, format="png")
    staged = publish(tmp_path / "build", "me/aligned-png", dry_run=True, staging=tmp_path / "stage", license="cc0-1.0")
    shards = [f"data/{entry['url']}" for entry in manifest["shardlist"]]
    assert staged.files == ["README.md", *shards, "manifest.json", "preview.png"]
    for entry in manifest["shardlist"]:  # the shards themselves, not re-encoded copies
        assert (staged.folder / "data" / entry["url"]).read_bytes() == (tmp_path / "build" / entry["url"]).read_bytes()
    card = DatasetCard.load(staged.folder / "README.md")
    data = DatasetCardData(**card.data.to_dict())  # round-trips through the card schema
    assert data.license == "cc0-1.0" and data.task_categories == ["image-classification"]
    assert data.size_categories == ["n<1K"]
    assert card.data.configs == [
        {"config_name": "default", "data_files": [{"split": "train", "path": "data/shard-*.tar"}]}
    ]
    assert "taef2" in card.text and "PSNR" in card.text and str(tmp_path) not in card.text  # no local paths leak
    ds = datasets.load_dataset(str(staged.folder), split="train")
    assert len(ds) == 8 and isinstance(ds[0]["taef2.png"], Image.Image)
    Image.open(io.BytesIO((staged.folder / "preview.png").read_bytes())).verify()


def test_upload_receives_the_staged_folder(corpus, gens, tmp_path):
    _build([corpus / "rocket.jpg", corpus / "chelsea.png"], tmp_path / "build", gens, format="png")
    api = FakeHubApi()
    staged = publish(tmp_path / "build", "me/x", private=True, revision="v1", api=api, staging=tmp_path / "stage")
    names = [name for name, _ in api.calls]
    assert names == ["create_repo", "create_branch", "upload_folder"]
    assert api.calls[0][1] == {"repo_id": "me/x", "repo_type": "dataset", "private": True, "exist_ok": True}
    upload = api.calls[2][1]
    assert upload["folder_path"] == str(staged.folder) and upload["repo_type"] == "dataset"
    assert upload["revision"] == "v1" and "README.md" in upload["files"] and "manifest.json" in upload["files"]


def test_publish_refuses_unfinished_builds_and_bad_repo_ids(corpus, gens, tmp_path):
    _build([corpus / "rocket.jpg"], tmp_path / "build", gens)
    with pytest.raises(SefError, match="USER/NAME"):
        publish(tmp_path / "build", "just-a-name", dry_run=True)
    (tmp_path / "build" / "manifest.json").unlink()
    with pytest.raises(SefError, match="no manifest.json"):
        publish(tmp_path / "build", "me/x", dry_run=True)


def test_cli_dry_run_lists_files_and_never_prints_the_token(corpus, gens, tmp_path):
    _build([corpus / "rocket.jpg"], tmp_path / "build", gens)
    result = CliRunner().invoke(
        app, ["publish", str(tmp_path / "build"), "--repo", "me/x", "--dry-run"], env={"HF_TOKEN": "hf_secret123"}
    )
    assert result.exit_code == 0, result.output
    assert "dry run: 4 files staged" in result.output and "data/shard-000000.tar" in result.output
    assert "hf_secret123" not in result.output


def _staged_bytes(folder: Path) -> dict[str, bytes]:
    """Every staged file's raw bytes (shards included): what an upload would send, read without the scanner."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_model_folders_and_parent_relative_sources_are_published_by_name(corpus, tiny_vae_dir, monkeypatch, tmp_path):
    """`vae:model=DIR` (absolute, and ../-relative) and a ../ source: the build records them by name, so the dry run
    passes, and no staged byte (card, manifest, sample records) names where they lay."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    relative_vae = os.path.relpath(tiny_vae_dir)
    assert relative_vae.startswith("../")
    gens = [f"vae:model={tiny_vae_dir}", f"vae:model={relative_vae},as=vae_rel"]
    build(BuildConfig(sources=["../corpus"], out="build", gen=gens, shard_size=4, format="png"), progress=False)
    staged = publish("build", "me/vae-pairs", dry_run=True, staging=tmp_path / "stage")
    sent = _staged_bytes(staged.folder)
    assert any(name.endswith(".tar") for name in sent) and "manifest.json" in sent
    for name, data in sent.items():
        for private in (str(tiny_vae_dir), relative_vae, "../corpus", str(tmp_path)):
            assert private.encode() not in data, (name, private)
    manifest = json.loads(sent["manifest.json"])
    assert manifest["sef"]["config"]["sources"] == ["corpus"]
    assert manifest["sef"]["generators"]["vae"]["model"]["model"] == tiny_vae_dir.name
    assert manifest["sef"]["generators"]["vae_rel"]["params"]["model"] == tiny_vae_dir.name
    assert f'"model": "{tiny_vae_dir.name}"' in sent["README.md"].decode()  # the card still says which model
    # the build's own local record keeps the config as given
    assert json.loads((work / "build" / "build.json").read_text())["config"]["sources"] == ["../corpus"]


def test_a_list_line_outside_its_folder_is_recorded_by_name(corpus, tiny_sr_file, tmp_path):
    (tmp_path / "lists").mkdir()
    listing = tmp_path / "lists" / "list.txt"
    listing.write_text("../corpus/rocket.jpg\n~/nowhere/missing.png\n")
    build(BuildConfig(sources=[str(listing)], out=str(tmp_path / "build"), gen=[f"sr:weights={tiny_sr_file},scale=2"]),
          progress=False)  # fmt: skip
    staged = publish(tmp_path / "build", "me/x", dry_run=True, staging=tmp_path / "stage")
    records = [json.loads(data) for name, data in _staged_bytes(staged.folder).items() if name == "manifest.json"]
    assert records[0]["sef"]["totals"] == {"inputs": 2, "written": 1, "failed": {"missing": 1}}
    shard = next(staged.folder.glob("data/*.tar"))
    assert b"../corpus" not in shard.read_bytes() and b'"source": "rocket.jpg"' in shard.read_bytes()


@pytest.mark.parametrize(
    ("name", "content", "private"),
    [
        ("README.md", "built from ../../alice/family-photos", "../../alice/family-photos"),
        ("manifest.json", json.dumps({"note": "weights in ~/models/vae"}), "~/models/vae"),
        ("eval/notes.csv", "bench,/home/alice/bench/real\n", "/home/alice/bench/real"),
        ("data/shard-000000.tar", {"source": "../alice/img.png"}, "../alice/img.png"),
        ("model.safetensors", {"origin": "/data/alice/run"}, "/data/alice/run"),
    ],
)
def test_a_planted_local_path_is_refused_with_one_line_naming_the_file(name, content, private, tmp_path):
    """The publish core scans every staged text file, shard record and safetensors header, whatever its suffix."""
    from safetensors.numpy import save_file

    from sefdata.upload import upload_staged

    folder = tmp_path / "stage"
    (folder / "data").mkdir(parents=True)
    (folder / "clean.md").write_text("# clean\n\nsee [eval/results.md](eval/results.md), ~5/10 of it\n")
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if name.endswith(".tar"):
        with tarfile.open(path, "w") as tar:
            data = json.dumps(content).encode()
            info = tarfile.TarInfo("key-1.json")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    elif name.endswith(".safetensors"):
        save_file({"w": np.zeros(2, np.float32)}, str(path), metadata=content)
    else:
        path.write_text(content)
    api = FakeHubApi()
    with pytest.raises(SefError) as err:
        upload_staged(folder, "me/x", repo_type="dataset", command="test", hint="fix it", api=api)
    message = str(err.value)
    assert message.startswith(f"{name} holds a local path") and private in message and "\n" not in message
    assert api.calls == []  # nothing was uploaded
    path.unlink()
    assert upload_staged(folder, "me/x", repo_type="dataset", command="test", hint="", api=api) == ["clean.md"]
    assert [call for call, _ in api.calls] == ["create_repo", "upload_folder"]


def test_cli_refuses_a_planted_path_in_one_line(corpus, gens, tmp_path):
    _build([corpus / "rocket.jpg"], tmp_path / "build", gens)
    manifest = json.loads((tmp_path / "build" / "manifest.json").read_text())
    manifest["sef"]["note"] = "copied from ../../alice/family-photos"
    (tmp_path / "build" / "manifest.json").write_text(json.dumps(manifest))
    result = CliRunner().invoke(app, ["publish", str(tmp_path / "build"), "--repo", "me/x", "--dry-run"])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: manifest.json holds a local path"), result.output
