"""The detector's configuration: one dataclass, saved as ``config.json`` in every detector folder (its image processor
beside it, as ``preprocessor_config.json``)."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from sefcore.fields import doc
from sefmodel.model.dictconfig import from_versioned_dict
from sefmodel.model.lora import LoraSettings
from sefmodel.model.preprocess import ImageProcessor

FORMAT_VERSION = 1
INPUT_FILTERS = ("none", "highpass")
_EXPERT_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")
# Keys written next to the config fields in config.json; not configuration.
_META_KEYS = ("format_version", "library")
# config.json files (and [detector] tables) written before the image processor owned these settings carry them as
# flat keys: old key -> ImageProcessor field
LEGACY_PROCESSOR_KEYS = {"image_size": "size", "crop": "crop", "crops_per_side": "crops_per_side", "resize": "resize",
                         "small": "small"}  # fmt: skip


@dataclass
class DetectorConfig:
    """Everything needed to rebuild a detector (its trained tensors come from the safetensors file)."""

    backbone: str = field(
        default="dinov2",
        metadata=doc("Backbone family in the registry: the ViTs dinov2, dinov2_registers, clip; the CNNs mobilenet_v2, "
                     "resnet, convnext (or any registered name).", metavar="FAMILY"),
    )  # fmt: skip
    backbone_id: str | None = field(
        default=None,
        metadata=doc("Hub id or local folder of the backbone weights; None means the family's default id (e.g. "
                     "facebook/dinov2-large). Must be None when backbone_config is given.", metavar="HUB_ID_OR_DIR"),
    )  # fmt: skip
    backbone_revision: str | None = field(
        default=None,
        metadata=doc("Hub branch, tag or commit of the backbone; filled with the resolved commit when the Hub reports "
                     "one."),
    )  # fmt: skip
    backbone_config: dict[str, Any] | None = field(
        default=None,
        metadata=doc("A transformers config dict to build a randomly initialised backbone instead of loading one "
                     "(tests, benchmarks). Such a backbone's weights are saved in the detector folder "
                     "(backbone.safetensors)."),
    )  # fmt: skip
    feature_layer: int = field(
        default=-1,
        metadata=doc("Block whose output is the feature (0-based; -1 = last): a ViT layer (its CLS token, final norm "
                     "applied) or a CNN stage (its pooled map; for MobileNetV2 stage i < 16 is transformers' "
                     "hidden_states[i])."),
    )  # fmt: skip
    feature_pool: str | None = field(
        default=None,
        metadata=doc("How the feature block's output becomes the feature; None = the family's default. ViTs: \"cls\". "
                     "CNNs: \"mean\" (default; global average, the model's pooler_output at the last stage) or "
                     "\"mean_std\" (per-channel mean and standard deviation, twice the width; keeps the texture "
                     "statistics that early stages carry).", metavar="POOL"),
    )  # fmt: skip
    experts: list[str] = field(
        default_factory=lambda: ["recon", "sr"],
        metadata=doc("Expert names, one LoRA adapter + head each (letters, digits, _ or -, starting with a letter)."),
    )
    fusion: str = field(
        default="sef",
        metadata=doc("How expert features become a score: single (one expert, its own head; also the mixed "
                     "baseline), sef, mean, concat."),
    )  # fmt: skip
    gate_hidden: int = field(default=256, metadata=doc("Hidden width of the SEF gating MLP; 0 makes the gate linear."))
    gate_input: str = field(
        default="features",
        metadata=doc("What a gate (fusions sef and moe) sees: features (the experts' features, concatenated), logits "
                     "(each expert's own logit) or both.", metavar="features|logits|both"),
    )  # fmt: skip
    spectrum: bool = field(
        default=False,
        metadata=doc("Append the periodic-spectrum feature of the crop (sefmodel.model.spectrum: power at the 8/4/2 px "
                     "periods of decoders and upsamplers, as log power and ratio to its neighbours) to every expert's "
                     "feature."),
    )  # fmt: skip
    input_filter: str = field(
        default="none",
        metadata=doc("What the backbone sees: none (the normalised crop) or highpass (the crop minus its 3x3 mean, "
                     "scaled to unit standard deviation per image: the fine structure, without colour or the photo's "
                     "overall amount of detail).", metavar="none|highpass"),
    )  # fmt: skip
    lora: LoraSettings = field(default_factory=LoraSettings, metadata=doc("LoRA settings shared by all experts."))
    shared_trunk: bool = field(
        default=True,
        metadata=doc("Run blocks before the first LoRA block once for all experts (same scores, less compute)."),
    )
    processor: ImageProcessor = field(
        default_factory=ImageProcessor,
        metadata=doc("The image processor (sefmodel.model.preprocess.ImageProcessor: crop side, crop mode, resize and "
                     "small-image rules, normalisation); what it leaves unset comes from the backbone. Saved beside "
                     "config.json as preprocessor_config.json."),
    )  # fmt: skip

    def __post_init__(self) -> None:
        # the registries live beside torch code: loaded when a config is made, not when --help reads the fields
        from sefmodel.model.backbones import get_backbone_class
        from sefmodel.model.fusion import GATE_INPUTS, known_fusions

        try:
            get_backbone_class(self.backbone)
        except KeyError as err:
            raise ValueError(err.args[0]) from None
        if self.backbone_config is not None:
            if self.backbone_id is not None:
                raise ValueError("give either backbone_id (pretrained weights) or backbone_config (random), not both")
            if not isinstance(self.backbone_config, dict):
                raise ValueError("backbone_config must be a dict of transformers config fields")
        elif self.backbone_id is None:
            self.backbone_id = get_backbone_class(self.backbone).default_model_id
        family = get_backbone_class(self.backbone)
        if self.feature_pool is None:
            self.feature_pool = family.pools[0]
        if self.feature_pool not in family.pools:
            raise ValueError(
                f"feature_pool {self.feature_pool!r} does not apply to backbone {self.backbone!r}; "
                f"known: {', '.join(family.pools)}"
            )
        if isinstance(self.lora, dict):
            self.lora = LoraSettings.from_dict(self.lora)
        if not isinstance(self.lora, LoraSettings):
            raise ValueError(f"lora must be LoraSettings or a dict, got {type(self.lora).__name__}")
        if self.lora.targets is None:
            # written out, so config.json says what was adapted (a copy: the caller's settings stay as given)
            self.lora = dataclasses.replace(self.lora, targets=list(family.lora_groups))
        unknown = [t for t in self.lora.targets if t not in family.lora_groups]
        if unknown:
            raise ValueError(
                f"lora.targets {unknown} do not apply to backbone {self.backbone!r}; known: "
                f"{', '.join(family.lora_groups)}"
            )
        if isinstance(self.experts, str):
            raise ValueError(f"experts must be a list of names, got the string {self.experts!r}")
        self.experts = list(self.experts)
        if not self.experts:
            raise ValueError("experts must name at least one expert")
        for name in self.experts:
            if not isinstance(name, str) or not _EXPERT_NAME.fullmatch(name):
                raise ValueError(f"bad expert name {name!r}: use letters, digits, _ or -, starting with a letter")
        if len(set(self.experts)) != len(self.experts):
            raise ValueError(f"expert names must be unique, got {self.experts}")
        fusions = ["single", *known_fusions()]
        if self.fusion not in fusions:
            raise ValueError(f"unknown fusion {self.fusion!r}; known: {', '.join(fusions)}")
        if self.fusion == "single" and len(self.experts) != 1:
            raise ValueError(f"fusion='single' takes exactly one expert, got {self.experts}")
        if self.fusion != "single" and len(self.experts) < 2:
            raise ValueError(f"fusion={self.fusion!r} needs at least two experts, got {self.experts}")
        if self.gate_input not in GATE_INPUTS:
            raise ValueError(f"unknown gate_input {self.gate_input!r}; known: {', '.join(GATE_INPUTS)}")
        if self.input_filter not in INPUT_FILTERS:
            raise ValueError(f"unknown input_filter {self.input_filter!r}; known: {', '.join(INPUT_FILTERS)}")
        if not isinstance(self.spectrum, bool):
            raise ValueError(f"spectrum must be true or false, got {self.spectrum!r}")
        _check_int("feature_layer", self.feature_layer)
        _check_int("gate_hidden", self.gate_hidden, minimum=0)
        if isinstance(self.processor, dict):
            self.processor = ImageProcessor.from_dict(self.processor)
        if not isinstance(self.processor, ImageProcessor):
            raise ValueError(f"processor must be an ImageProcessor or a dict, got {type(self.processor).__name__}")
        if not isinstance(self.shared_trunk, bool):
            raise ValueError(f"shared_trunk must be true or false, got {self.shared_trunk!r}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict with the format version, as written to ``config.json``: every field but the processor,
        which is saved beside it (``preprocessor_config.json``; :meth:`ImageProcessor.to_dict`)."""
        data = asdict(self)
        del data["processor"]
        return {"format_version": FORMAT_VERSION, "library": "sef-toolkit", **data}

    @classmethod
    def from_dict(cls, data: dict[str, Any], processor: ImageProcessor | None = None) -> DetectorConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error (a typo must not be silently ignored).

        ``processor``: the one saved beside ``config.json`` (``preprocessor_config.json``), which ``config.json``
        does not repeat; without it, ``data["processor"]`` (settings, as in a ``[detector]`` table) or the
        processor's defaults. Files written before the processor owned its settings hold them as flat keys
        (:data:`LEGACY_PROCESSOR_KEYS`): without a saved processor they become its settings; with one they are
        dropped, as copies of it (the loader of that time refused a folder where the two disagreed)."""
        if processor is not None:
            data = {k: v for k, v in data.items() if k not in LEGACY_PROCESSOR_KEYS}
            if "processor" in data:
                raise ValueError("the image processor is given twice: in the config and beside it")
            data["processor"] = processor
        else:
            data = nest_processor_settings(data)
        return from_versioned_dict(cls, data, version=FORMAT_VERSION, meta_keys=_META_KEYS, what="detector config")


def nest_processor_settings(data: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``data`` (DetectorConfig keys) with the flat processor keys of older files
    (:data:`LEGACY_PROCESSOR_KEYS`: ``image_size``, ``crop``...) moved under ``processor``, by their
    :class:`ImageProcessor` names."""
    data = dict(data)
    flat = [old for old in LEGACY_PROCESSOR_KEYS if old in data]
    if flat and "processor" in data:
        raise ValueError(f"give the image processor's settings under processor, not also as {', '.join(flat)}")
    if flat:
        data["processor"] = {LEGACY_PROCESSOR_KEYS[old]: data.pop(old) for old in flat}
    return data


def _check_int(name: str, value: Any, minimum: int | None = None) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
