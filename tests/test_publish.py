"""sefdata publish: the staged folder loads with `datasets` through the card's configs; the card validates; the
upload receives exactly that folder (the network replaced at the HfApi boundary only)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import datasets
import pytest
from conftest import FakeHubApi
from huggingface_hub import DatasetCard, DatasetCardData
from PIL import Image
from sef_cli.sefdata import app
from typer.testing import CliRunner

from sefdata.build import build
from sefdata.config import BuildConfig
from sefdata.errors import SefError
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
