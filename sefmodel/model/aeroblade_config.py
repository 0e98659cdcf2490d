"""What an AEROBLADE detector folder's ``config.json`` holds (:class:`AerobladeConfig`; the detector is
:mod:`sefmodel.model.aeroblade`). Torch-free, so that ``sefmodel aeroblade --help`` reads the fields without loading the
model stack."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from sefcore.errors import SefError
from sefcore.fields import doc
from sefmodel.model.dictconfig import DETECTOR_TYPE_KEY, from_versioned_dict
from sefmodel.model.preprocess import ImageProcessor

DETECTOR_TYPE = "aeroblade"
FORMAT_VERSION = 1
DEFAULT_OFFSETS = {"features": math.log(0.1), "lpips": math.log(0.02), "l2": math.log(3e-4), "l1": math.log(0.0125)}
"""ln(distance) where an unfitted detector says 0.5, per distance: rough midpoints between the shared photos and
their TAEF2 reconstructions in 256 px centre crops (features: MobileNetV2 block 1; lpips: a guess from the paper's
figures). Not a calibration: fit them (--fit-on) or set a threshold with ``sefmodel calibrate``."""


@dataclass
class AerobladeConfig:
    """What an AEROBLADE detector folder's ``config.json`` holds (besides ``detector_type``)."""

    autoencoders: list[dict[str, Any]] = field(
        default_factory=list,
        metadata=doc("One entry per autoencoder: generator (taesd or vae), name (its folder under autoencoders/), "
                     "params (the --gen parameters that load the stored copy, paths relative to its folder) and source "
                     "(what the weights were: file names, sha256, revision; never a local path)."),
    )  # fmt: skip
    distance: str = field(
        default="features",
        metadata=doc("How far an image lies from its reconstruction: features (LPIPS-style on a frozen backbone's "
                     "early blocks), lpips (the LPIPS metric; needs the lpips package and the VGG16 weights), l2 or l1 "
                     "(pixels).", metavar="features|lpips|l2|l1"),
    )  # fmt: skip
    distance_backbone: str = field(
        default="mobilenet_v2",
        metadata=doc("Backbone family of the features distance (a registered family: mobilenet_v2, resnet, convnext, "
                     "dinov2...).", metavar="FAMILY"),
    )  # fmt: skip
    distance_layers: list[int] = field(
        default_factory=lambda: [1],
        metadata=doc("Blocks of that backbone whose outputs are compared, 0-based; the default is MobileNetV2's second "
                     "block, as AEROBLADE takes LPIPS's second layer"),
    )  # fmt: skip
    lpips_layer: int = field(
        default=2,
        metadata=doc("LPIPS layer of the lpips distance, 1-5 (AEROBLADE uses 2), or 0 for LPIPS itself (all five).",
                     metavar="0-5"),
    )  # fmt: skip
    distance_source: dict[str, Any] = field(
        default_factory=dict,
        metadata=doc("What the distance network's weights were (its folder or file name and the family); no local "
                     "path."),
    )  # fmt: skip
    image_size: int = field(
        default=256,
        metadata=doc("Crop side in pixels; a multiple of every autoencoder's downsampling factor (8 for TAESD and SD "
                     "VAEs).", metavar="PIXELS"),
    )  # fmt: skip
    crop: str = field(
        default="center",
        metadata=doc("Crops per image when scoring: center (one) or multi (a grid; probabilities are averaged).",
                     metavar="center|multi"),
    )  # fmt: skip
    crops_per_side: int = field(default=3, metadata=doc("Maximum crops along each side for crop=multi."))
    small: str = field(
        default="pad",
        metadata=doc("Images smaller than the crop: pad (black, reconstructs well: lowers the distance) or upscale "
                     "(bicubic)."),
    )  # fmt: skip
    scale: float = field(
        default=1.0, metadata=doc("Slope of P(generated) = sigmoid(scale * (offset - ln distance)); must be > 0.")
    )
    offset: float | None = field(
        default=None,
        metadata=doc("ln(distance) at which P(generated) = 0.5; None: the distance's rough default (DEFAULT_OFFSETS)."),
    )
    fit: dict[str, Any] | None = field(
        default=None,
        metadata=doc("How scale and offset were fitted (--fit-on): the set's name, counts, AP of -ln(distance) on it."),
    )

    def __post_init__(self) -> None:
        from sefmodel.model.distances import (
            known_distances,  # the distances are torch modules: loaded when a config is made
        )

        if self.distance not in known_distances():
            raise SefError(f"unknown distance {self.distance!r}; known: {', '.join(known_distances())}")
        if isinstance(self.distance_layers, int) or not all(isinstance(x, int) for x in self.distance_layers):
            raise SefError(f"distance_layers must be a list of block indices, got {self.distance_layers!r}")
        self.distance_layers = list(self.distance_layers)
        if not self.distance_layers:
            raise SefError("distance_layers: name at least one block")
        if not isinstance(self.lpips_layer, int) or not 0 <= self.lpips_layer <= 5:
            raise SefError(f"lpips_layer must be 0 (all five layers) or a layer 1-5, got {self.lpips_layer!r}")
        self.processor()  # the image processor validates image_size, crop, crops_per_side and small
        if not (isinstance(self.scale, (int, float)) and math.isfinite(self.scale) and self.scale > 0):
            raise SefError(f"scale must be a number > 0 (P(generated) falls as the distance grows), got {self.scale}")
        if self.offset is None:
            self.offset = DEFAULT_OFFSETS[self.distance]
        if not (isinstance(self.offset, (int, float)) and math.isfinite(self.offset)):
            raise SefError(f"offset must be a finite number, got {self.offset!r}")
        names = [entry.get("name") for entry in self.autoencoders]
        if len(set(names)) != len(names):
            raise SefError(f"autoencoder names must be unique, got {names}; rename one with as=NAME")

    def distance_settings(self) -> dict[str, Any]:
        return {"distance_backbone": self.distance_backbone, "distance_layers": self.distance_layers,
                "lpips_layer": self.lpips_layer}  # fmt: skip

    def processor(self) -> ImageProcessor:
        """The image processor these settings imply: crops in [0, 1] (mean 0, std 1), native resolution."""
        return ImageProcessor(size=self.image_size, image_mean=(0.0, 0.0, 0.0), image_std=(1.0, 1.0, 1.0),
                              small=self.small, crop=self.crop, crops_per_side=self.crops_per_side)  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        return {"format_version": FORMAT_VERSION, "library": "sef-toolkit", DETECTOR_TYPE_KEY: DETECTOR_TYPE,
                **asdict(self)}  # fmt: skip

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AerobladeConfig:
        if data.get(DETECTOR_TYPE_KEY) != DETECTOR_TYPE:
            raise ValueError(f"not an AEROBLADE config ({DETECTOR_TYPE_KEY} is {data.get(DETECTOR_TYPE_KEY)!r})")
        meta = ("format_version", "library", DETECTOR_TYPE_KEY)
        try:
            return from_versioned_dict(cls, data, version=FORMAT_VERSION, meta_keys=meta, what="aeroblade config")
        except SefError as e:
            raise ValueError(str(e)) from None
