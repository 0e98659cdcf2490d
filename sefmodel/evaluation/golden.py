"""A detector's golden set: a handful of small images with the probabilities this detector gave them, stored in the
detector folder, so that anyone can check that their install reproduces the detector (``sefmodel check``).

Layout, beside ``config.json``::

    golden/NN-real.png, golden/NN-fake.png, ...   the images (PNG: lossless, so the file is exactly the input)
    golden/golden.json                            format, tolerance, how they were scored, each image's file name,
                                                  sha256, label, origin and probability, and the provenance

**Images** (:func:`golden_candidates`): crops of at most the detector's crop side (the centre of the upright RGB
image; nothing resampled), taken from

* a sefdata build folder or shards (``.tar`` files, patterns, ``hf://`` URLs): a sample's real and one of its
  fakes (the fake fields in turn), one sample per shard in turn, so that the set spreads over the shards; when
  that is not enough, the other fakes of the samples taken;
* a folder of images: with the plain benchmark layout (``real/`` + ``fake/`` or ``0_real/`` + ``1_fake/``, at the
  top or under subset folders) reals and fakes in turn, each spread evenly over its class; otherwise spread evenly
  over the folder, unlabelled;
* another golden set (a ``golden/`` folder): its images, labels and origins, scored again;
* images given in code (PIL images or paths: ``save_pretrained(golden=[...])``), unlabelled.

Labels are for the reader only: the check compares probabilities. An unreadable image is left out with a warning.

**Scoring**: each image alone (batch 1), one centre crop, on the detector's device and dtype (CPU float32 when a
command makes the set). The recorded probability is that of the stored PNG file read back.

**Tolerance** (``tolerance``, default :data:`DEFAULT_TOLERANCE` = 1e-4): the largest absolute difference of
probability that counts as reproduced. Measured on the demo detector (MobileNetV2, 40 test tiles, CPU float32): one
or two threads and batches of 1 or 8 moved a probability by at most 3e-7; float32 against a float64 run of the same
detector by at most 1.6e-6, which bounds what another CPU's vector units and libraries give. 1e-4 leaves a margin of
60x over that, while a weight changed by a training step moves probabilities far more. A GPU is another matter:
cuDNN runs float32 convolutions in TF32 (10-bit mantissa) by default and other kernels sum in other orders, which
can move a probability by 1e-3 or more (not measured here: no GPU on the development machine); ``sefmodel check``
therefore scores on the CPU unless told otherwise, and says so when the device differs from the recorded one.

**Staleness**: a golden set belongs to the weights it was made with (a hash of their tensors is in its provenance,
:func:`tensors_sha256`). Saving other weights into the folder removes it (:func:`drop_stale`, called by
``save_pretrained``); re-saving the same weights keeps it.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import platform
import shutil
import struct
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image

from sefcore.errors import SefError
from sefcore.hub import file_sha256
from sefcore.imageio import to_rgb
from sefcore.privacy import public_name, public_text
from sefdata.provenance import installed_versions, provenance, version_differences
from sefdata.shards import field_key, iter_samples, resolve_shards, sample_fields
from sefmodel.images import describe_error, expand_inputs, open_image_file
from sefmodel.model.folder import GOLDEN_DIR, weight_files

if TYPE_CHECKING:
    from sefmodel.model.detector import SEFDetector

GOLDEN_FILE = "golden.json"
GOLDEN_FORMAT = "sef-golden/1"
DEFAULT_COUNT = 8
MAX_COUNT = 64  # a golden set is a handful of small files that travel with the detector, not a benchmark
DEFAULT_TOLERANCE = 1e-4
"""Largest absolute difference of probability that counts as reproduced (module docstring: why this value)."""
CROP = "center"
BATCH_SIZE = 1  # each image alone: a probability never depends on its batch-mates
# what computes a probability from a PNG file
PACKAGES = ("sef-toolkit", "torch", "transformers", "peft", "safetensors", "numpy", "pillow")
GoldenSource = str | os.PathLike | Sequence[str | os.PathLike | Image.Image]


# ---- golden.json ---------------------------------------------------------------------------------------------


@dataclass
class GoldenImage:
    """One image of a golden set, as ``golden.json`` lists it."""

    file: str
    """File name inside ``golden/``."""
    sha256: str
    prob: float
    """P(generated) this detector gave the file."""
    label: str | None = None
    """``real``, ``fake`` or None (not known); for the reader, not checked."""
    origin: str = ""
    """Where the crop was cut from, by name (``shard-000001.tar:KEY/real``, ``fake/a.png``)."""


@dataclass
class GoldenSet:
    """The content of ``golden/golden.json``."""

    images: list[GoldenImage]
    tolerance: float = DEFAULT_TOLERANCE
    device: str = "cpu"
    """Device type the probabilities were computed on."""
    dtype: str = "float32"
    crop: str = CROP
    batch_size: int = BATCH_SIZE
    platform: dict[str, str] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    """``detector`` (``weights_sha256``: each weight file's sha256, ``tensors_sha256``: a hash of the tensors in it),
    ``source`` (name, kind, manifest sha256), ``seed``, ``packages``, ``command`` (:mod:`sefdata.provenance`)."""

    def to_dict(self) -> dict[str, Any]:
        return {"format": GOLDEN_FORMAT, **asdict(self)}

    def save(self, folder: Path) -> None:
        """Write ``folder/golden.json`` (``folder`` is the ``golden/`` folder)."""
        (folder / GOLDEN_FILE).write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, detector_folder: str | os.PathLike) -> GoldenSet:
        """Read ``DETECTOR/golden/golden.json``; anything missing or malformed is one :class:`SefError` line."""
        path = Path(detector_folder) / GOLDEN_DIR / GOLDEN_FILE
        where = f"{GOLDEN_DIR}/{GOLDEN_FILE}"
        if not path.is_file():
            raise SefError(
                f"{detector_folder} has no golden set ({where}): make one with `sefmodel golden RUN SOURCE`, or "
                "publish with --golden"
            )
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except UnicodeDecodeError:
            raise SefError(f"{where} of {detector_folder} is not text: the golden set is damaged") from None
        except ValueError as e:
            raise SefError(f"{where} of {detector_folder} is not valid JSON ({e}): the golden set is damaged") from None
        try:
            return cls._from_dict(data)
        except (KeyError, TypeError, ValueError) as e:
            raise SefError(f"{where} of {detector_folder} is malformed: {e}") from None

    @classmethod
    def _from_dict(cls, data: Any) -> GoldenSet:
        if not isinstance(data, dict):
            raise TypeError(f"expected a JSON object, got {type(data).__name__}")
        if data.get("format") != GOLDEN_FORMAT:
            raise ValueError(f"format {data.get('format')!r} is not {GOLDEN_FORMAT!r} (made by another sef-toolkit?)")
        images = data["images"]
        if not isinstance(images, list) or not images:
            raise ValueError("'images' must be a non-empty list")
        parsed = []
        for i, item in enumerate(images):
            if not isinstance(item, dict):
                raise TypeError(f"images[{i}] is not an object")
            for key, kind in (("file", str), ("sha256", str), ("prob", (int, float))):
                if not isinstance(item.get(key), kind) or isinstance(item.get(key), bool):
                    raise ValueError(f"images[{i}] has no valid {key!r}")
            name = item["file"]
            if Path(name).name != name or name in (".", "..") or "\\" in name:
                raise ValueError(f"images[{i}] names {name!r}, not a file inside {GOLDEN_DIR}/")
            if not 0 <= item["prob"] <= 1:
                raise ValueError(f"images[{i}] has prob {item['prob']}, outside [0, 1]")
            parsed.append(GoldenImage(name, item["sha256"], float(item["prob"]), item.get("label"),
                                      str(item.get("origin", ""))))  # fmt: skip
        tolerance = data.get("tolerance", DEFAULT_TOLERANCE)
        if not isinstance(tolerance, (int, float)) or isinstance(tolerance, bool) or tolerance < 0:
            raise ValueError(f"tolerance {tolerance!r} is not a number >= 0")
        return cls(
            images=parsed,
            tolerance=float(tolerance),
            device=str(data.get("device", "cpu")),
            dtype=str(data.get("dtype", "float32")),
            crop=str(data.get("crop", CROP)),
            batch_size=int(data.get("batch_size", BATCH_SIZE)),
            platform=dict(data.get("platform") or {}),
            provenance=dict(data.get("provenance") or {}),
        )


def weights_sha256(folder: Path) -> dict[str, str]:
    """sha256 of every weight file of a detector folder (:func:`sefmodel.model.folder.weight_files`: the trained
    tensors and a random backbone's; an AEROBLADE folder's stored networks)."""
    return {name: file_sha256(Path(folder) / name) for name in sorted(weight_files(Path(folder)))}


def tensors_sha256(folder: Path) -> dict[str, str]:
    """A sha256 of the tensors in every ``*.safetensors`` file of a detector folder: names, dtypes, shapes and bytes
    in name order. Two saves of the same tensors give two files whose bytes differ (safetensors writes its header's
    metadata in no fixed order), so this, not the file's sha256, says whether the weights are the same."""
    out = {}
    for file in sorted(weight_files(Path(folder))):
        path = Path(folder) / file
        data = path.read_bytes()
        (size,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8 : 8 + size])
        digest = hashlib.sha256()
        for name in sorted(k for k in header if k != "__metadata__"):
            entry = header[name]
            begin, end = entry["data_offsets"]
            digest.update(json.dumps([name, entry["dtype"], entry["shape"]]).encode())
            digest.update(data[8 + size + begin : 8 + size + end])
        out[file] = digest.hexdigest()
    return out


def _same_weights(recorded: dict[str, Any], folder: Path) -> bool | None:
    """Whether ``folder`` holds the weights a golden set's provenance records (None: it records none)."""
    detector = recorded.get("detector") or {}
    if detector.get("tensors_sha256") is not None:
        return detector["tensors_sha256"] == tensors_sha256(folder)
    if detector.get("weights_sha256") is not None:
        return detector["weights_sha256"] == weights_sha256(folder)
    return None


def drop_stale(folder: Path) -> bool:
    """Remove ``folder/golden/`` when it was made with other weights than the folder holds now; True if removed.
    A golden set whose ``golden.json`` cannot be read is left for ``sefmodel check`` to report."""
    path = Path(folder) / GOLDEN_DIR / GOLDEN_FILE
    if not path.is_file():
        return False
    try:
        same = _same_weights(json.loads(path.read_text(encoding="utf-8"))["provenance"], Path(folder))
    except (OSError, ValueError, KeyError, TypeError, AttributeError, struct.error):
        return False
    if same is not False:
        return False
    shutil.rmtree(path.parent)
    return True


# ---- picking images ------------------------------------------------------------------------------------------


@dataclass
class Candidate:
    """An image picked for a golden set, already cropped."""

    image: Image.Image
    label: str | None
    origin: str


@dataclass
class Picked:
    candidates: list[Candidate]
    source: dict[str, Any]
    """What the images came from, for the provenance: ``name``, ``kind`` and, for a build, ``manifest_sha256``."""
    warnings: list[str] = field(default_factory=list)


def centre_crop(image: Image.Image, size: int) -> Image.Image:
    """The upright RGB image's centre crop of at most ``size`` x ``size`` pixels (nothing resampled)."""
    image = to_rgb(image)
    width, height = image.size
    w, h = min(size, width), min(size, height)
    left, top = (width - w) // 2, (height - h) // 2
    return image.crop((left, top, left + w, top + h))


def _is_shards(ref: str) -> bool:
    if "://" in ref or any(c in ref for c in "*?[{"):
        return True
    path = Path(ref).expanduser()
    if path.is_file():
        return path.suffix.lower() == ".tar"
    return path.is_dir() and ((path / "manifest.json").is_file() or any(path.glob("*.tar")))


def _spread(n: int, k: int) -> list[int]:
    """All of ``range(n)``, the ``k`` evenly spread indices first (the rest stand in for unreadable ones)."""
    first = sorted({(i * n) // k for i in range(min(n, k))})
    chosen = set(first)
    return first + [i for i in range(n) if i not in chosen]


def golden_candidates(source: GoldenSource, count: int, size: int) -> Picked:
    """Up to ``count`` images from ``source`` (module docstring), cropped to at most ``size`` pixels a side."""
    if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= MAX_COUNT:
        raise SefError(f"a golden set holds 1 to {MAX_COUNT} images, not {count!r}")
    if isinstance(source, (str, os.PathLike)):
        ref = str(source)
        path = Path(ref).expanduser()
        if (path / GOLDEN_FILE).is_file():
            picked = _from_golden(path, count, size)
        elif _is_shards(ref):
            picked = _from_shards([ref], count, size)
        elif path.is_dir():
            picked = _from_folder(path, count, size)
        elif path.exists():
            raise SefError(f"golden source {ref}: expected a folder of images, a sefdata build folder or .tar shards")
        else:
            raise SefError(f"golden source {ref}: no such file or folder")
    else:
        items = list(source)
        if not items:
            raise SefError("golden source: no images given")
        if all(not isinstance(x, Image.Image) and _is_shards(str(x)) for x in items):
            picked = _from_shards([str(x) for x in items], count, size)
        else:
            picked = _from_images(items, count, size)
    if not picked.candidates:
        name = picked.source.get("name") or "the images given"
        raise SefError(f"golden source {name}: no readable image ({'; '.join(picked.warnings[:2]) or 'none found'})")
    return picked


def _open(opener, what: str, warnings: list[str]) -> Image.Image | None:
    try:
        return opener()
    except Exception as e:  # an unreadable image is left out, and said so
        warnings.append(f"{what}: {describe_error(e)}")
        return None


def _from_shards(refs: list[str], count: int, size: int) -> Picked:

    try:
        shards = resolve_shards(refs)
    except FileNotFoundError as e:
        raise SefError(f"golden source: {e}") from None
    name = ", ".join(public_name(r.rstrip("/")) for r in refs)
    manifest = Path(refs[0]).expanduser() / "manifest.json" if len(refs) == 1 and "://" not in refs[0] else None
    source = {"name": name, "kind": "sefdata build" if manifest and manifest.is_file() else "shards",
              "manifest_sha256": file_sha256(manifest) if manifest and manifest.is_file() else None}  # fmt: skip
    picked = Picked([], source)

    def take(url: str, sample: dict, field_name: str) -> None:
        key = field_key(sample, field_name)
        origin = public_text(f"{Path(url).name}:{sample['__key__']}/{field_name}")
        image = _open(lambda: open_image_file(io.BytesIO(sample[key])), origin, picked.warnings)
        if image is not None:
            label = "real" if field_name == "real" else "fake"
            picked.candidates.append(Candidate(centre_crop(image, size), label, origin))

    # first a sample's real and one fake (the fake fields in turn), one sample per shard in turn over at most `count`
    # shards, so that the set spreads over the data; then, if that is not enough, the other fakes of those samples
    streams: list[tuple[str, Iterator[dict]]] = [(url, iter_samples(url)) for url in shards.urls[:count]]
    rest: list[tuple[str, dict, list[str]]] = []
    try:
        while streams and len(picked.candidates) < count:
            for entry in list(streams):
                url, stream = entry
                sample = next(stream, None)
                if sample is None:
                    streams.remove(entry)
                    continue
                fields = sample_fields(sample)
                # the build's generator order (its manifest's fields), else the order of the first sample's fields
                fakes = [f for f in shards.fields or fields if f != "real" and f in fields]
                first = fakes[len(rest) % len(fakes)] if fakes else None
                for name_ in (["real"] if "real" in fields else []) + ([first] if first else []):
                    if len(picked.candidates) < count:
                        take(url, sample, name_)
                rest.append((url, sample, [f for f in fakes if f != first]))
                if len(picked.candidates) >= count:
                    break
    finally:
        for _, stream in streams:
            stream.close()
    for url, sample, fakes in rest:
        for name_ in fakes:
            if len(picked.candidates) < count:
                take(url, sample, name_)
    return picked


def _from_folder(root: Path, count: int, size: int) -> Picked:
    from sefmodel.evaluation.benchmarks import PLAIN

    picked = Picked([], {"name": public_name(str(root).rstrip("/")) or root.name, "kind": "images"})
    paths = expand_inputs([root])
    if not paths:
        raise SefError(f"golden source {root}: no image files (png, jpg, webp, ...) in it")
    by_label: dict[str | None, list[Path]] = {"real": [], "fake": [], None: []}
    for path in paths:
        rel = path.relative_to(root).as_posix()
        found = PLAIN.classify(rel)
        label = None if found is None or found[0] not in (0, 1) else ("real", "fake")[found[0]]
        by_label[label].append(path)
    if by_label["real"] or by_label["fake"]:
        fakes = min(len(by_label["fake"]), count // 2)
        reals = min(len(by_label["real"]), count - fakes)
        quota = {"real": reals, "fake": min(len(by_label["fake"]), count - reals)}  # few reals: more fakes
        if by_label[None]:
            picked.warnings.append(f"{len(by_label[None])} image(s) outside real/ and fake/ folders were not used")
    else:
        quota = {None: count}
    chosen: dict[str | None, list[Candidate]] = {}
    for label, want in quota.items():
        files = by_label[label]
        chosen[label] = []
        for i in _spread(len(files), want):
            if len(chosen[label]) >= want:
                break
            rel = files[i].relative_to(root).as_posix()
            image = _open(lambda p=files[i]: open_image_file(p), rel, picked.warnings)
            if image is not None:
                chosen[label].append(Candidate(centre_crop(image, size), label, rel))
    # reals and fakes in turn
    lists = list(chosen.values())
    for i in range(max(map(len, lists))):
        picked.candidates += [items[i] for items in lists if i < len(items)]
    return picked


def _from_golden(folder: Path, count: int, size: int) -> Picked:
    golden = GoldenSet.load(folder.parent) if folder.name == GOLDEN_DIR else None
    if golden is None:
        raise SefError(f"golden source {folder}: a golden set lies in a folder named {GOLDEN_DIR}/")
    source = dict(golden.provenance.get("source") or {"name": None, "kind": "golden set"})
    picked = Picked([], source)
    for item in golden.images[:count]:
        image = _open(lambda f=folder / item.file: open_image_file(f), item.file, picked.warnings)
        if image is not None:
            picked.candidates.append(Candidate(centre_crop(image, size), item.label, item.origin))
    return picked


def _from_images(items: list, count: int, size: int) -> Picked:
    picked = Picked([], {"name": None, "kind": "images given"})
    for i, item in enumerate(items):
        if len(picked.candidates) >= count:
            break
        if isinstance(item, Image.Image):
            picked.candidates.append(Candidate(centre_crop(item, size), None, f"image {i}"))
            continue
        what = public_name(str(item))
        image = _open(lambda p=item: open_image_file(p), what, picked.warnings)
        if image is not None:
            picked.candidates.append(Candidate(centre_crop(image, size), None, what))
    return picked


# ---- writing and checking ------------------------------------------------------------------------------------


def _score_files(detector: SEFDetector, paths: list[Path]) -> list[float]:
    from sefmodel.pipeline import score

    return score(detector, paths, batch_size=BATCH_SIZE, crop=CROP).probs.tolist()


def write_golden(
    detector: SEFDetector,
    folder: str | os.PathLike,
    source: GoldenSource,
    *,
    count: int = DEFAULT_COUNT,
    tolerance: float = DEFAULT_TOLERANCE,
    command: str | None = None,
) -> tuple[GoldenSet, list[str]]:
    """Store a golden set of ``count`` images from ``source`` in the detector folder ``folder`` (which holds this
    detector's saved weights), replacing any there. Returns it and the warnings (images left out)."""
    folder = Path(folder)
    if not isinstance(tolerance, (int, float)) or isinstance(tolerance, bool) or tolerance < 0:
        raise SefError(f"the golden set's tolerance must be a number >= 0, got {tolerance!r}")
    picked = golden_candidates(source, count, detector.processor.size)  # read before anything is replaced
    weights = {"weights_sha256": weights_sha256(folder), "tensors_sha256": tensors_sha256(folder)}
    if not weights["weights_sha256"]:
        raise SefError(f"{folder} holds no saved weights (*.safetensors): save the detector there first")
    tmp = folder / f".{GOLDEN_DIR}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    files = []
    for i, candidate in enumerate(picked.candidates):
        name = f"{i:02d}-{candidate.label or 'image'}.png"
        candidate.image.save(tmp / name, "PNG")  # no metadata: the bytes depend on the pixels only
        files.append(tmp / name)
    probs = _score_files(detector, files)  # the stored files read back: what `check` will read
    images = [
        GoldenImage(path.name, file_sha256(path), prob, c.label, c.origin)
        for path, prob, c in zip(files, probs, picked.candidates, strict=True)
    ]
    golden = GoldenSet(
        images=images,
        tolerance=float(tolerance),
        device=detector.device.type,
        dtype=str(detector.dtype).removeprefix("torch."),
        platform={"system": platform.system(), "machine": platform.machine()},
        provenance=provenance(
            {"detector": weights, "source": picked.source},
            seed=None,
            packages=PACKAGES,
            command=command,
        ),
    )
    golden.save(tmp)
    target = folder / GOLDEN_DIR
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    return golden, picked.warnings


@dataclass
class ImageCheck:
    """One golden image scored again."""

    file: str
    label: str | None
    recorded: float
    prob: float | None = None
    problem: str | None = None
    """Why it could not be compared (missing file, changed file, unreadable)."""
    tolerance: float = DEFAULT_TOLERANCE

    @property
    def diff(self) -> float | None:
        return None if self.prob is None else abs(self.prob - self.recorded)

    @property
    def ok(self) -> bool:
        return self.problem is None and self.diff is not None and self.diff <= self.tolerance

    def line(self) -> str:
        label = f"{self.label or '-':4}"
        if self.problem:
            return f"FAILED  {self.file}  {label}  {self.problem}"
        head = f"{self.file}  {label}  prob {self.prob:.6f} (recorded {self.recorded:.6f})"
        if self.ok:
            return f"ok      {head}: difference {self.diff:.1e}"
        return f"FAILED  {head}: differs by {self.diff:.1e}, over the tolerance {self.tolerance:.0e}"


@dataclass
class CheckReport:
    """The outcome of :func:`check_golden`."""

    images: list[ImageCheck]
    tolerance: float
    device: str
    recorded_device: str
    version_differences: list[str]
    """Packages whose release here is not the one the golden set was made with."""
    weights_differ: bool
    """The folder's weight files are not those the golden set was made with."""

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.images)

    @property
    def failed(self) -> int:
        return sum(not c.ok for c in self.images)

    def summary(self) -> str:
        n = len(self.images)
        diffs = [c.diff for c in self.images if c.diff is not None]
        largest = f"largest difference {max(diffs):.1e}" if diffs else "nothing compared"
        if self.ok:
            return f"reproduced: all {n} golden images within {self.tolerance:.0e} ({largest}; on {self.device})"
        return f"NOT reproduced: {self.failed} of {n} golden images fail at tolerance {self.tolerance:.0e} ({largest})"

    def notes(self) -> list[str]:
        """What may explain a difference (all of it when the check failed; only the device otherwise)."""
        out = []
        if self.device != self.recorded_device:
            out.append(
                f"the golden probabilities were computed on {self.recorded_device} and this check ran on "
                f"{self.device}: float32 kernels differ between devices (TF32 convolutions on GPUs), so expect "
                "differences beyond the tolerance; check on the same device, or give --tolerance"
            )
        if not self.ok and self.weights_differ:
            out.append("the detector's weight files are not those the golden set was made with (sha256 differs)")
        if not self.ok:
            if self.version_differences:
                out.append("package versions that differ from the golden set's: " + "; ".join(self.version_differences))
            else:
                out.append("every recorded package version matches this install")
        return out


def check_golden(detector: SEFDetector, folder: str | os.PathLike, tolerance: float | None = None) -> CheckReport:
    """Score the golden set of the detector folder ``folder`` again with ``detector`` (loaded from that folder) and
    compare each probability with the recorded one, within ``tolerance`` (default: the set's own)."""
    folder = Path(folder)
    golden = GoldenSet.load(folder)
    if tolerance is not None and (not isinstance(tolerance, (int, float)) or tolerance < 0):
        raise SefError(f"--tolerance must be a number >= 0, got {tolerance!r}")
    tol = golden.tolerance if tolerance is None else float(tolerance)
    checks, to_score = [], []
    for item in golden.images:
        check = ImageCheck(item.file, item.label, item.prob, tolerance=tol)
        path = folder / GOLDEN_DIR / item.file
        if not path.is_file():
            check.problem = "missing: the file is not in golden/"
        elif file_sha256(path) != item.sha256:
            check.problem = "file changed: its sha256 is not the one golden.json records"
        else:
            to_score.append((check, path))
        checks.append(check)
    for check, path in to_score:  # one at a time, as they were scored: a broken file fails alone
        try:
            check.prob = _score_files(detector, [path])[0]
        except Exception as e:
            check.problem = f"unreadable: {describe_error(e)}"
    recorded = golden.provenance.get("packages") or {}
    here = installed_versions(tuple(name for name in recorded if name != "python"))
    try:
        same_weights = _same_weights(golden.provenance, folder)
    except (OSError, ValueError, KeyError, TypeError, AttributeError, struct.error):
        same_weights = False  # a weight file that cannot be read is not the recorded one
    return CheckReport(
        images=checks,
        tolerance=tol,
        device=detector.device.type,
        recorded_device=golden.device,
        version_differences=version_differences(recorded, here),
        weights_differ=same_weights is False,
    )


__all__ = [
    "DEFAULT_COUNT",
    "DEFAULT_TOLERANCE",
    "GOLDEN_DIR",
    "GOLDEN_FILE",
    "CheckReport",
    "GoldenImage",
    "GoldenSet",
    "check_golden",
    "drop_stale",
    "golden_candidates",
    "write_golden",
]
