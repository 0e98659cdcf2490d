"""Scoring files with a trained detector: load a run, stream images in batches, one result per input.

A file that cannot be read (missing, empty, not an image, truncated, a decompression bomb) gets a result with a
one-line ``error`` and no probability; the other files are scored as usual. :func:`score_stream` is shared by
``sefmodel predict`` and ``sefmodel eval``.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image

from sefcore.errors import SefError
from sefmodel.evaluation.threshold import (
    HOLDOUT,
    CalibratedThreshold,
    UncertainBand,
    check_fpr,
    decision_threshold,
    fit_threshold,
    label,
)
from sefmodel.images import describe_error, expand_inputs, open_image_file
from sefmodel.model.detector import SEFDetector
from sefmodel.model.folder import (
    CONFIG_NAME,
    UnsafeCheckpointError,
    detector_type,
    folder_detector_type,
    resolve_folder,
)
from sefmodel.model.preprocess import check_crop
from sefmodel.model.serialization import detector_class
from sefmodel.pipeline import score

if TYPE_CHECKING:
    from sefmodel.model.aeroblade import AerobladeDetector

RUN_DETECTOR_SUBFOLDER = "detector"
"""Where a trainer run folder keeps its final detector (``RUN/detector/``)."""


def resolve_run(run: str | os.PathLike) -> str:
    """The detector folder (or Hub id) a RUN argument names.

    RUN is a detector folder (its ``config.json`` is a detector config), a trainer run folder holding the final
    detector in ``RUN/detector/``, or a Hub repo id ``OWNER/NAME``."""
    path = Path(run).expanduser()
    if path.is_dir():
        config = path / CONFIG_NAME
        problem = f"{path} has no {CONFIG_NAME}"
        if config.is_file():
            try:
                data = json.loads(config.read_text())
                detector_class(detector_type(data)).config_class.from_dict(data)
                return str(path)
            except (ValueError, TypeError, SefError) as e:
                problem = f"{config} is not a detector config ({e})"
        if (path / RUN_DETECTOR_SUBFOLDER / CONFIG_NAME).is_file():
            return str(path / RUN_DETECTOR_SUBFOLDER)
        sub = RUN_DETECTOR_SUBFOLDER
        raise SefError(f"{path} is neither a detector folder nor a run folder with {sub}/: {problem}")
    if path.exists():
        raise SefError(f"{path} is a file; RUN must be a detector folder, a run folder or a Hub id")
    from sefcore.hub import require_hub_repo

    require_hub_repo(str(run), "detector", cached_file=CONFIG_NAME)
    return str(run)


def pick_device(device: str = "auto") -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SefError(f"--device {device}: no CUDA device is available here; use --device cpu")
    return device


def load_detector(run: str | os.PathLike, device: str = "auto") -> SEFDetector | AerobladeDetector:
    """Load the detector a RUN names (see :func:`resolve_run`) onto ``device``, with one-line errors: a SEF detector
    or any other kind a folder's ``config.json`` names (``detector_type``, see
    :data:`~sefmodel.model.folder.DETECTOR_TYPES`; e.g. the training-free AEROBLADE detector)."""
    source = resolve_run(run)
    try:
        folder = resolve_folder(source)
        cls = detector_class(folder_detector_type(folder))
        return cls.from_pretrained(folder, map_location=pick_device(device))
    except SefError:
        raise
    except (UnsafeCheckpointError, FileNotFoundError, ValueError) as e:
        raise SefError(f"cannot load the detector from {source}: {e}") from None
    except Exception as e:  # Hub: repository or revision not found, no network, ...
        from sefcore.hub import network_failure

        reason = network_failure(e)
        if reason:
            backbone = _backbone_of(source)
            what = f"the backbone {backbone!r} of {source}" if backbone else f"the detector {source}"
            raise SefError(
                f"cannot fetch {what} from the Hugging Face Hub ({reason}); run once where the Hub is reachable to "
                "cache it (HF_HOME), or use a detector whose config.json names a local backbone folder"
            ) from None
        if not isinstance(e, OSError):
            raise
        raise SefError(
            f"cannot load the detector from {source}: {type(e).__name__}: {str(e).splitlines()[0]}"
        ) from None


def _backbone_of(source: str) -> str | None:
    """The backbone id a local detector folder references, if it is one."""
    try:
        return json.loads((Path(source) / CONFIG_NAME).read_text()).get("backbone_id")
    except (OSError, ValueError, AttributeError):
        return None


# ---- streaming scores ----------------------------------------------------------------------------------------


@dataclass
class ScoreResult:
    """Score of one input (``prob`` None and ``error`` set when it could not be scored)."""

    index: int
    key: str
    prob: float | None = None
    gate_weights: list[float] | None = None
    num_crops: int = 0
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


Opener = Callable[[], Image.Image]


def score_stream(
    detector: SEFDetector,
    inputs: Iterable[tuple[str, Opener]],
    batch_size: int = 16,
    crop: str | None = None,
    transform: Callable[[Image.Image, str], Image.Image] | None = None,
) -> Iterator[ScoreResult]:
    """Score ``(key, open_image)`` pairs in input order, ``batch_size`` images per :meth:`SEFDetector.score` call.

    ``transform(image, key)`` (e.g. a perturbation) is applied after decoding. Reading or transforming errors
    become per-input results with ``error``; they never stop the stream."""
    if crop is not None:
        check_crop(crop)  # a wrong mode is the caller's error, not every image's
    pending: list[tuple[ScoreResult, Image.Image]] = []
    for index, (key, opener) in enumerate(inputs):
        result = ScoreResult(index, key)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                image = opener()
                if transform is not None:
                    image = transform(image, key)
        except Exception as e:  # any decoder failure is this file's problem, reported with it
            result.error = describe_error(e)
            yield from _flush(detector, pending, batch_size, crop)
            pending = []
            yield result
            continue
        pending.append((result, image))
        if len(pending) >= batch_size:
            yield from _flush(detector, pending, batch_size, crop)
            pending = []
    yield from _flush(detector, pending, batch_size, crop)


def _flush(detector: SEFDetector, pending: list, batch_size: int, crop: str | None) -> Iterator[ScoreResult]:
    if not pending:
        return
    try:
        scores = score(detector, [image for _, image in pending], batch_size=batch_size, crop=crop)
    except RuntimeError:
        raise  # a device problem (e.g. out of memory) is not one image's fault
    except Exception:
        if len(pending) == 1:
            result, image = pending[0]
            try:
                score(detector, [image], batch_size=batch_size, crop=crop)
            except Exception as e:
                result.error = f"cannot be scored: {type(e).__name__}: {e}"
            yield result
            return
        for one in pending:  # isolate the image the batch failed on
            yield from _flush(detector, [one], batch_size, crop)
        return
    for i, (result, _) in enumerate(pending):
        result.prob = float(scores.probs[i])
        result.num_crops = scores.num_crops[i]
        if scores.gate_weights is not None:
            result.gate_weights = [float(w) for w in scores.gate_weights[i]]
        yield result


# ---- sefmodel predict ----------------------------------------------------------------------------------------


def _open_path(path: Path) -> Opener:
    return lambda: open_image_file(path)


def predict_files(
    detector: SEFDetector,
    paths: list[Path],
    batch_size: int = 16,
    crop: str | None = None,
    threshold: float | None = None,
    uncertain: UncertainBand | None = None,
) -> Iterator[dict[str, Any]]:
    """One record per path, in order: ``path``, ``prob``, ``label`` (``generated`` if prob > threshold, else
    ``real``; ``uncertain`` when prob lies in the ``uncertain`` band), ``num_crops`` and, for SEF,
    ``gate_weights`` {expert: weight}; or ``path`` and ``error``. ``threshold`` None: the detector's
    ``threshold.json`` if it has one, else 0.5 (:func:`sefmodel.evaluation.threshold.decision_threshold`)."""
    inputs = ((str(p), _open_path(p)) for p in paths)
    yield from predict_records(detector, inputs, batch_size, crop, threshold, uncertain)


def predict_records(
    detector: SEFDetector,
    inputs: Iterable[tuple[str, Opener]],
    batch_size: int = 16,
    crop: str | None = None,
    threshold: float | None = None,
    uncertain: UncertainBand | None = None,
) -> Iterator[dict[str, Any]]:
    """The records of :func:`predict_files` for ``(name, open_image)`` pairs; ``path`` is the name."""
    threshold, _ = decision_threshold(detector, threshold)
    experts = detector.expert_names
    for result in score_stream(detector, inputs, batch_size, crop):
        if result.error is not None:
            yield {"path": result.key, "error": result.error}
            continue
        record: dict[str, Any] = {
            "path": result.key,
            "prob": round(result.prob, 6),
            "label": label(result.prob, threshold, uncertain),
            "num_crops": result.num_crops,
        }
        if result.gate_weights is not None:
            record["gate_weights"] = {n: round(w, 6) for n, w in zip(experts, result.gate_weights, strict=True)}
        yield record


def csv_header(detector: SEFDetector) -> list[str]:
    gated = detector.fusion is not None and detector.fusion.has_gate
    gates = [f"gate_{n}" for n in detector.expert_names] if gated else []
    return ["path", "prob", "label", *gates, "num_crops", "error"]


def csv_row(record: dict[str, Any], header: list[str]) -> list[Any]:
    flat = dict(record)
    for name, weight in record.get("gate_weights", {}).items():
        flat[f"gate_{name}"] = weight
    return [flat.get(col, "") for col in header]


def calibrate_on_reals(
    detector: SEFDetector,
    folder: str | Path,
    fpr: float,
    *,
    batch_size: int = 16,
    holdout: float = HOLDOUT,
    progress: bool = False,
) -> CalibratedThreshold:
    """Score every image file under ``folder`` (recursively, as ``sefmodel predict DIR``) with the detector's own
    crop mode and fit the threshold for ``fpr`` (:func:`sefmodel.evaluation.threshold.fit_threshold`). Nothing is
    written."""
    check_fpr(fpr)
    folder = Path(folder)
    if not folder.is_dir():
        raise SefError(f"--calibrate-on {folder}: not a folder of real images")
    paths = expand_inputs([folder])
    if not paths:
        raise SefError(f"--calibrate-on {folder}: no image files found")
    # names relative to the folder decide the split; they are never stored
    inputs = [(p.relative_to(folder).as_posix(), lambda p=p: open_image_file(p)) for p in paths]
    results = score_stream(detector, inputs, batch_size)
    if progress:
        from tqdm import tqdm

        results = tqdm(results, total=len(paths), desc="calibrate", unit="img")
    keys, scores, failed = [], [], 0
    for result in results:
        if result.error is not None:
            failed += 1
            continue
        keys.append(result.key)
        scores.append(result.prob)  # unrounded: the threshold is compared with the same numbers predict sees
    return fit_threshold(keys, np.array(scores), fpr, holdout, n_failed=failed, crop=detector.processor.crop)
