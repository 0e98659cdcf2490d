"""Distances between an image and its reconstruction, for the training-free AEROBLADE detector
(:mod:`sefmodel.model.aeroblade`). One class per distance, registered by name; each takes two batches of RGB images in
[0, 1], float32 (B, 3, H, W), and returns (B,) non-negative distances.

* ``features`` (default): LPIPS-style distance on a frozen backbone of the registry (default MobileNetV2) that is
  loaded from local weights: at each of a few early blocks, both feature maps are unit-normalised along their
  channels, the squared difference is summed over channels and averaged over positions; the blocks' values are
  averaged. This is LPIPS without its learned per-channel weights (LPIPS's "baseline" mode), on another network.
* ``lpips``: the LPIPS metric itself (Zhang et al. 2018, VGG16 trunk with its learned linear weights), one of its
  five layers (``lpips_layer``, 1-5; AEROBLADE uses the second) or all of them (0). Needs the ``lpips`` package
  and the VGG16 ImageNet weights as a local file; nothing is downloaded.
* ``l2`` / ``l1``: the mean squared / absolute pixel difference.

A distance with a network saves it into a folder (safetensors and JSON only) and loads it back from there, so a
detector folder holds everything it scores with.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from sefcore.errors import SefError

_REGISTRY: dict[str, type[Distance]] = {}


def register_distance(name: str) -> Callable[[type[Distance]], type[Distance]]:
    """Class decorator: make a distance available by ``name``; refuses a taken name."""

    def wrap(cls: type[Distance]) -> type[Distance]:
        if name in _REGISTRY:
            raise ValueError(f"distance {name!r} is already registered by {_REGISTRY[name].__qualname__}")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return wrap


def known_distances() -> list[str]:
    return list(_REGISTRY)


def get_distance_class(name: str) -> type[Distance]:
    if name not in _REGISTRY:
        raise SefError(f"unknown distance {name!r}; known: {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


class Distance(nn.Module):
    """Base class. ``from_source`` builds one from the user's weights, ``save`` writes them into a folder and
    ``load`` reads them back from it; ``forward(x, y)`` gives (B,) distances of images in [0, 1]."""

    name: ClassVar[str] = ""
    needs_model: ClassVar[bool] = False  # whether from_source takes weights (--distance-model)

    @classmethod
    def from_source(cls, model: str | None, settings: dict[str, Any]) -> Distance:
        """Build from the user's weights ``model`` (a file or folder); ``settings``: the detector config's
        ``distance_*`` fields and ``lpips_layer``."""
        if model is not None:
            raise SefError(f"--distance-model: the {cls.name} distance uses no network")
        return cls()

    def save(self, folder: Path) -> dict[str, Any]:
        """Write the network's weights into ``folder``; returns what identifies them (names and hashes)."""
        return {}

    @classmethod
    def load(cls, folder: Path, settings: dict[str, Any]) -> Distance:
        return cls()

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


@register_distance("l2")
class L2Distance(Distance):
    """Mean squared difference over pixels and channels."""

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return (x.float() - y.float()).square().mean(dim=(1, 2, 3))


@register_distance("l1")
class L1Distance(Distance):
    """Mean absolute difference over pixels and channels."""

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return (x.float() - y.float()).abs().mean(dim=(1, 2, 3))


def unit_normalize(features: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """(B, h, w, C) -> each position's C-vector divided by its Euclidean norm (LPIPS's ``normalize_tensor``)."""
    return features / (features.square().sum(dim=-1, keepdim=True).sqrt() + eps)


@register_distance("features")
class FeatureDistance(Distance):
    """LPIPS-style distance on a frozen backbone's early blocks (module docstring).

    Args:
        backbone: a :class:`~sefmodel.model.backbones.Backbone` (any registered family) with pretrained weights.
        layers: block indices (0-based, as ``DetectorConfig.feature_layer``) whose outputs are compared.
    """

    needs_model = True
    WEIGHTS_FOLDER = "."  # the backbone's transformers folder is the distance folder itself

    def __init__(self, backbone: nn.Module, layers: list[int]) -> None:
        super().__init__()
        from sefmodel.model.backbones import resolve_layer

        if not layers:
            raise SefError("distance_layers: name at least one block")
        self.backbone = backbone
        self.layers = sorted({resolve_layer(layer, backbone.num_layers) for layer in layers})
        self.register_buffer("mean", torch.tensor(backbone.image_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(backbone.image_std).view(1, 3, 1, 1), persistent=False)

    @classmethod
    def from_source(cls, model: str | None, settings: dict[str, Any]) -> FeatureDistance:
        from sefmodel.model.backbones import get_backbone_class

        try:
            family = get_backbone_class(settings["distance_backbone"])
        except KeyError as e:
            raise SefError(str(e.args[0])) from None
        try:
            backbone = family.from_pretrained(model)
        except FileNotFoundError as e:
            raise SefError(f"--distance-model: {e}") from None
        except (OSError, ValueError) as e:
            if _is_network(e):
                raise
            raise SefError(f"--distance-model {model}: cannot load a {family.name} backbone from it "
                           f"({type(e).__name__}: {str(e).splitlines()[0]})") from None  # fmt: skip
        return cls(backbone, settings["distance_layers"])

    def save(self, folder: Path) -> dict[str, Any]:
        from transformers.utils import logging as hf_logging

        folder.mkdir(parents=True, exist_ok=True)
        bar = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # a bar for a write that takes a fraction of a second
        try:
            self.backbone.model.save_pretrained(folder)
        finally:
            if bar:
                hf_logging.enable_progress_bar()
        config = folder / "config.json"
        saved = json.loads(config.read_text())
        saved.pop("_name_or_path", None)
        config.write_text(json.dumps(saved, indent=2, sort_keys=True) + "\n")
        return {"family": self.backbone.name}

    @classmethod
    def load(cls, folder: Path, settings: dict[str, Any]) -> FeatureDistance:
        from sefmodel.model.backbones import get_backbone_class

        family = get_backbone_class(settings["distance_backbone"])
        return cls(family.from_pretrained(str(folder)), settings["distance_layers"])

    def feature_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Images in [0, 1] (B, 3, H, W) -> the chosen blocks' outputs as (B, h, w, C) maps."""
        bb = self.backbone
        hidden = bb.embed(((x - self.mean) / self.std).to(next(bb.parameters()).dtype))
        maps, done = [], 0
        for layer in self.layers:
            hidden = bb.run_blocks(hidden, done, layer + 1)
            done = layer + 1
            maps.append(bb.spatial(hidden, x.shape[-1]).float())
        return maps

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        dists = [
            (unit_normalize(a) - unit_normalize(b)).square().sum(dim=-1).mean(dim=(1, 2))
            for a, b in zip(self.feature_maps(x), self.feature_maps(y), strict=True)
        ]
        return torch.stack(dists, dim=1).mean(dim=1)


# torchvision's vgg16().features index -> the LPIPS slice holding it (slices end at relu1_2, relu2_2, ... relu5_3)
_LPIPS_SLICES = ((1, range(0, 4)), (2, range(4, 9)), (3, range(9, 16)), (4, range(16, 23)), (5, range(23, 30)))
LPIPS_FILE = "lpips_vgg.safetensors"


def _import_lpips() -> Any:
    try:
        import lpips
    except ImportError:
        raise SefError("--distance lpips needs the lpips package, which is not installed here (pip install lpips); "
                       "--distance features needs no extra package") from None  # fmt: skip
    return lpips


def _blank_lpips(lpips: Any) -> nn.Module:
    """An LPIPS(vgg) module with random weights, built without any download (the weights are loaded after)."""
    with warnings.catch_warnings():  # torchvision's deprecation notes on pretrained=False
        warnings.simplefilter("ignore")
        return lpips.LPIPS(net="vgg", pretrained=False, pnet_rand=True, verbose=False)


@register_distance("lpips")
class LpipsDistance(Distance):
    """The LPIPS metric (VGG16 trunk, learned linear weights), at one layer or all (module docstring).

    Args:
        model: an ``lpips.LPIPS(net="vgg")`` module with its weights loaded.
        layer: 1-5 for that layer's distance (AEROBLADE: 2), 0 for LPIPS itself (the sum of the five).
    """

    needs_model = True

    def __init__(self, model: nn.Module, layer: int) -> None:
        super().__init__()
        if not isinstance(layer, int) or not 0 <= layer <= 5:
            raise SefError(f"lpips_layer must be 0 (all five layers) or a layer 1-5, got {layer!r}")
        self.model = model.eval().requires_grad_(False)
        self.layer = layer

    @classmethod
    def from_source(cls, model: str | None, settings: dict[str, Any]) -> LpipsDistance:
        """``model``: torchvision's VGG16 ImageNet weights (``vgg16-397923af.pth`` or a safetensors copy; a
        ``features.N.*`` state dict); the linear weights come with the lpips package."""
        lpips = _import_lpips()
        if model is None:
            raise SefError(
                "--distance lpips needs the VGG16 ImageNet weights as a local file: --distance-model "
                "PATH (torchvision's vgg16-397923af.pth, or a safetensors copy); nothing is downloaded"
            )
        from sefcore.hub import load_state_dict, resolve_file

        vgg = load_state_dict(resolve_file(model, what="--distance-model"))
        lin_file = Path(lpips.__file__).parent / "weights" / "v0.1" / "vgg.pth"
        if not lin_file.is_file():
            raise SefError(f"the lpips package here lacks its linear weights ({lin_file.name})")
        lin = load_state_dict(lin_file)
        network = _blank_lpips(lpips)
        state = network.state_dict()
        trunk = {f"net.slice{s}.{i}.{part}": f"features.{i}.{part}" for s, idx in _LPIPS_SLICES for i in idx
                 for part in ("weight", "bias") if f"net.slice{s}.{i}.{part}" in state}  # fmt: skip
        missing = sorted(v for v in trunk.values() if v not in vgg)
        if missing:
            raise SefError(f"--distance-model {Path(model).name}: not torchvision's VGG16 weights (no {missing[0]})")
        state.update({k: vgg[v] for k, v in trunk.items()})
        # the module lists its linear layers twice (lin0..lin4 and the ModuleList lins.0..4, the same tensors)
        wanted = {k: k if k.startswith("lin") and not k.startswith("lins.") else k.replace("lins.", "lin", 1)
                  for k in state if k.startswith("lin")}  # fmt: skip
        if set(wanted.values()) != set(lin):
            raise SefError(f"the lpips package's {lin_file.name} does not match its LPIPS(vgg) module")
        state.update({k: lin[v] for k, v in wanted.items()})
        try:
            network.load_state_dict(state, strict=True)
        except RuntimeError as e:
            raise SefError(f"--distance-model {Path(model).name}: {str(e).splitlines()[0]}") from None
        return cls(network, settings["lpips_layer"])

    def save(self, folder: Path) -> dict[str, Any]:
        from safetensors.torch import save_file

        folder.mkdir(parents=True, exist_ok=True)
        state = {
            k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items() if not k.startswith("lins.")
        }
        save_file(state, str(folder / LPIPS_FILE))  # lins.N is linN again (shared tensors)
        return {"network": "LPIPS v0.1, vgg"}

    @classmethod
    def load(cls, folder: Path, settings: dict[str, Any]) -> LpipsDistance:
        from safetensors.torch import load_file

        network = _blank_lpips(_import_lpips())
        state = load_file(str(folder / LPIPS_FILE))
        state.update({k: state[k.replace("lins.", "lin", 1)] for k in network.state_dict() if k.startswith("lins.")})
        network.load_state_dict(state, strict=True)
        return cls(network, settings["lpips_layer"])

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        total, per_layer = self.model(x.float(), y.float(), retPerLayer=True, normalize=True)
        value = total if self.layer == 0 else per_layer[self.layer - 1]
        return value.reshape(len(x))


def _is_network(e: BaseException) -> bool:
    from sefcore.hub import network_failure

    return network_failure(e) is not None
