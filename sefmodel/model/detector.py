"""The SEF detector: one frozen backbone, LoRA experts as named peft adapters on it, and a fusion head.

Forward modes for a fused detector (same weights -> same scores, to float tolerance):

* straightforward: for each expert, enable its adapter and run the whole backbone (E full passes);
* shared trunk: the blocks before the first LoRA block are identical for every expert, so run them once, then
  branch and run only the adapted blocks per expert. With LoRA in the last k of L blocks this costs
  ``L - k + E * k`` blocks instead of ``E * L``.

Training stages (see :meth:`SEFDetector.set_stage`): ``expert`` trains one adapter and its head, ``mixed`` is
the same on a single-expert detector fed both domains, ``fusion`` trains the fusion head (gate + classifier)
only. The backbone's own weights never train.

This file is the module. It imports what it is made of and its file format (:mod:`sefmodel.model.folder`), never what
uses it: the scoring pipeline that opens images, batches their crops and averages them
(:func:`sefmodel.pipeline.score`), combining experts trained apart (:func:`sefmodel.model.combine.combine_experts`) and
loading any kind of detector folder (:func:`sefmodel.predict.load_detector`) import the detector, not the other way
round. Beside it: the image processor that makes its inputs (:mod:`sefmodel.model.preprocess`) and model cards
(:mod:`sefmodel.model_card`).
"""

from __future__ import annotations

import copy
import os
import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from huggingface_hub import ModelHubMixin
from peft import inject_adapter_in_model
from peft.tuners.tuners_utils import BaseTunerLayer
from PIL import Image
from torch import nn

from sefmodel.evaluation.golden import DEFAULT_COUNT as GOLDEN_COUNT
from sefmodel.evaluation.golden import drop_stale
from sefmodel.model.backbones import Backbone, get_backbone_class, resolve_layer
from sefmodel.model.config import DetectorConfig
from sefmodel.model.folder import (
    BACKBONE_WEIGHTS_NAME,
    WEIGHTS_NAME,
    DetectorFolder,
    load_exact,
    read_folder,
    resolve_folder,
    write_folder,
)
from sefmodel.model.fusion import get_fusion_class
from sefmodel.model.preprocess import ImageProcessor
from sefmodel.model.spectrum import highpass, periodic_spectrum, spectrum_dim
from sefmodel.model_card import MODEL_CARD, card_fields

if TYPE_CHECKING:
    from sefmodel.evaluation.golden import GoldenSource
    from sefmodel.evaluation.threshold import CalibratedThreshold

STAGES = ("expert", "mixed", "fusion")
_ADAPTER_KEY = re.compile(r"\.(lora_[A-Za-z_]+)\.([^.]+)(\.|$)")


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

    detector_type: ClassVar[str] = "sef"  # config.json's detector_type (sefmodel.model.folder.DETECTOR_TYPES)
    config_class: ClassVar[type[DetectorConfig]] = DetectorConfig
    explainable: ClassVar[bool] = True  # per-expert Grad-CAM (sefmodel explain, serve's heatmaps)

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
        # the processor's unset crop side and normalisation are the backbone's; a saved processor has them all
        config.processor = config.processor.for_backbone(backbone)
        if config.processor.size % backbone.patch_size:
            raise ValueError(
                f"image_size {config.processor.size} is not a multiple of the patch size {backbone.patch_size}"
            )
        self.image_size = config.processor.size

        peft_config = config.lora.peft_config(backbone, self.feature_index)
        with warnings.catch_warnings():
            # peft warns when a second adapter is injected; several named adapters are the design here.
            warnings.filterwarnings("ignore", message=".*multiple adapters.*")
            for name in config.experts:
                inject_adapter_in_model(copy.deepcopy(peft_config), backbone.model, adapter_name=name)
        backbone.adapters_injected()
        self._tuner_layers = [m for m in backbone.model.modules() if isinstance(m, BaseTunerLayer)]

        dim = backbone.feature_dim(self.feature_index, config.feature_pool)
        if config.spectrum:
            dim += spectrum_dim(self.image_size)
        self.heads = nn.ModuleDict({name: nn.Linear(dim, 1) for name in config.experts})
        self.fusion = (
            None
            if config.fusion == "single"
            else get_fusion_class(config.fusion)(len(config.experts), dim, config.gate_hidden, config.gate_input)
        )

        self.stage: str | None = None
        # the decision threshold fitted on real images (``sefmodel calibrate``; threshold.json), else None
        self.calibrated_threshold: CalibratedThreshold | None = None
        self._trainable: frozenset[str] = frozenset()
        self._active: str | None = None
        self._activate(config.experts[0])
        self.eval()

    # ---- experts and adapters ------------------------------------------------------------------------------

    @property
    def expert_names(self) -> list[str]:
        return list(self.config.experts)

    @property
    def processor(self) -> ImageProcessor:
        """The :class:`~sefmodel.model.preprocess.ImageProcessor` (``config.processor``, complete) that turns images
        into this detector's inputs, for training, validation, scoring and explanations alike; saved with it."""
        return self.config.processor

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
            pixel_values: (B, 3, S, S) normalised images (see :mod:`sefmodel.model.preprocess`).
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
        spectrum = self._spectrum(pixel_values) if self.config.spectrum else None
        pixel_values = self._backbone_input(pixel_values)
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
        stacked = torch.stack(feats, dim=1)
        if spectrum is not None:  # the same evidence beside every expert's feature
            stacked = torch.cat([stacked, spectrum[:, None].expand(-1, len(experts), -1)], dim=-1)
        return stacked

    def _backbone_input(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Normalised crops -> what the backbone sees (``config.input_filter``), on its device and dtype."""
        pixel_values = pixel_values.to(device=self.device, dtype=self.dtype)
        return highpass(pixel_values) if self.config.input_filter == "highpass" else pixel_values

    def _spectrum(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Normalised crops -> their periodic-spectrum feature (B, F), computed in float32 on the un-normalised
        crop (as the backbone receives it: in the detector's dtype)."""
        x = pixel_values.to(device=self.device, dtype=self.dtype).float()
        mean = torch.tensor(self.processor.image_mean, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.processor.image_std, device=x.device).view(1, 3, 1, 1)
        return periodic_spectrum(x * std + mean).to(self.dtype)

    def _feature(self, hidden: torch.Tensor) -> torch.Tensor:
        """The feature block's output -> (B, D) features, pooled as the config says."""
        return self.backbone.feature(hidden, self.feature_index, self.config.feature_pool)

    def frozen_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Features (B, D) of the bare frozen backbone, every adapter bypassed (reference / analysis): the pooled
        block output of what the backbone sees (after ``input_filter``), without the spectrum feature."""
        bb = self.backbone
        pixel_values = self._backbone_input(pixel_values)
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
            experts' own heads and, for gated fusions (sef, moe), ``gate_weights`` (B, E), each row a
            distribution over experts.
        """
        if expert is not None or self.fusion is None:
            name = expert or self.expert_names[0]
            feats = self.expert_features(pixel_values, [name], shared_trunk)
            return {"logits": self.heads[name](feats[:, 0]).squeeze(-1), "features": feats}
        feats = self.expert_features(pixel_values, None, shared_trunk)
        expert_logits = torch.stack(
            [self.heads[n](feats[:, i]).squeeze(-1) for i, n in enumerate(self.expert_names)], dim=1
        )
        out = self.fusion(feats, expert_logits, gate_weights)
        out["features"] = feats
        out["expert_logits"] = expert_logits
        return out

    @property
    def device(self) -> torch.device:
        return next(self.heads.parameters()).device

    def describe(self) -> dict[str, Any]:
        """What reports say about this detector (eval's results.json, serve's /api/info)."""
        c = self.config
        return {"type": self.detector_type, "backbone": c.backbone, "backbone_id": c.backbone_id,
                "experts": self.expert_names, "fusion": c.fusion, "image_size": self.image_size}  # fmt: skip

    @property
    def dtype(self) -> torch.dtype:
        return next(self.backbone.parameters()).dtype

    # ---- inference API -------------------------------------------------------------------------------------

    def preprocess(self, image: Image.Image, crop: str | None = None) -> torch.Tensor:
        """One PIL image of any size/mode -> (N, 3, S, S) normalised crops (N = 1 for center crop), by
        :attr:`processor`."""
        return self.processor(image, crop)

    # ---- save / load ---------------------------------------------------------------------------------------

    def trained_state_dict(self) -> dict[str, torch.Tensor]:
        """The tensors a detector folder stores: LoRA adapters, expert heads, fusion head; no backbone."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("backbone.") or self._is_adapter_key(k)}

    def backbone_state_dict(self) -> dict[str, torch.Tensor]:
        """The frozen backbone's own tensors (saved only for a backbone built from ``backbone_config``)."""
        return {k: v for k, v in self.state_dict().items() if k.startswith("backbone.") and not self._is_adapter_key(k)}

    def save_pretrained(
        self,
        save_directory: str | os.PathLike,
        *,
        golden: GoldenSource | None = None,
        golden_count: int = GOLDEN_COUNT,
        **kwargs: Any,
    ) -> str | None:
        """Save the detector folder (see :mod:`sefmodel.model.folder`); huggingface_hub's ``config``,
        ``repo_id``, ``push_to_hub`` and ``model_card_kwargs`` as in its mixin.

        Args:
            golden: store a golden set (:mod:`sefmodel.evaluation.golden`) of ``golden_count`` images from here in the
                folder, with the probabilities this detector gives them: a folder of images (``real/`` + ``fake/`` gives
                labels), a sefdata build folder or shards, another golden set's folder, or a list of PIL images or
                image paths. Without it, a golden set already in the folder is kept only if it was made with the
                very weights saved now (``sefmodel check`` re-scores it).
        """
        if golden is not None and kwargs.get("push_to_hub"):
            raise ValueError("golden= with push_to_hub=True: save the folder, then upload it (sefmodel publish)")
        url = super().save_pretrained(save_directory, **kwargs)
        if golden is not None:
            from sefmodel.evaluation.golden import write_golden

            for warning in write_golden(self, save_directory, golden, count=golden_count)[1]:
                warnings.warn(f"golden set: {warning}", stacklevel=2)
        return url

    def _save_pretrained(self, save_directory: Path) -> None:
        """Write the detector folder's files (see :mod:`sefmodel.model.folder`); the mixin adds the card."""
        backbone = self.backbone_state_dict() if self.config.backbone_config is not None else None
        folder = Path(save_directory)
        write_folder(
            folder, DetectorFolder(self.config, self.trained_state_dict(), backbone, self.calibrated_threshold)
        )
        drop_stale(folder)  # a golden set is kept only if these are the weights it was made with

    def generate_model_card(self, *args: Any, **kwargs: Any) -> Any:
        for key, value in card_fields(self.config, self.processor).items():
            kwargs.setdefault(key, value)
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

        Only JSON and safetensors files are read; a source holding pickle files is refused (see
        :mod:`sefmodel.model.folder`). The backbone is loaded by its recorded id and revision, or from
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
        saved = read_folder(folder, map_location)
        config = saved.config
        if backbone_id is not None:  # e.g. a local copy of the same weights
            if config.backbone_config is not None:
                raise ValueError("this detector's backbone was built from a config; there is no id to override")
            config.backbone_id, config.backbone_revision = backbone_id, backbone_revision
        detector = cls(config)
        detector.to(map_location)
        load_exact(detector, saved.trained, detector.trained_state_dict(), f"{folder / WEIGHTS_NAME}")
        if saved.backbone is not None:
            load_exact(detector, saved.backbone, detector.backbone_state_dict(), f"{folder / BACKBONE_WEIGHTS_NAME}")
        detector.calibrated_threshold = saved.threshold
        detector.eval()
        return detector

    @staticmethod
    def rename_expert_key(key: str, old: str, new: str) -> str:
        """A trained-tensor key of expert ``old`` (its LoRA tensors or head) as it reads for expert ``new``."""
        if key.startswith("backbone."):
            match = _ADAPTER_KEY.search(key)
            if match is not None and match.group(2) == old:
                return key[: match.start(2)] + new + key[match.end(2) :]
        elif key.startswith(f"heads.{old}."):
            return f"heads.{new}." + key[len(f"heads.{old}.") :]
        return key
