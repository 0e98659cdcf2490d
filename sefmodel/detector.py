"""The SEF detector: one frozen backbone, LoRA experts as named peft adapters on it, and a fusion head.

Forward modes for a fused detector (same weights -> same scores, to float tolerance):

* straightforward: for each expert, enable its adapter and run the whole backbone (E full passes);
* shared trunk: the blocks before the first LoRA block are identical for every expert, so run them once, then
  branch and run only the adapted blocks per expert. With LoRA in the last k of L blocks this costs
  ``L - k + E * k`` blocks instead of ``E * L``.

Training stages (see :meth:`SEFDetector.set_stage`): ``expert`` trains one adapter and its head, ``mixed`` is
the same on a single-expert detector fed both domains, ``fusion`` trains the fusion head (gate + classifier)
only. The backbone's own weights never train.
"""

from __future__ import annotations

import copy
import json
import os
import re
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import transformers
from huggingface_hub import ModelHubMixin
from peft import inject_adapter_in_model
from peft.tuners.tuners_utils import BaseTunerLayer
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from .backbones import Backbone, get_backbone_class, resolve_layer
from .config import DetectorConfig
from .fusion import get_fusion_class
from .preprocess import prepare
from .serialization import BACKBONE_WEIGHTS_NAME, CONFIG_NAME, WEIGHTS_NAME, resolve_folder

STAGES = ("expert", "mixed", "fusion")
_ADAPTER_KEY = re.compile(r"\.(lora_[A-Za-z_]+)\.([^.]+)(\.|$)")

MODEL_CARD = """---
{{ card_data }}
---

# SEF detector: AI-generated image detection

A detector from the SEF toolkit (Separate Expert Fusion). It scores how likely an image is AI-generated
(probability in [0, 1]).

- backbone: `{{ backbone }}` (`{{ backbone_id }}`, revision `{{ backbone_revision }}`), frozen
- experts (LoRA adapters + linear heads): {{ experts }}
- fusion: `{{ fusion }}`

{{ storage_note }} Load with:

```python
from sefmodel import SEFDetector
detector = SEFDetector.from_pretrained("{{ repo_id | default('PATH_OR_REPO_ID', true) }}")
scores = detector.score(images)  # list of PIL images of any size
```
"""


@dataclass
class Scores:
    """Result of :meth:`SEFDetector.score` for N images.

    Attributes:
        probs: (N,) float32, probability in [0, 1] that each image is generated (mean over its crops).
        gate_weights: (N, E) float32 rows summing to 1 (SEF only; mean over crops), else None.
        experts: the E expert names, in column order of ``gate_weights``.
        num_crops: crops averaged per image.
    """

    probs: torch.Tensor
    gate_weights: torch.Tensor | None
    experts: list[str]
    num_crops: list[int]


class SEFDetector(
    nn.Module,
    ModelHubMixin,
    library_name="sef-toolkit",
    tags=["ai-generated-image-detection", "lora", "mixture-of-experts"],
    model_card_template=MODEL_CARD,
):
    """Frozen backbone (ViT or CNN) + LoRA experts (+ fusion head).

    Args:
        config: the detector's configuration.
        backbone: an already built backbone to wrap (it gets the adapters injected); by default it is
            built from ``config`` (loaded by id + revision, or from ``backbone_config``).
    """

    def __init__(self, config: DetectorConfig, backbone: Backbone | None = None) -> None:
        super().__init__()
        config = copy.deepcopy(config)
        family = get_backbone_class(config.backbone)
        if backbone is None:
            if config.backbone_config is not None:
                backbone = family.from_config(config.backbone_config)
            else:
                backbone = family.from_pretrained(config.backbone_id, revision=config.backbone_revision)
        elif not isinstance(backbone, family):
            raise TypeError(f"config names backbone {config.backbone!r} but got a {type(backbone).__name__}")
        if config.backbone_config is None and config.backbone_revision is None and backbone.commit_hash:
            config.backbone_revision = backbone.commit_hash  # pin what was actually loaded
        self.config = config
        self._hub_mixin_config = config
        self.backbone = backbone

        num_layers = backbone.num_layers
        self.feature_index = resolve_layer(config.feature_layer, num_layers)
        blocks = config.lora.block_indices(num_layers, self.feature_index)
        if blocks[-1] > self.feature_index:
            raise ValueError(
                f"LoRA block {blocks[-1]} lies after the feature layer (block {self.feature_index}); "
                "it would not change the feature"
            )
        self.trunk_split = blocks[0]  # blocks [0, trunk_split) carry no LoRA: shareable between experts
        size = config.image_size or backbone.input_size
        if size % backbone.patch_size:
            raise ValueError(f"image_size {size} is not a multiple of the patch size {backbone.patch_size}")
        self.image_size = size

        peft_config = config.lora.peft_config(backbone, self.feature_index)
        with warnings.catch_warnings():
            # peft warns when a second adapter is injected; several named adapters are the design here.
            warnings.filterwarnings("ignore", message=".*multiple adapters.*")
            for name in config.experts:
                inject_adapter_in_model(copy.deepcopy(peft_config), backbone.model, adapter_name=name)
        backbone.adapters_injected()
        self._tuner_layers = [m for m in backbone.model.modules() if isinstance(m, BaseTunerLayer)]

        dim = backbone.feature_dim(self.feature_index, config.feature_pool)
        self.heads = nn.ModuleDict({name: nn.Linear(dim, 1) for name in config.experts})
        self.fusion = (
            None
            if config.fusion == "single"
            else get_fusion_class(config.fusion)(len(config.experts), dim, config.gate_hidden)
        )

        self.stage: str | None = None
        self._trainable: frozenset[str] = frozenset()
        self._active: str | None = None
        self._activate(config.experts[0])
        self.eval()

    # ---- experts and adapters ------------------------------------------------------------------------------

    @property
    def expert_names(self) -> list[str]:
        return list(self.config.experts)

    def _activate(self, name: str) -> None:
        """Make ``name`` the adapter used by the backbone's LoRA layers."""
        if name == self._active:
            return
        for layer in self._tuner_layers:
            layer.set_adapter(name)
        self._active = name
        self._apply_trainable()  # peft's set_adapter marks the active adapter trainable; our stage decides

    def _apply_trainable(self) -> None:
        for name, param in self.named_parameters():
            param.requires_grad_(name in self._trainable)

    @staticmethod
    def _is_adapter_key(key: str, expert: str | None = None) -> bool:
        match = _ADAPTER_KEY.search(key)
        return match is not None and (expert is None or match.group(2) == expert)

    # ---- training stages -----------------------------------------------------------------------------------

    def trainable_parameter_names(self, stage: str | None, expert: str | None = None) -> list[str]:
        """Names of the parameters that train in ``stage`` (None: nothing trains).

        * ``expert``: the adapter of ``expert`` (default: the only expert) and ``heads.<expert>``;
        * ``mixed``: the same, on a single-expert detector (one LoRA trained on both domains);
        * ``fusion``: the fusion head only (gate + classifier for SEF; classifier for mean/concat).
        """
        if stage is None:
            return []
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}; known: {', '.join(STAGES)}")
        names = [n for n, _ in self.named_parameters()]
        if stage == "fusion":
            if self.fusion is None:
                raise ValueError("stage 'fusion' needs a fused detector (fusion sef/mean/concat), this one is 'single'")
            return [n for n in names if n.startswith("fusion.")]
        if stage == "mixed" and self.fusion is not None:
            raise ValueError("stage 'mixed' trains one LoRA on both domains: build it with fusion='single'")
        if expert is None:
            if len(self.expert_names) != 1:
                raise ValueError(f"stage {stage!r} on several experts: say which one, one of {self.expert_names}")
            expert = self.expert_names[0]
        if expert not in self.expert_names:
            raise ValueError(f"unknown expert {expert!r}; this detector has {self.expert_names}")
        return [
            n
            for n in names
            if (n.startswith("backbone.") and self._is_adapter_key(n, expert)) or n.startswith(f"heads.{expert}.")
        ]

    def set_stage(self, stage: str | None, expert: str | None = None) -> list[nn.Parameter]:
        """Freeze everything except what ``stage`` trains (see :meth:`trainable_parameter_names`).

        Returns those parameters, ready for an optimizer. LoRA dropout is active in train mode only in the
        expert and mixed stages."""
        self._trainable = frozenset(self.trainable_parameter_names(stage, expert))
        self.stage = stage
        self._apply_trainable()
        if stage in ("expert", "mixed"):
            self._activate(expert or self.expert_names[0])
        self.train(self.training)
        return [p for n, p in self.named_parameters() if n in self._trainable]

    def train(self, mode: bool = True) -> SEFDetector:
        """Train/eval mode for the trainable parts; the frozen backbone always runs in eval mode (no dropout
        or stochastic depth), except LoRA dropout while an expert trains."""
        super().train(mode)
        self.backbone.model.eval()
        if mode and self.stage in ("expert", "mixed"):
            for name, module in self.backbone.model.named_modules():
                if name.endswith("lora_dropout"):
                    module.train(True)
        return self

    # ---- forward -------------------------------------------------------------------------------------------

    def expert_features(
        self,
        pixel_values: torch.Tensor,
        experts: Sequence[str] | None = None,
        shared_trunk: bool | None = None,
    ) -> torch.Tensor:
        """Per-expert features (a ViT's CLS token or a CNN stage's pooled map; see ``config.feature_pool``).

        Args:
            pixel_values: (B, 3, S, S) normalised images (see :mod:`sefmodel.preprocess`).
            experts: which experts, in order (default: all).
            shared_trunk: override ``config.shared_trunk``.

        Returns:
            (B, E, D) features, E = number of experts requested.
        """
        experts = list(self.expert_names if experts is None else experts)
        for name in experts:
            if name not in self.expert_names:
                raise ValueError(f"unknown expert {name!r}; this detector has {self.expert_names}")
        shared = self.config.shared_trunk if shared_trunk is None else shared_trunk
        bb = self.backbone
        pixel_values = pixel_values.to(device=self.device, dtype=self.dtype)
        stop = self.feature_index + 1
        if shared and self.trunk_split > 0 and len(experts) > 1:
            start = self.trunk_split
            trunk = bb.run_blocks(bb.embed(pixel_values), 0, start)  # no LoRA here: same for every expert
        else:
            start, trunk = 0, None
        feats = []
        for name in experts:
            self._activate(name)
            hidden = trunk if trunk is not None else bb.embed(pixel_values)
            feats.append(self._feature(bb.run_blocks(hidden, start, stop)))
        return torch.stack(feats, dim=1)

    def _feature(self, hidden: torch.Tensor) -> torch.Tensor:
        """The feature block's output -> (B, D) features, pooled as the config says."""
        return self.backbone.feature(hidden, self.feature_index, self.config.feature_pool)

    def frozen_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Features (B, D) of the bare frozen backbone, every adapter bypassed (reference / analysis)."""
        bb = self.backbone
        pixel_values = pixel_values.to(device=self.device, dtype=self.dtype)
        for layer in self._tuner_layers:
            layer.enable_adapters(False)
        try:
            return self._feature(bb.run_blocks(bb.embed(pixel_values), 0, self.feature_index + 1))
        finally:
            for layer in self._tuner_layers:
                layer.enable_adapters(True)
            self._apply_trainable()

    def forward(
        self,
        pixel_values: torch.Tensor,
        *,
        expert: str | None = None,
        gate_weights: torch.Tensor | None = None,
        shared_trunk: bool | None = None,
    ) -> dict[str, torch.Tensor]:
        """Score a batch.

        Args:
            pixel_values: (B, 3, S, S) normalised images.
            expert: run only this expert and its own head (expert stage / single-expert analysis).
            gate_weights: (B, E) weights that replace the SEF gate's output (analysis, e.g. one-hot).
            shared_trunk: override ``config.shared_trunk``.

        Returns:
            ``logits`` (B,) real-vs-generated logit (sigmoid -> P(generated)); ``features`` (B, E, D)
            per-expert features. Fused detectors also return ``fused`` (the classifier input),
            ``expert_logits`` (B, E) from the
            experts' own heads and, for SEF, ``gate_weights`` (B, E), each row a distribution over experts.
        """
        if expert is not None or self.fusion is None:
            name = expert or self.expert_names[0]
            feats = self.expert_features(pixel_values, [name], shared_trunk)
            return {"logits": self.heads[name](feats[:, 0]).squeeze(-1), "features": feats}
        feats = self.expert_features(pixel_values, None, shared_trunk)
        out = self.fusion(feats, gate_weights)
        out["features"] = feats
        out["expert_logits"] = torch.stack(
            [self.heads[n](feats[:, i]).squeeze(-1) for i, n in enumerate(self.expert_names)], dim=1
        )
        return out

    @property
    def device(self) -> torch.device:
        return next(self.heads.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.backbone.parameters()).dtype

    # ---- inference API -------------------------------------------------------------------------------------

    def preprocess(self, image: Image.Image, crop: str | None = None) -> torch.Tensor:
        """One PIL image of any size/mode -> (N, 3, S, S) normalised crops (N = 1 for center crop)."""
        cfg = self.config
        bb = self.backbone
        return prepare(
            image,
            self.image_size,
            bb.image_mean,
            bb.image_std,
            crop=crop or cfg.crop,
            crops_per_side=cfg.crops_per_side,
            resize=cfg.resize,
            small=cfg.small,
        )

    @torch.inference_mode()
    def score(
        self,
        images: Image.Image | str | os.PathLike | Iterable[Image.Image | str | os.PathLike],
        batch_size: int = 16,
        crop: str | None = None,
    ) -> Scores:
        """Probability that each image is generated.

        Args:
            images: PIL images (any size and mode) or paths, or one of them.
            batch_size: crops per forward pass.
            crop: ``"center"`` or ``"multi"``; default ``config.crop``. Multi-crop averages probabilities (and
                gate weights) over the crops of an image.

        Returns:
            :class:`Scores` with ``probs`` (N,) in [0, 1] and, for SEF, ``gate_weights`` (N, E).
        """
        if isinstance(images, (Image.Image, str, os.PathLike)):
            images = [images]
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        was_training = self.training
        self.eval()
        probs: list[torch.Tensor] = []
        gates: list[torch.Tensor] = []
        owners: list[int] = []
        counts: list[int] = []
        try:
            for batch, owner in self._crop_batches(images, batch_size, crop, counts):
                out = self(batch)
                probs.append(out["logits"].float().sigmoid().cpu())
                if "gate_weights" in out:
                    gates.append(out["gate_weights"].float().cpu())
                owners.extend(owner)
        finally:
            self.train(was_training)
        n = len(counts)
        index = torch.tensor(owners, dtype=torch.long)
        denom = torch.tensor(counts, dtype=torch.float32).clamp_min(1)
        mean_probs = torch.zeros(n).index_add_(0, index, torch.cat(probs)) / denom if probs else torch.zeros(0)
        mean_gates = None
        if gates:
            stacked = torch.cat(gates)
            mean_gates = torch.zeros(n, stacked.shape[1]).index_add_(0, index, stacked) / denom[:, None]
        return Scores(probs=mean_probs, gate_weights=mean_gates, experts=self.expert_names, num_crops=counts)

    def _crop_batches(
        self, images: Iterable[Any], batch_size: int, crop: str | None, counts: list[int]
    ) -> Iterator[tuple[torch.Tensor, list[int]]]:
        """Stream crops in batches of ``batch_size``, with the index of the image each crop came from."""
        buffer: list[torch.Tensor] = []
        owner: list[int] = []
        for i, image in enumerate(images):
            if isinstance(image, (str, os.PathLike)):
                with Image.open(image) as opened:
                    opened.load()
                    crops = self.preprocess(opened, crop)
            elif isinstance(image, Image.Image):
                crops = self.preprocess(image, crop)
            else:
                raise TypeError(f"image {i}: expected a PIL image or a path, got {type(image).__name__}")
            counts.append(len(crops))
            buffer.extend(crops)
            owner.extend([i] * len(crops))
            while len(buffer) >= batch_size:
                yield torch.stack(buffer[:batch_size]), owner[:batch_size]
                buffer, owner = buffer[batch_size:], owner[batch_size:]
        if buffer:
            yield torch.stack(buffer), owner

    # ---- save / load ---------------------------------------------------------------------------------------

    def trained_state_dict(self) -> dict[str, torch.Tensor]:
        """The tensors a detector folder stores: LoRA adapters, expert heads, fusion head; no backbone."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("backbone.") or self._is_adapter_key(k)}

    def backbone_state_dict(self) -> dict[str, torch.Tensor]:
        """The frozen backbone's own tensors (saved only for a backbone built from ``backbone_config``)."""
        return {k: v for k, v in self.state_dict().items() if k.startswith("backbone.") and not self._is_adapter_key(k)}

    def _save_pretrained(self, save_directory: Path) -> None:
        """Write ``config.json``, ``model.safetensors`` (+ ``backbone.safetensors`` for a random backbone)."""
        save_directory = Path(save_directory)
        (save_directory / CONFIG_NAME).write_text(json.dumps(self.config.to_dict(), indent=2, sort_keys=True) + "\n")
        meta = {
            "format": "pt",
            "sef_format_version": str(self.config.to_dict()["format_version"]),
            # LoRA tensors are keyed by the backbone's module names, which transformers may rename (5.18 did)
            "transformers_version": transformers.__version__,
        }
        save_file(_contiguous(self.trained_state_dict()), str(save_directory / WEIGHTS_NAME), metadata=meta)
        backbone_file = save_directory / BACKBONE_WEIGHTS_NAME
        if self.config.backbone_config is not None:
            # The one exception to "no backbone weights": a random backbone has no id to be re-loaded from.
            save_file(_contiguous(self.backbone_state_dict()), str(backbone_file), metadata=meta)
        else:
            backbone_file.unlink(missing_ok=True)

    def generate_model_card(self, *args: Any, **kwargs: Any) -> Any:
        cfg = self.config
        kwargs.setdefault("backbone", cfg.backbone)
        kwargs.setdefault("backbone_id", cfg.backbone_id or "random, built from config")
        kwargs.setdefault("backbone_revision", cfg.backbone_revision or "unpinned")
        kwargs.setdefault("experts", ", ".join(f"`{n}`" for n in cfg.experts))
        kwargs.setdefault("fusion", cfg.fusion)
        if cfg.backbone_config is None:
            note = (
                "This repository holds only the trained tensors (`model.safetensors`: LoRA adapters, heads, "
                "fusion head) and `config.json`; the backbone is loaded from its own repository by id and "
                "revision."
            )
        else:
            note = (
                "The backbone is a randomly initialised test model built from `config.json`, so its weights "
                "are stored here too (`backbone.safetensors`) beside the trained tensors "
                "(`model.safetensors`)."
            )
        kwargs.setdefault("storage_note", note)
        return super().generate_model_card(*args, **kwargs)

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        *,
        force_download: bool = False,
        token: str | bool | None = None,
        cache_dir: str | os.PathLike | None = None,
        local_files_only: bool = False,
        revision: str | None = None,
        backbone_id: str | None = None,
        backbone_revision: str | None = None,
        map_location: str | torch.device = "cpu",
    ) -> SEFDetector:
        """Load a detector from a local folder or a Hub repo id (huggingface_hub's argument conventions).

        Only ``config.json`` and safetensors files are read; a source holding pickle files is refused (see
        :mod:`sefmodel.serialization`). The backbone is loaded by its recorded id and revision, or from
        ``backbone_id`` / ``backbone_revision`` when given (e.g. a local copy of the same weights).
        """
        folder = resolve_folder(
            pretrained_model_name_or_path,
            revision=revision,
            cache_dir=cache_dir,
            force_download=force_download,
            token=token,
            local_files_only=local_files_only,
        )
        return cls._from_pretrained(
            model_id=str(folder),
            revision=None,
            cache_dir=cache_dir,
            force_download=force_download,
            local_files_only=local_files_only,
            token=token,
            backbone_id=backbone_id,
            backbone_revision=backbone_revision,
            map_location=map_location,
        )

    @classmethod
    def _from_pretrained(
        cls,
        *,
        model_id: str,
        revision: str | None,
        cache_dir: str | os.PathLike | None,
        force_download: bool,
        local_files_only: bool,
        token: str | bool | None,
        backbone_id: str | None = None,
        backbone_revision: str | None = None,
        map_location: str | torch.device = "cpu",
    ) -> SEFDetector:
        folder = resolve_folder(
            model_id,
            revision=revision,
            cache_dir=cache_dir,
            force_download=force_download,
            token=token,
            local_files_only=local_files_only,
        )
        config, trained, backbone_tensors = _read_folder(folder, map_location)
        if backbone_id is not None:
            if config.backbone_config is not None:
                raise ValueError("this detector's backbone was built from a config; there is no id to override")
            config.backbone_id, config.backbone_revision = backbone_id, backbone_revision
        detector = cls(config)
        detector.to(map_location)
        _load_exact(detector, trained, detector.trained_state_dict(), f"{folder / WEIGHTS_NAME}")
        if backbone_tensors is not None:
            _load_exact(
                detector,
                backbone_tensors,
                detector.backbone_state_dict(),
                f"{folder / BACKBONE_WEIGHTS_NAME}",
            )
        detector.eval()
        return detector

    @classmethod
    def from_experts(
        cls,
        sources: Sequence[SEFDetector | str | os.PathLike],
        fusion: str = "sef",
        names: Sequence[str] | None = None,
        gate_hidden: int | None = None,
        **load_kwargs: Any,
    ) -> SEFDetector:
        """Combine trained single-expert detectors (objects, folders or Hub ids) into one fused detector.

        The experts' adapters and heads are copied under ``names`` (default: each source's expert name); the
        fusion head is fresh. All sources must share the backbone, feature layer and LoRA settings.
        """
        if len(sources) < 2:
            raise ValueError("from_experts needs at least two single-expert detectors")
        loaded = []
        for src in sources:
            if isinstance(src, SEFDetector):
                loaded.append((src.config, src.trained_state_dict(), _backbone_or_none(src)))
            else:
                folder = resolve_folder(src, **load_kwargs)
                loaded.append(_read_folder(folder, "cpu"))
        first = loaded[0][0]
        for cfg, _, _ in loaded:
            if cfg.fusion != "single":
                raise ValueError(f"from_experts takes single-expert detectors; got one with fusion={cfg.fusion!r}")
            for key in (
                "backbone",
                "backbone_id",
                "backbone_revision",
                "backbone_config",
                "feature_layer",
                "feature_pool",
                "lora",
            ):
                if getattr(cfg, key) != getattr(first, key):
                    raise ValueError(f"experts disagree on {key}: {getattr(first, key)!r} vs {getattr(cfg, key)!r}")
        names = list(names) if names is not None else [cfg.experts[0] for cfg, _, _ in loaded]
        if len(names) != len(loaded):
            raise ValueError(f"{len(names)} names for {len(loaded)} experts")
        base = loaded[0][2]
        for _, _, other in loaded[1:]:
            if base is not None and (other is None or any(not torch.equal(base[k], other[k]) for k in base)):
                raise ValueError("experts were built on different random backbones; they cannot share one")
        config = copy.deepcopy(first)
        config.experts = names
        config.fusion = fusion
        if gate_hidden is not None:
            config.gate_hidden = gate_hidden
        config = DetectorConfig.from_dict(config.to_dict())  # re-validate the combination
        detector = cls(config)
        state = {}
        for (cfg, trained, _), new in zip(loaded, names, strict=True):
            old = cfg.experts[0]
            for key, value in trained.items():
                if key.startswith("backbone."):
                    match = _ADAPTER_KEY.search(key)
                    key = key[: match.start(2)] + new + key[match.end(2) :]
                elif key.startswith(f"heads.{old}."):
                    key = f"heads.{new}." + key[len(f"heads.{old}.") :]
                state[key] = value
        expected = {k: v for k, v in detector.trained_state_dict().items() if not k.startswith("fusion.")}
        _load_exact(detector, state, expected, "the experts")
        if base is not None:
            _load_exact(detector, base, detector.backbone_state_dict(), "the experts' backbone")
        return detector


def _contiguous(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous() for k, v in state.items()}


def _backbone_or_none(detector: SEFDetector) -> dict[str, torch.Tensor] | None:
    return detector.backbone_state_dict() if detector.config.backbone_config is not None else None


def _read_folder(
    folder: Path, map_location: str | torch.device
) -> tuple[DetectorConfig, dict[str, torch.Tensor], dict[str, torch.Tensor] | None]:
    config_path, weights_path = folder / CONFIG_NAME, folder / WEIGHTS_NAME
    for path in (config_path, weights_path):
        if not path.is_file():
            raise FileNotFoundError(f"{folder} is not a detector folder: {path.name} is missing")
    config = DetectorConfig.from_dict(json.loads(config_path.read_text()))
    device = str(map_location)
    trained = load_file(str(weights_path), device=device)
    backbone = None
    if config.backbone_config is not None:
        path = folder / BACKBONE_WEIGHTS_NAME
        if not path.is_file():
            raise FileNotFoundError(f"{folder}: the backbone was built from a config, so {path.name} must be there")
        backbone = load_file(str(path), device=device)
    return config, trained, backbone


def _load_exact(model: nn.Module, state: dict[str, torch.Tensor], expected: dict[str, Any], source: str) -> None:
    """Load ``state`` into ``model``; its keys must be exactly ``expected``'s, shapes matching."""
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        with safe_open(source, framework="pt") as f:
            saved_with = (f.metadata() or {}).get("transformers_version")
        hint = ""
        if saved_with and saved_with != transformers.__version__:
            hint = (
                f". It was saved with transformers {saved_with} and this is {transformers.__version__}: module names"
                " that LoRA tensors are keyed by changed in between (5.18 renamed the ViT projections); load it with"
                " a transformers release on the same side of that change"
            )
        raise ValueError(
            f"{source} does not match this detector: missing {missing[:5]} ({len(missing)}), "
            f"unexpected {unexpected[:5]} ({len(unexpected)}){hint}"
        )
    for key, value in state.items():
        if tuple(value.shape) != tuple(expected[key].shape):
            raise ValueError(f"{source}: {key} has shape {tuple(value.shape)}, expected {tuple(expected[key].shape)}")
    model.load_state_dict(state, strict=False)
