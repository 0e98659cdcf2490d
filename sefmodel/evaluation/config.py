"""What ``sefmodel eval`` runs: one dataclass, saved in ``results.json``; its fields are eval's options.

Torch-free, so that ``sefmodel eval --help`` reads the options without loading the model stack.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sefcore.errors import SefError
from sefcore.fields import doc, same_as
from sefmodel.runtime import RuntimeOptions


@dataclass
class EvalConfig:
    """What ``sefmodel eval`` runs; saved in ``results.json``."""

    benches: list[str] = field(
        metadata=doc(
            "NAME=PATH (a definition in manifests/benchmarks, or a .toml file, read by its layout), PATH (plain real/ "
            "+ fake/ or 0_real/ + 1_fake/ folder, optionally under subset folders) or "
            "hf:OWNER/NAME[:split=test,image=COL,label=COL,subset=COL] (a Hugging Face dataset)",
            metavar="NAME=PATH|PATH|hf:ID",
        )
    )
    perturb: list[str] = field(
        default_factory=list,
        metadata=doc(
            "robustness sweep, comma-separated NAME:VALUE items: jpeg:Q, webp:Q, resize:F, blur:S, noise:S, "
            "social:MAXSIDE (resize + JPEG 75); 'default' = the standard sweep. One curve per NAME",
            metavar="NAME:VALUE[,...]",
        ),
    )
    robustness: list[str] = field(
        default_factory=list,
        metadata=doc(
            "named protocol, reported under its name beside --perturb: dda (JPEG 96 on reals and fakes, as DDA's "
            "evaluation) or social (downscale, JPEG 75-95, WebP, drawn per image); see docs/evaluation.md",
            metavar="PRESET",
        ),
    )
    calibrate: str | None = field(
        default=None,
        metadata=doc(
            "held-out set (same syntax as --bench) that fits one threshold for acc@cal (max balanced accuracy); "
            "default: each benchmark fits its own on a hashed --calib-fraction of its images",
            metavar="BENCH",
        ),
    )
    calib_fraction: float = field(
        default=0.2,
        metadata=doc(
            "share of each benchmark held out to fit its acc@cal threshold when --calibrate is not given; 0 turns "
            "acc@cal off",
            metavar="X",
        ),
    )
    fake_jpeg: str = field(
        default="none",
        metadata=doc(
            "format-bias protocol: JPEG-compress generated images at this quality before scoring; 'auto' uses each "
            "benchmark definition's recommended quality (e.g. 96 for GenImage)",
            metavar="none|auto|Q",
        ),
    )
    batch_size: int = same_as(RuntimeOptions, "batch_size")
    crop: str | None = same_as(RuntimeOptions, "crop")
    plots: bool = field(default=True, metadata=doc("write PNG plots"))

    def __post_init__(self) -> None:
        if not self.benches:
            raise SefError("give at least one --bench")
        if not 0 <= self.calib_fraction < 1:
            raise SefError(f"--calib-fraction must be in [0, 1), got {self.calib_fraction}")
        if self.fake_jpeg not in ("none", "auto"):
            try:
                quality = int(self.fake_jpeg)
            except ValueError:
                quality = 0
            if not 1 <= quality <= 100:
                raise SefError(f"--fake-jpeg must be none, auto or a quality 1-100, got {self.fake_jpeg!r}")
        if self.batch_size < 1:
            raise SefError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.crop is not None:
            from sefmodel.model.preprocess import check_crop

            check_crop(self.crop)
        from sefmodel.evaluation.perturb import (
            resolve_presets,  # late: the perturbations' image code is not needed to read options
        )

        resolve_presets(self.robustness)  # an unknown name fails before any image is scored
