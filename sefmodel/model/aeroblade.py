"""AEROBLADE (Ricker, Lukovnikov and Fischer, CVPR 2024): a training-free detector of images made by latent
diffusion models. An autoencoder reconstructs an image; generated images, which came out of such a decoder, are
reconstructed more faithfully than real ones. The score is the distance between an image and its reconstruction:
the smaller, the more likely generated.

Here the autoencoders are the toolkit's own generators (``taesd``, ``vae``: :mod:`sefdata.generators`, given as the
same ``NAME:key=value`` specs as ``sefdata build --gen``) and the distance one of :mod:`sefmodel.model.distances`
(``features`` by default: LPIPS-style on a frozen backbone's early blocks; ``lpips`` where the lpips package and the
VGG16 weights are at hand, as in the paper; ``l2`` / ``l1``). With several autoencoders an image's distance is the
smallest over them, as in the paper.

**Probability.** ``P(generated) = sigmoid(scale * (offset - ln d))`` with ``scale > 0``: monotone in ``-d``, so AP
and AUROC are those of the distance itself, whatever the two numbers. They are fitted by logistic regression on a
labelled set when one is given (``--fit-on``); otherwise ``offset`` is a rough default per distance
(:data:`~sefmodel.model.aeroblade_config.DEFAULT_OFFSETS`) and the decision threshold should come from ``sefmodel
calibrate`` (real images alone).

**Pixels.** Scoring goes through the detector's :class:`~sefmodel.model.preprocess.ImageProcessor` like every
detector's: native resolution, ``image_size`` crops (centre by default, ``multi`` averages a grid's probabilities), RGB
in [0, 1] (mean 0, std 1); an image smaller than the crop is padded with black, which reconstructs almost perfectly and
so lowers the distance: score such images with a smaller ``image_size``.

**Folder.** Like any detector: ``config.json`` (:class:`~sefmodel.model.aeroblade_config.AerobladeConfig`,
``"detector_type": "aeroblade"``), ``preprocessor_config.json``, ``README.md``, ``threshold.json`` after ``sefmodel
calibrate``, and the networks it scores with, copied in so that the folder is self-contained and names no local path:
``autoencoders/NAME/`` (TAESD encoder and decoder as safetensors, or a diffusers VAE folder) and ``distance/`` (the
backbone's transformers folder, or the LPIPS weights). :func:`sefmodel.predict.load_detector` dispatches on
``detector_type``, so ``sefmodel eval``, ``predict``, ``serve``, ``calibrate`` and ``publish`` take it like a trained
detector.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from PIL import Image
from torch import nn

from sefcore.errors import SefError
from sefmodel.model.aeroblade_config import DETECTOR_TYPE, AerobladeConfig
from sefmodel.model.distances import Distance, get_distance_class
from sefmodel.model.folder import AUTOENCODER_FOLDER, CONFIG_NAME, DISTANCE_FOLDER, resolve_folder
from sefmodel.model.preprocess import ImageProcessor
from sefmodel.pipeline import crop_batches

if TYPE_CHECKING:
    from sefdata.generators import Generator
    from sefmodel.evaluation.threshold import CalibratedThreshold

AUTOENCODERS = ("taesd", "vae")
"""Generators that are autoencoders (encode -> decode), usable here."""
_MIN_DISTANCE = 1e-12  # a perfect reconstruction (e.g. an all-padding crop) has ln d = ln 1e-12, not -inf


def parse_autoencoder(text: str) -> Any:
    """One ``--autoencoder`` spec -> a :class:`sefdata.generators.GenSpec` (taesd or vae), with one-line errors."""
    from sefdata.generators import GenSpec

    name = text.strip().partition(":")[0]
    if name not in AUTOENCODERS:
        raise SefError(f"--autoencoder {text!r}: AEROBLADE reconstructs with an autoencoder, one of "
                       f"{', '.join(AUTOENCODERS)} (as in sefdata build --gen), not {name!r}")  # fmt: skip
    try:
        return GenSpec.parse(text)
    except SefError as e:
        raise SefError(str(e).replace("--gen", "--autoencoder", 1)) from None


def _runtime(device: str | torch.device) -> Any:
    from sefdata.generators import Runtime

    return Runtime(torch.device(device), torch.float32)


class AerobladeDetector(nn.Module):
    """Scores images by how well autoencoders reconstruct them (module docstring).

    Args:
        config: the detector's settings (scale and offset of the probability included).
        autoencoders: name -> a loaded ``taesd`` or ``vae`` generator (in ``config.autoencoders`` order).
        distance: the distance between an image and its reconstruction.
        device: where the autoencoders run (the distance network is moved there too).

    Attributes:
        processor: turns images into crops in [0, 1] (saved as ``preprocessor_config.json``).
        calibrated_threshold: the threshold ``sefmodel calibrate`` fitted (``threshold.json``), else None.
    """

    detector_type: ClassVar[str] = DETECTOR_TYPE
    config_class: ClassVar[type[AerobladeConfig]] = AerobladeConfig
    explainable: ClassVar[bool] = False  # no experts, no Grad-CAM
    fusion = None  # no gate weights in predict's records

    def __init__(
        self,
        config: AerobladeConfig,
        autoencoders: dict[str, Generator],
        distance: Distance,
        device: str | torch.device = "cpu",
    ) -> None:
        super().__init__()
        if not autoencoders:
            raise SefError("AEROBLADE needs at least one autoencoder (--autoencoder taesd:... or vae:...)")
        self.config = copy.deepcopy(config)
        self.autoencoders = dict(autoencoders)  # generators hold their own modules, on their own device
        for name, generator in self.autoencoders.items():
            if self.config.image_size % generator.multiple:
                raise SefError(f"image_size {self.config.image_size} is not a multiple of {generator.multiple}, "
                               f"the downsampling factor of autoencoder {name!r}")  # fmt: skip
        self.distance = distance.to(device).eval().requires_grad_(False)
        self._device = torch.device(device)
        self.processor = self.config.processor()
        self.calibrated_threshold: CalibratedThreshold | None = None

    # ---- what the scoring front ends read -------------------------------------------------------------------

    @property
    def expert_names(self) -> list[str]:
        return []

    @property
    def image_size(self) -> int:
        return self.processor.size

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def dtype(self) -> torch.dtype:
        """What the distances are computed in (float32: the scores are compared across machines)."""
        return torch.float32

    def describe(self) -> dict[str, Any]:
        """What reports say about this detector (eval's results.json, serve's /api/info)."""
        c = self.config
        names = ", ".join(f"`{e['name']}` ({e['generator']})" for e in c.autoencoders)
        how = {"features": f"LPIPS-style on `{c.distance_backbone}` blocks {c.distance_layers}",
               "lpips": f"LPIPS (vgg) layer {c.lpips_layer}" if c.lpips_layer else "LPIPS (vgg)",
               "l2": "mean squared pixel difference", "l1": "mean absolute pixel difference"}[c.distance]  # fmt: skip
        fitted = f"fitted on `{c.fit['on']}`" if c.fit else "not fitted"
        return {
            "type": DETECTOR_TYPE,
            "backbone": None,
            "backbone_id": None,
            "experts": [],
            "fusion": None,
            "image_size": self.image_size,
            "autoencoders": [e["name"] for e in c.autoencoders],
            "distance": c.distance,
            "description": f"AEROBLADE (training-free): reconstruction distance to autoencoder(s) {names}, distance "
            f"`{c.distance}` ({how}); P(generated) = sigmoid({c.scale:.4g} * ({c.offset:.4g} - ln distance)), "
            f"{fitted}",
        }

    # ---- forward ---------------------------------------------------------------------------------------------

    def reconstruct(self, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        """Crops in [0, 1] (B, 3, S, S) -> each autoencoder's reconstruction, float32 on :attr:`device`. Random
        latents (the ``vae`` generator's posterior sample) are drawn with seed 0 for every image, so scores are
        deterministic (float rounding may still differ in the last digits with the batch size, as for any model)."""
        x = pixels.to(torch.float32)  # a generator moves its input to its own device (no round trip to the CPU)
        seeds = [0] * len(x)
        return {name: gen.generate(x, seeds).to(self.device, torch.float32) for name, gen in self.autoencoders.items()}

    def forward(self, pixel_values: torch.Tensor) -> dict[str, torch.Tensor]:
        """Crops in [0, 1] (B, 3, S, S) -> ``logits`` (B,) (sigmoid -> P(generated)), ``distance`` (B,) (the
        smallest over the autoencoders) and ``distances`` (B, K), one column per autoencoder."""
        x = pixel_values.to(self.device, torch.float32)
        recons = self.reconstruct(x)
        distances = torch.stack([self.distance(x, r) for r in recons.values()], dim=1)
        distance = distances.min(dim=1).values
        return {"logits": self.logit(distance), "distance": distance, "distances": distances}

    def logit(self, distance: torch.Tensor) -> torch.Tensor:
        """``scale * (offset - ln distance)``: the logit of P(generated)."""
        return self.config.scale * (self.config.offset - distance.clamp_min(_MIN_DISTANCE).log())

    # ---- inference API (scores: sefmodel.score(detector, images), as for every detector kind) -----------------

    @torch.inference_mode()
    def distances(
        self,
        images: Iterable[Image.Image | str | os.PathLike],
        batch_size: int = 16,
        crop: str | None = None,
    ) -> np.ndarray:
        """Each image's reconstruction distance (N,), float64: the mean over its crops of the smallest distance
        over the autoencoders."""
        counts: list[int] = []
        sums: dict[int, float] = {}
        for batch, owner in crop_batches(images, self.processor, batch_size, crop, counts):
            for i, d in zip(owner, self(batch)["distance"].tolist(), strict=True):
                sums[i] = sums.get(i, 0.0) + d
        return np.array([sums[i] / n for i, n in enumerate(counts)], dtype=np.float64)

    # ---- save / load -------------------------------------------------------------------------------------------

    def save_pretrained(self, folder: str | os.PathLike) -> None:
        """Write the detector folder (module docstring): config, processor, the autoencoders' and the distance
        network's weights, a model card, and ``threshold.json`` when calibrated (a stale one is removed)."""
        from sefmodel.evaluation.threshold import THRESHOLD_NAME
        from sefmodel.model_card import make_aeroblade_card

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        for sub in (AUTOENCODER_FOLDER, DISTANCE_FOLDER):
            shutil.rmtree(folder / sub, ignore_errors=True)
        config = copy.deepcopy(self.config)
        for entry in config.autoencoders:
            entry["params"] = self.autoencoders[entry["name"]].save_weights(folder / AUTOENCODER_FOLDER / entry["name"])
        self.distance.save(folder / DISTANCE_FOLDER)
        (folder / CONFIG_NAME).write_text(json.dumps(config.to_dict(), indent=2, sort_keys=True) + "\n")
        self.processor.save_pretrained(folder)
        make_aeroblade_card(self).save(folder / "README.md")
        if self.calibrated_threshold is not None:
            self.calibrated_threshold.save(folder)
        else:
            (folder / THRESHOLD_NAME).unlink(missing_ok=True)

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        *,
        map_location: str | torch.device = "cpu",
        revision: str | None = None,
        token: str | bool | None = None,
        local_files_only: bool = False,
    ) -> AerobladeDetector:
        """Load a detector folder (local, or a Hub repo id: only JSON, safetensors and Markdown are fetched, and a
        source holding pickles is refused)."""
        from sefdata.generators import restore_generator
        from sefmodel.evaluation.threshold import CalibratedThreshold

        folder = resolve_folder(pretrained_model_name_or_path, revision=revision, token=token,
                                local_files_only=local_files_only)  # fmt: skip
        path = folder / CONFIG_NAME
        if not path.is_file():
            raise FileNotFoundError(f"{folder} is not a detector folder: {CONFIG_NAME} is missing")
        config = AerobladeConfig.from_dict(json.loads(path.read_text()))
        processor = ImageProcessor.from_pretrained(folder)
        if processor.to_dict() != config.processor().to_dict():
            raise ValueError("the image processor (preprocessor_config.json) disagrees with config.json")
        runtime = _runtime(map_location)
        autoencoders = {}
        for entry in config.autoencoders:
            sub = folder / AUTOENCODER_FOLDER / entry["name"]
            if not sub.is_dir():
                raise FileNotFoundError(f"{folder}: the weights of autoencoder {entry['name']!r} ({sub.name}/) are "
                                        "missing")  # fmt: skip
            autoencoders[entry["name"]] = restore_generator(entry["generator"], entry["params"], sub, runtime)
        distance = get_distance_class(config.distance).load(folder / DISTANCE_FOLDER, config.distance_settings())
        detector = cls(config, autoencoders, distance, runtime.device)
        detector.calibrated_threshold = CalibratedThreshold.load(folder)
        return detector

    @classmethod
    def create(
        cls,
        autoencoders: Sequence[str],
        *,
        distance_model: str | None = None,
        device: str | torch.device = "cpu",
        **settings: Any,
    ) -> AerobladeDetector:
        """A detector from the user's weights, in memory (:func:`sefmodel.aeroblade_build.build_aeroblade` also fits
        and saves it).

        Args:
            autoencoders: ``--autoencoder`` specs, e.g. ``taesd:encoder=PATH,decoder=PATH`` or
                ``vae:model=DIR,sample=false`` (:func:`parse_autoencoder`).
            distance_model: the distance network's weights (features: a transformers folder or Hub id, default the
                family's Hub id; lpips: torchvision's VGG16 file).
            device: where it runs.
            settings: :class:`AerobladeConfig` fields (distance, distance_layers, image_size, crop, scale...).
        """
        from sefcore.privacy import public_json, public_name
        from sefdata.generators import create_generator

        if not autoencoders:
            raise SefError("give at least one --autoencoder (taesd:encoder=PATH,decoder=PATH or vae:model=DIR)")
        unknown = sorted(set(settings) - set(AerobladeConfig.__dataclass_fields__))
        if unknown:
            raise SefError(f"unknown AEROBLADE settings {unknown}")
        config = AerobladeConfig(**settings)
        distance_class = get_distance_class(config.distance)
        if distance_model is not None and not distance_class.needs_model:
            raise SefError(f"--distance-model: the {config.distance} distance uses no network")
        specs = [parse_autoencoder(text) for text in autoencoders]
        runtime = _runtime(device)
        loaded, entries = {}, []
        for spec in specs:
            if spec.field in loaded:
                raise SefError(f"--autoencoder: two autoencoders named {spec.field!r}; rename one with as=NAME")
            try:
                generator = create_generator(spec, runtime)
            except SefError as e:  # the generator's messages name the --gen flag
                raise SefError(str(e).replace("--gen", "--autoencoder", 1)) from None
            loaded[spec.field] = generator
            entries.append({"name": spec.field, "generator": spec.name, "params": {},
                            "source": public_json(generator.model_info())})  # fmt: skip
        config.autoencoders = entries
        distance = distance_class.from_source(distance_model, config.distance_settings())
        if distance_model is not None or distance_class.needs_model:
            config.distance_source = {
                "model": public_name(distance_model) if distance_model else None,
                **({"family": config.distance_backbone} if config.distance == "features" else {}),
            }
        return cls(config, loaded, distance, device)

    def fit(self, images: Iterable[Any], labels: Sequence[int], *, on: str, batch_size: int = 16) -> dict[str, Any]:
        """Fit ``scale`` and ``offset`` by logistic regression of the labels (0 real, 1 generated) on
        ``-ln distance`` of ``images`` (PIL images or paths); returns the ``fit`` record, also stored in the config.
        Raises when the generated images do not reconstruct better than the real ones (slope <= 0)."""
        from sefmodel.evaluation.metrics import average_precision

        labels = np.asarray(labels, dtype=np.int64)
        if set(np.unique(labels)) != {0, 1}:
            raise SefError(f"--fit-on {on}: needs real and generated images, got {np.bincount(labels, minlength=2)}")
        x = -np.log(np.maximum(self.distances(images, batch_size), _MIN_DISTANCE))
        scale, offset = fit_logistic(x, labels, on)
        self.config.scale, self.config.offset = scale, offset
        self.config.fit = {
            "on": on, "n_real": int((labels == 0).sum()), "n_fake": int((labels == 1).sum()),
            "ap": round(float(average_precision(labels, x)), 4),
            "method": "logistic regression (scikit-learn, C=1) of the labels on -ln(distance)",
        }  # fmt: skip
        return self.config.fit


def fit_logistic(x: np.ndarray, labels: np.ndarray, on: str = "the fit set") -> tuple[float, float]:
    """``(scale, offset)`` of P(generated) = sigmoid(scale * (offset - ln d)) from ``x = -ln d`` and the labels: the
    1-D logistic regression ``sigmoid(w x + b) = sigmoid(w (b / w - ln d))`` gives ``scale = w``, ``offset = b / w``.
    ``w <= 0`` (generated images farther from their reconstructions than real ones) is an error."""
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(C=1.0).fit(np.asarray(x, dtype=np.float64)[:, None], labels)
    w, b = float(model.coef_[0, 0]), float(model.intercept_[0])
    if w <= 0:
        raise SefError(f"--fit-on {on}: the generated images do not reconstruct better than the real ones there "
                       f"(fitted slope {w:.3g} <= 0): the AEROBLADE premise fails for these autoencoders on these "
                       "images; nothing was written")  # fmt: skip
    return w, b / w
