"""``sefmodel aeroblade``: make an AEROBLADE detector folder (:mod:`sefmodel.model.aeroblade`) from the user's
autoencoders, fit its probability on a labelled set when one is given (a sefdata build, or a benchmark as
``sefmodel eval`` reads it) and save it. Kept apart from the detector, which reads no shards and no benchmarks."""

from __future__ import annotations

import functools
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from sefcore.errors import SefError
from sefmodel.model.aeroblade import AerobladeDetector

# ---- labelled images for --fit-on -----------------------------------------------------------------------------


def labelled_images(source: str) -> tuple[list[Callable[[], Image.Image]], list[int], str]:
    """Openers of the images of a labelled set, their labels (0 real, 1 generated) and the set's public name: a
    sefdata build (a folder with ``manifest.json``: ``real`` is 0, every other image field 1; the encoded bytes are
    kept, decoded when opened) or anything ``sefmodel eval --bench`` reads (``real/`` + ``fake/`` folders, a
    benchmark definition ``NAME=PATH``, ``hf:OWNER/NAME``)."""
    from sefcore.privacy import public_name

    path = Path(source).expanduser()
    if path.is_dir() and (path / "manifest.json").is_file():
        from sefmodel.train.data import decode_image, iter_samples, resolve_shards, sample_fields

        openers, labels = [], []
        for url in resolve_shards([str(path)]).urls:
            for sample in iter_samples(url):
                for name in sample_fields(sample):
                    key = next(k for k in sample if k.split(".", 1)[0] == name and not k.startswith("__"))
                    openers.append(functools.partial(decode_image, sample[key]))
                    labels.append(int(name != "real"))
        return openers, labels, public_name(source)
    from sefmodel.evaluation.benchmarks import resolve_bench_arg

    bench = resolve_bench_arg(source)
    return [item.open for item in bench.items], [item.label for item in bench.items], public_name(bench.name)


def build_aeroblade(
    autoencoders: Sequence[str],
    out: str | os.PathLike,
    *,
    distance_model: str | None = None,
    fit_on: str | None = None,
    device: str | torch.device = "cpu",
    batch_size: int = 16,
    **settings: Any,
) -> AerobladeDetector:
    """Create an AEROBLADE detector (:meth:`AerobladeDetector.create`), fit its probability on ``fit_on`` when
    given (:meth:`AerobladeDetector.fit`; :func:`labelled_images`), and save it as the folder ``out`` (which must
    not exist or be empty; written under a temporary name, then renamed into place)."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise SefError(f"--out {out}: exists and is not an empty folder; choose a new one")
    if batch_size < 1:
        raise SefError(f"--batch-size must be >= 1, got {batch_size}")
    detector = AerobladeDetector.create(autoencoders, distance_model=distance_model, device=device, **settings)
    if fit_on is not None:
        openers, labels, name = labelled_images(fit_on)
        if not openers:
            raise SefError(f"--fit-on {fit_on}: no images found")
        detector.fit((open_() for open_ in openers), labels, on=name, batch_size=batch_size)
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    try:
        detector.save_pretrained(partial)
        if out.exists():
            out.rmdir()
        partial.rename(out)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return detector
