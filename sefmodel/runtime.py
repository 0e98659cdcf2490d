"""How a command runs a detector: images per forward pass, crops, device, threads.

One declaration of these settings for every command that scores images (``eval``, ``predict``, ``explain``,
``calibrate``...); torch-free, so that ``--help`` reads them without loading the model stack.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sefcore.fields import doc

THREADS_HELP = (
    "threads torch computes with; 0 keeps torch's default (one per core). On a machine busy with other work, 1 "
    "keeps threads from spinning while they wait for a core (measured: 50x faster scoring on a loaded 2-core box)"
)


@dataclass
class RuntimeOptions:
    """Runtime settings: they change how fast a detector scores, not what it computes (crop aside)."""

    batch_size: int = field(default=16, metadata=doc("images per forward pass", metavar="N"))
    crop: str | None = field(
        default=None, metadata=doc("crops per image (default: the detector's config)", metavar="center|multi")
    )
    device: str = field(default="auto", metadata=doc("auto, cpu or cuda[:i]", metavar="DEVICE"))
    threads: int = field(default=0, metadata=doc(THREADS_HELP, metavar="N"))
