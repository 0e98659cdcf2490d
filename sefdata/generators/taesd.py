"""TAESD family tiny autoencoders (TAESD, TAESDXL, TAESD3, TAEF1, TAEF2): encode → decode.

Loads the original madebyollin/taesd checkpoints (``*_encoder.pth`` / ``*_decoder.pth``, sequential indices) or
their safetensors twins. diffusers' AutoencoderTiny cannot hold TAEF2, whose last three encoder blocks and first
three decoder blocks carry an extra ``pool`` branch, so the network is defined here after the reference
implementation (MIT, madebyollin/taesd) and built from what the state dict holds: latent channels from the last
encoder conv, pool branches where their keys are present. A fast, CPU-friendly reconstruction family.

Value ranges: the encoder takes RGB in [0, 1] and returns raw latents; the decoder returns RGB in about [0, 1].
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from sefcore.errors import SefError
from sefcore.hub import file_sha256, load_state_dict, resolve_dir, resolve_file, revision_of
from sefdata.generators.base import Generator, Runtime, register_generator


def _conv(n_in: int, n_out: int, **kwargs) -> nn.Conv2d:
    return nn.Conv2d(n_in, n_out, 3, padding=1, **kwargs)


class Clamp(nn.Module):
    """Soft clamp of decoder input latents to about [-3, 3]."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x / 3) * 3


class Block(nn.Module):
    def __init__(self, n_in: int, n_out: int, pool: bool = False) -> None:
        super().__init__()
        self.conv = nn.Sequential(_conv(n_in, n_out), nn.ReLU(), _conv(n_out, n_out), nn.ReLU(), _conv(n_out, n_out))
        self.skip = nn.Conv2d(n_in, n_out, 1, bias=False) if n_in != n_out else nn.Identity()
        self.fuse = nn.ReLU()
        # TAEF2: a 1x1 bottleneck branch with GroupNorm, added before the block
        self.pool = (
            nn.Sequential(
                nn.Conv2d(n_in, 4 * n_in, 1, bias=False),
                nn.GroupNorm(4, 4 * n_in),
                nn.ReLU(),
                nn.Conv2d(4 * n_in, n_in, 1, bias=False),
            )
            if pool
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pool is not None:
            x = x + self.pool(x)
        return self.fuse(self.conv(x) + self.skip(x))


def make_encoder(latent_channels: int, pool_blocks: set[int] = frozenset()) -> nn.Sequential:
    """Original layout; ``pool_blocks`` are sequential indices of blocks with a pool branch."""
    layers: list[nn.Module] = [_conv(3, 64), Block(64, 64, 1 in pool_blocks)]
    for stage in range(3):
        base = 2 + 4 * stage
        layers += [_conv(64, 64, stride=2, bias=False)]
        layers += [Block(64, 64, i in pool_blocks) for i in range(base + 1, base + 4)]
    layers.append(_conv(64, latent_channels))
    return nn.Sequential(*layers)


def make_decoder(latent_channels: int, pool_blocks: set[int] = frozenset()) -> nn.Sequential:
    layers: list[nn.Module] = [Clamp(), _conv(latent_channels, 64), nn.ReLU()]
    for stage in range(3):
        base = 3 + 5 * stage
        layers += [Block(64, 64, i in pool_blocks) for i in range(base, base + 3)]
        layers += [nn.Upsample(scale_factor=2), _conv(64, 64, bias=False)]
    layers += [Block(64, 64, 18 in pool_blocks), _conv(64, 3)]
    return nn.Sequential(*layers)


def _pool_blocks(state_dict: dict[str, torch.Tensor]) -> set[int]:
    return {int(m.group(1)) for k in state_dict if (m := re.match(r"(\d+)\.pool\.", k))}


def load_taesd(encoder_path: Path, decoder_path: Path) -> tuple[nn.Sequential, nn.Sequential]:
    """Build and load an encoder/decoder pair from original-layout checkpoints, strictly."""
    enc_sd, dec_sd = load_state_dict(encoder_path), load_state_dict(decoder_path)
    try:
        latent_channels = enc_sd["14.weight"].shape[0]
        encoder = make_encoder(latent_channels, _pool_blocks(enc_sd))
        decoder = make_decoder(dec_sd["1.weight"].shape[1], _pool_blocks(dec_sd))
        encoder.load_state_dict(enc_sd, strict=True)
        decoder.load_state_dict(dec_sd, strict=True)
    except (KeyError, RuntimeError) as e:
        raise SefError(
            f"taesd: {encoder_path.name} / {decoder_path.name} do not have the TAESD layout "
            f"({type(e).__name__}: {str(e).splitlines()[0]})"
        ) from None
    if decoder[1].in_channels != latent_channels:
        raise SefError(
            f"taesd: encoder makes {latent_channels}-channel latents but the decoder takes "
            f"{decoder[1].in_channels}: they are not a pair"
        )
    return encoder, decoder


@dataclass
class TaesdConfig:
    encoder: str | None = field(default=None, metadata={"help": "encoder checkpoint: path, URL or Hub file"})
    decoder: str | None = field(default=None, metadata={"help": "decoder checkpoint: path, URL or Hub file"})
    weights: str | None = field(
        default=None,
        metadata={"help": "folder or Hub repo holding one *_encoder / *_decoder pair (.pth/.safetensors)"},
    )
    revision: str | None = field(default=None, metadata={"help": "Hub revision (commit, tag or branch)"})
    encoder_sha256: str | None = field(default=None, metadata={"help": "refuse an encoder file with another sha256"})
    decoder_sha256: str | None = field(default=None, metadata={"help": "refuse a decoder file with another sha256"})

    def __post_init__(self) -> None:
        if (self.encoder is None) != (self.decoder is None):
            raise SefError("--gen taesd: give both encoder= and decoder=, or weights=")
        if self.encoder is None and self.weights is None:
            raise SefError(
                "--gen taesd needs weights: encoder=PATH,decoder=PATH or weights=DIR_OR_HUB_ID "
                "(e.g. the taef2_encoder.pth / taef2_decoder.pth pair in examples/weights)"
            )


def _find_pair(folder: Path) -> tuple[Path, Path]:
    encoders = sorted(p for p in folder.iterdir() if re.search(r"_encoder\.(pth|safetensors)$", p.name))
    pairs = [(e, e.with_name(e.name.replace("_encoder.", "_decoder."))) for e in encoders]
    pairs = [(e, d) for e, d in pairs if d.is_file()]
    if len(pairs) != 1:
        found = ", ".join(p.name for p in encoders) or "none"
        raise SefError(
            f"taesd: weights folder {str(folder)!r} must hold exactly one *_encoder/*_decoder pair "
            f"(found encoders: {found}); name the files with encoder= and decoder= instead"
        )
    return pairs[0]


@register_generator("taesd", TaesdConfig)
class TaesdGenerator(Generator):
    multiple = 8  # three stride-2 stages
    saved_paths = ("encoder", "decoder")

    def __init__(self, config: TaesdConfig, runtime: Runtime) -> None:
        super().__init__(config, runtime)
        if config.weights is not None:
            folder = resolve_dir(
                config.weights, what="taesd weights", revision=config.revision,
                patterns=["*_encoder.*", "*_decoder.*"],
            )  # fmt: skip
            self.encoder_path, self.decoder_path = _find_pair(folder)
        else:
            assert config.encoder is not None and config.decoder is not None
            self.encoder_path = resolve_file(
                config.encoder, what="taesd encoder", revision=config.revision, sha256=config.encoder_sha256
            )
            self.decoder_path = resolve_file(
                config.decoder, what="taesd decoder", revision=config.revision, sha256=config.decoder_sha256
            )
        encoder, decoder = load_taesd(self.encoder_path, self.decoder_path)
        # fp16 is safe here (ReLU convs, GroupNorm in the pool branches); latents are clamped in the decoder.
        # channels_last (the runtime's default): oneDNN / cuDNN run these 3x3 convs several times faster in NHWC
        # (3.5x on a 2-core CPU)
        self.encoder, self.decoder = (self.optimise(m.to(runtime.device, runtime.dtype)) for m in (encoder, decoder))
        self.latent_channels = encoder[-1].out_channels

    def model_info(self) -> dict:
        return {
            "encoder": {"file": self.encoder_path.name, "sha256": file_sha256(self.encoder_path),
                        "revision": revision_of(self.encoder_path)},
            "decoder": {"file": self.decoder_path.name, "sha256": file_sha256(self.decoder_path),
                        "revision": revision_of(self.decoder_path)},
            "latent_channels": self.latent_channels,
            "dtype": str(self.runtime.dtype).removeprefix("torch."),
        }  # fmt: skip

    def save_weights(self, folder: Path) -> dict[str, str]:
        """The encoder and decoder as ``NAME_encoder.safetensors`` / ``NAME_decoder.safetensors`` (float32) in
        ``folder``, named after the files they came from."""
        from safetensors.torch import save_file

        folder.mkdir(parents=True, exist_ok=True)
        params = {}
        for part, module, source in (("encoder", self.encoder, self.encoder_path),
                                     ("decoder", self.decoder, self.decoder_path)):  # fmt: skip
            name = f"{source.name.split('.')[0]}.safetensors"
            state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in module.state_dict().items()}
            save_file(state, str(folder / name))
            params[part] = name
        return params

    @torch.inference_mode()
    def generate(self, images: torch.Tensor, seeds) -> torch.Tensor:
        x = self.inputs(images)
        out = self.decoder(self.encoder(x))
        return out.clamp(0, 1)
