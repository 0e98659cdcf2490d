"""Detector folders: exact round trips, no backbone weights, pickles refused, experts combined."""

from __future__ import annotations

import json

import pytest
import torch
from conftest_model import TINY, pixels, randomize_trained, tiny_config, tiny_detector
from PIL import Image
from safetensors.torch import load_file

from sefmodel import DetectorConfig, SEFDetector, UnsafeCheckpointError
from sefmodel.model.backbones import get_backbone_class
from sefmodel.model.combine import combine_experts
from sefmodel.pipeline import score


@pytest.fixture
def local_backbone(tmp_path):
    """A tiny DINOv2 saved as an ordinary transformers folder: referenced by path, like a Hub id."""
    torch.manual_seed(0)
    backbone = get_backbone_class("dinov2").from_config(TINY["dinov2"])
    folder = tmp_path / "dinov2-tiny"
    backbone.model.save_pretrained(folder)  # safetensors
    return str(folder)


def _images():
    noise = torch.randint(0, 256, (48, 64, 3), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    return [Image.new("RGB", (40, 36), (30, 160, 90)), Image.fromarray(noise.numpy())]


@pytest.mark.parametrize("fusion", ["sef", "mean", "concat"])
def test_round_trip_gives_identical_scores_and_stores_no_backbone(tmp_path, local_backbone, fusion):
    config = DetectorConfig(
        backbone_id=local_backbone,
        processor={"size": 32},
        lora={"rank": 4, "blocks": "last:2"},
        fusion=fusion,
        gate_hidden=8,
    )
    detector = randomize_trained(SEFDetector(config))
    detector.save_pretrained(tmp_path / "det")
    files = sorted(p.name for p in (tmp_path / "det").iterdir())
    assert files == ["README.md", "config.json", "model.safetensors", "preprocessor_config.json"]

    stored = load_file(tmp_path / "det" / "model.safetensors")
    backbone_keys = [k for k in stored if k.startswith("backbone.")]
    assert backbone_keys and all(".lora_A." in k or ".lora_B." in k for k in backbone_keys)
    assert set(stored) == set(detector.trained_state_dict())
    n_backbone = sum(p.numel() for n, p in detector.named_parameters() if ".lora_" not in n and "backbone" in n)
    assert sum(t.numel() for t in stored.values()) < n_backbone  # adapters and heads only

    saved = json.loads((tmp_path / "det" / "config.json").read_text())
    assert saved["backbone_id"] == local_backbone and saved["fusion"] == fusion
    assert saved["lora"]["blocks"] == "last:2" and saved["format_version"] == 1

    loaded = SEFDetector.from_pretrained(tmp_path / "det")
    images = _images()
    a, b = score(detector, images), score(loaded, images)
    assert torch.equal(a.probs, b.probs)
    if fusion == "sef":
        assert torch.equal(a.gate_weights, b.gate_weights)
    with torch.no_grad():
        assert torch.equal(detector(pixels())["logits"], loaded(pixels())["logits"])


def test_random_backbone_is_the_documented_exception(tmp_path):
    detector = randomize_trained(tiny_detector("clip"))
    detector.save_pretrained(tmp_path / "det")
    assert (tmp_path / "det" / "backbone.safetensors").is_file()
    assert "backbone.safetensors" in (tmp_path / "det" / "README.md").read_text()
    torch.manual_seed(123)  # a different random init must not matter: the stored weights win
    loaded = SEFDetector.from_pretrained(tmp_path / "det")
    with torch.no_grad():
        assert torch.equal(detector(pixels())["logits"], loaded(pixels())["logits"])
    (tmp_path / "det" / "backbone.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"backbone\.safetensors"):
        SEFDetector.from_pretrained(tmp_path / "det")


def test_saving_an_id_backbone_over_an_old_folder_leaves_no_backbone_weights(tmp_path, local_backbone):
    tiny_detector().save_pretrained(tmp_path / "det")
    assert (tmp_path / "det" / "backbone.safetensors").exists()
    config = DetectorConfig(backbone_id=local_backbone, processor={"size": 32}, lora={"rank": 4, "blocks": "last:2"})
    SEFDetector(config).save_pretrained(tmp_path / "det")
    assert not (tmp_path / "det" / "backbone.safetensors").exists()


@pytest.mark.parametrize("name", ["pytorch_model.bin", "adapter.pt", "sub/extra.pth", "head.pkl", "last.ckpt"])
def test_pickle_files_are_refused_with_a_reason(tmp_path, name):
    tiny_detector().save_pretrained(tmp_path / "det")
    bad = tmp_path / "det" / name
    bad.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"x": torch.zeros(1)}, bad)
    with pytest.raises(UnsafeCheckpointError, match="execute arbitrary code") as err:
        SEFDetector.from_pretrained(tmp_path / "det")
    assert name in str(err.value)


def test_missing_or_mismatched_files_are_reported(tmp_path):
    detector = tiny_detector()
    detector.save_pretrained(tmp_path / "det")
    with pytest.raises(FileNotFoundError, match="no detector folder"):
        SEFDetector.from_pretrained(tmp_path / "nope" / "det")
    with pytest.raises(ValueError, match="is a file"):
        SEFDetector.from_pretrained(tmp_path / "det" / "config.json")
    # a config that disagrees with the stored tensors (rank 8 vs 4) is caught, not half-loaded
    cfg = json.loads((tmp_path / "det" / "config.json").read_text())
    cfg["lora"]["rank"] = 8
    (tmp_path / "det" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="shape"):
        SEFDetector.from_pretrained(tmp_path / "det")
    (tmp_path / "det" / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"model\.safetensors is missing"):
        SEFDetector.from_pretrained(tmp_path / "det")


def test_a_detector_keyed_by_other_module_names_names_the_transformers_versions(tmp_path):
    """transformers 5.18 renamed DINOv2's attention projections; LoRA tensors saved under the old names must fail
    with the reason, not a bare key list."""
    import transformers
    from safetensors import safe_open
    from safetensors.torch import save_file

    tiny_detector().save_pretrained(tmp_path / "det")
    path = tmp_path / "det" / "model.safetensors"
    with safe_open(str(path), framework="pt") as f:
        assert f.metadata()["transformers_version"] == transformers.__version__
    renamed = {k.replace("attention.q_proj", "attention.attention.query"): v for k, v in load_file(path).items()}
    assert set(renamed) != set(load_file(path))
    save_file(renamed, str(path), metadata={"format": "pt", "transformers_version": "5.17.0"})
    with pytest.raises(ValueError, match=r"saved with transformers 5\.17\.0 and this is .*5\.18 renamed"):
        SEFDetector.from_pretrained(tmp_path / "det")


def test_experts_trained_apart_combine_into_a_fused_detector(tmp_path):
    recon = randomize_trained(tiny_detector(experts=["recon"], fusion="single"), seed=1)
    sr = randomize_trained(tiny_detector(experts=["sr"], fusion="single"), seed=2)
    sr.save_pretrained(tmp_path / "sr")
    fused = combine_experts([recon, tmp_path / "sr"], fusion="sef", gate_hidden=8)
    assert fused.expert_names == ["recon", "sr"] and fused.config.fusion == "sef"
    x = pixels()
    with torch.no_grad():
        out = fused(x)
        assert torch.equal(out["expert_logits"][:, 0], recon(x)["logits"])
        assert torch.equal(out["expert_logits"][:, 1], sr(x)["logits"])
    other_backbone = tiny_detector(experts=["gan"], fusion="single", seed=7)
    with pytest.raises(ValueError, match="different random backbones"):
        combine_experts([recon, other_backbone])
    with pytest.raises(ValueError, match="disagree on lora"):
        combine_experts([recon, tiny_detector(experts=["x"], fusion="single", lora={"rank": 2})])
    with pytest.raises(ValueError, match="single-expert"):
        combine_experts([recon, fused])


def test_tiny_config_is_enough_to_rebuild_offline(tmp_path):
    config = tiny_config("dinov2_registers")
    restored = DetectorConfig.from_dict(json.loads(json.dumps(config.to_dict())), processor=config.processor)
    assert restored == config


def test_hub_repo_with_pickles_is_refused_before_anything_is_downloaded(monkeypatch):
    import huggingface_hub

    def listing(self, repo_id, revision=None, token=None):
        return ["config.json", "model.safetensors", "optimizer.pt"]

    def no_download(*args, **kwargs):
        raise AssertionError("must not download from a repo that holds pickles")

    monkeypatch.setattr(huggingface_hub.HfApi, "list_repo_files", listing)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", no_download)
    with pytest.raises(UnsafeCheckpointError, match=r"Hub repo someone/detector.*optimizer\.pt"):
        SEFDetector.from_pretrained("someone/detector")


def test_hub_download_fetches_only_json_safetensors_markdown_and_golden_images(monkeypatch, tmp_path):
    import huggingface_hub

    tiny_detector().save_pretrained(tmp_path / "snap")
    seen = {}

    def listing(self, repo_id, revision=None, token=None):
        return ["config.json", "model.safetensors", "backbone.safetensors", "README.md"]

    def snapshot(repo_id, **kwargs):
        seen.update(kwargs, repo_id=repo_id)
        return str(tmp_path / "snap")

    monkeypatch.setattr(huggingface_hub.HfApi, "list_repo_files", listing)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot)
    detector = SEFDetector.from_pretrained("someone/detector", revision="v1")
    assert seen["repo_id"] == "someone/detector" and seen["revision"] == "v1"
    assert seen["allow_patterns"] == ["*.json", "*.safetensors", "*.md", "golden/*.png"]  # golden/: sefmodel check
    assert detector.expert_names == ["recon", "sr"]
