"""GAN upsampling: downsample by the scale, then a GAN super-resolution network back to the original size.

The downsampling is antialiased bicubic (what "a smaller image" means for the literature's SR fakes); the network
is any ESRGAN / Real-ESRGAN / SRGAN-family checkpoint spandrel recognises (RRDBNet, SRVGGNetCompact, SwinIR, ...).
Checkpoints are read as plain tensors (safetensors or ``torch.load(weights_only=True)``) before spandrel sees them,
so no pickle or TorchScript code ever runs. Large inputs are processed in tiles with an overlapping margin that is
cut away, as Real-ESRGAN's own inference does, so memory stays bounded and seams do not show.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from sefcore.errors import SefError
from sefcore.hub import file_sha256, load_state_dict, resolve_file, revision_of
from sefdata.generators.base import Generator, Runtime, register_generator

if TYPE_CHECKING:
    from spandrel import ImageModelDescriptor

REAL_ESRGAN_X4PLUS = "https://github.com/xinntao/Real-ESRGAN/releases/download/v0.1.0/RealESRGAN_x4plus.pth"


@dataclass
class SrConfig:
    weights: str = field(
        default=REAL_ESRGAN_X4PLUS,
        metadata={"help": "SR checkpoint: local path, http(s) URL or Hub file owner/repo/file (.pth/.safetensors)"},
    )
    scale: int = field(default=4, metadata={"help": "downsampling factor; must equal the network's upscale"})
    tile: int = field(default=512, metadata={"help": "tile side in low-resolution pixels (0: whole image at once)"})
    tile_pad: int = field(default=16, metadata={"help": "overlap margin around each tile, low-resolution pixels"})
    revision: str | None = field(default=None, metadata={"help": "Hub revision of the weights"})
    weights_sha256: str | None = field(
        default=None, metadata={"help": "refuse weights whose sha256 differs (presets set it for their files)"}
    )

    def __post_init__(self) -> None:
        if self.scale < 1:
            raise SefError(f"--gen sr: scale must be >= 1 (got {self.scale})")
        if self.tile < 0 or self.tile_pad < 0:
            raise SefError("--gen sr: tile and tile_pad must be >= 0")


def load_sr_model(path) -> ImageModelDescriptor:
    """Identify and build an SR network from a checkpoint with spandrel, without unpickling code."""
    from spandrel import ImageModelDescriptor, ModelLoader, UnsupportedModelError, canonicalize_state_dict

    state_dict = canonicalize_state_dict(load_state_dict(path))
    try:
        descriptor = ModelLoader().load_from_state_dict(state_dict)
    except UnsupportedModelError:
        raise SefError(f"sr: spandrel does not recognise the architecture of {path.name}") from None
    if not isinstance(descriptor, ImageModelDescriptor) or descriptor.purpose != "SR":
        raise SefError(f"sr: {path.name} is a {descriptor.architecture.name} {descriptor.purpose} model, not SR")
    return descriptor


def run_tiled(
    model: torch.nn.Module, x: torch.Tensor, scale: int, tile: int, pad: int, multiple: int = 1,
    memory_format: torch.memory_format = torch.channels_last,
) -> torch.Tensor:  # fmt: skip
    """Apply an x``scale`` network to ``x`` (N, C, h, w) tile by tile; returns (N, C, h*scale, w*scale)."""

    def forward(t: torch.Tensor) -> torch.Tensor:
        th, tw = t.shape[-2:]
        ph, pw = -th % multiple, -tw % multiple  # some architectures need sides that are multiples of k
        if ph or pw:
            t = F.pad(t, (0, pw, 0, ph), mode="reflect")
        return model(t.contiguous(memory_format=memory_format))[..., : th * scale, : tw * scale]

    n, c, h, w = x.shape
    if tile <= 0 or (h <= tile and w <= tile):
        return forward(x)
    out = x.new_empty(n, c, h * scale, w * scale)
    for y0 in range(0, h, tile):
        for x0 in range(0, w, tile):
            y1, x1 = min(y0 + tile, h), min(x0 + tile, w)
            py0, px0 = max(y0 - pad, 0), max(x0 - pad, 0)
            py1, px1 = min(y1 + pad, h), min(x1 + pad, w)
            o = forward(x[..., py0:py1, px0:px1])
            oy, ox = (y0 - py0) * scale, (x0 - px0) * scale
            out[..., y0 * scale : y1 * scale, x0 * scale : x1 * scale] = o[
                ..., oy : oy + (y1 - y0) * scale, ox : ox + (x1 - x0) * scale
            ]
    return out


def downsample(images: torch.Tensor, scale: int) -> torch.Tensor:
    """Antialiased bicubic downsampling by an integer factor; H and W must be multiples of it."""
    h, w = images.shape[-2:]
    small = F.interpolate(images, size=(h // scale, w // scale), mode="bicubic", antialias=True, align_corners=False)
    return small.clamp(0, 1)


@register_generator("sr", SrConfig)
class SrGenerator(Generator):
    def __init__(self, config: SrConfig, runtime: Runtime) -> None:
        super().__init__(config, runtime)
        self.path = resolve_file(
            config.weights, what="sr weights", revision=config.revision, sha256=config.weights_sha256
        )
        self.descriptor = load_sr_model(self.path)
        if self.descriptor.scale != config.scale:
            raise SefError(
                f"sr: {self.path.name} upsamples x{self.descriptor.scale}, but scale={config.scale} was asked; "
                f"use scale={self.descriptor.scale} or another checkpoint"
            )
        dtype = runtime.dtype
        if (dtype == torch.float16 and not self.descriptor.supports_half) or (
            dtype == torch.bfloat16 and not self.descriptor.supports_bfloat16
        ):
            dtype = torch.float32  # spandrel knows which architectures overflow in half precision
        self.dtype = dtype
        self.model = self.optimise(self.descriptor.model.to(runtime.device, dtype))
        self.model_multiple = self.descriptor.size_requirements.multiple_of
        self.multiple = config.scale

    def model_info(self) -> dict:
        return {
            "file": self.path.name,
            "sha256": file_sha256(self.path),
            "revision": revision_of(self.path),
            "architecture": self.descriptor.architecture.name,
            "scale": self.descriptor.scale,
            "dtype": str(self.dtype).removeprefix("torch."),
        }

    @torch.inference_mode()
    def generate(self, images: torch.Tensor, seeds) -> torch.Tensor:
        x = downsample(images.to(self.runtime.device, torch.float32), self.config.scale).to(self.dtype)
        out = run_tiled(self.model, x, self.config.scale, self.config.tile, self.config.tile_pad, self.model_multiple,
                        self.memory_format)  # fmt: skip
        return out.clamp(0, 1)
