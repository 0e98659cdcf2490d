"""Pass-through: each fake is its aligned real, unchanged, after an optional wait per batch.

Not an artifact family but a measuring instrument. A build with ``--gen identity`` does everything but run a model
(read, decode, align, copy to the device and back, quantise, encode, write), so its images/s are what the CPU side
of a build delivers on this machine: how fast a GPU the cores can feed (``bench/generation.py --model identity``).
``wait_ms`` stands in for a model call on an accelerator: a sleep per batch, which holds no core and no GIL, as a
GPU call does, so a build with it shows whether the CPU work hides behind the model's latency
(``tests/test_pipeline.py``).

Its samples' ``psnr_db`` is infinite (JSON ``Infinity``): fake and real are the same pixels.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from sefcore.errors import SefError
from sefdata.generators.base import Generator, register_generator


@dataclass
class IdentityConfig:
    wait_ms: float = field(
        default=0.0, metadata={"help": "milliseconds to wait per batch, a stand-in for a model's latency (0: none)"}
    )

    def __post_init__(self) -> None:
        if self.wait_ms < 0:
            raise SefError(f"--gen identity: wait_ms must be >= 0 (got {self.wait_ms})")


@register_generator("identity", IdentityConfig)
class IdentityGenerator(Generator):
    def generate(self, images: torch.Tensor, seeds: Sequence[int]) -> torch.Tensor:
        if self.config.wait_ms:
            time.sleep(self.config.wait_ms / 1000)  # releases the GIL, as a call waiting on a GPU does
        return images.to(self.runtime.device)
