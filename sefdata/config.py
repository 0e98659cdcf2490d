"""Build configuration: one dataclass, every field with a default and a one-line help, validated on creation.

The same object comes from CLI flags, from a TOML recipe, or from Python; the resolved config is saved with the
output (``build.json`` and ``manifest.json``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from sefcore.errors import SefError
from sefcore.fields import doc
from sefcore.tomlfile import read_toml

if TYPE_CHECKING:  # torch loads when a build runs, not when `sefdata --help` reads the options
    import torch

DTYPES = ("fp32", "fp16", "bf16")


@dataclass
class BuildConfig:
    sources: list[str] = field(
        default_factory=list,
        metadata=doc("folders, image files, path lists (.txt), WebDataset tars, or Hugging Face dataset ids"),
    )
    out: str = field(default="", metadata=doc("output folder for shards, stats and manifest.json"))
    gen: list[str] = field(
        default_factory=lambda: ["vae", "sr"],
        metadata=doc(
            "generators, NAME[:key=value,...], one per fake field (default: vae and sr with their default models)"
        ),
    )
    format: str = field(default="match", metadata=doc("encoding of stored images: match, png, jpeg:Q or webp:Q"))
    max_side: int | None = field(default=None, metadata=doc("downscale sources whose longer side exceeds this"))
    crop: int | None = field(
        default=None, metadata=doc("centre-crop every image to this square side (default: no crop)")
    )
    min_side: int = field(default=32, metadata=doc("skip images whose aligned shorter side is below this"))
    max_pixels: int = field(default=100_000_000, metadata=doc("skip images with more pixels (decompression bombs)"))
    shard_size: int = field(default=1000, metadata=doc("samples per shard (inputs per shard before skips)"))
    batch_size: int | None = field(
        default=None,
        metadata=doc(
            "images per model call, same-size images batched (default: 1 on a CPU, where batching costs cache and "
            "gains nothing, 8 on a GPU)"
        ),
    )
    workers: int | None = field(
        default=None,
        metadata=doc(
            "threads decoding and encoding beside the models (default: one per core, max 16, less the one a GPU's "
            "thread keeps)"
        ),
    )
    device: str = field(default="auto", metadata=doc("auto, cpu, cuda or cuda:i (auto: the rank's GPU if any)"))
    dtype: str = field(
        default="auto",
        metadata=doc(
            "model precision: auto, fp32, fp16 or bf16 (auto: bf16 where the device computes it natively, "
            "else fp16 on GPUs, else fp32; models unsafe in a precision fall back to fp32)"
        ),
    )
    compile: bool = field(
        default=False,
        metadata=doc(
            "torch.compile the generators' models (CUDA only: ignored with a note on a CPU; the first batch of "
            "each image size compiles for a minute or more; fakes may differ from eager ones by a level)"
        ),
    )
    channels_last: bool = field(
        default=True,
        metadata=doc(
            "run convolutional generators in channels-last (NHWC) memory format, faster on CPUs and on tensor-core "
            "GPUs (off: NCHW; fakes may differ by a level)"
        ),
    )
    seed: int = field(default=0, metadata=doc("base seed; each sample's seed derives from it and its key"))
    rank: int | None = field(default=None, metadata=doc("this worker's rank (default: RANK or Slurm array, else 0)"))
    world: int | None = field(default=None, metadata=doc("number of workers (default: WORLD_SIZE or Slurm, else 1)"))
    limit: int | None = field(default=None, metadata=doc("use only the first N inputs (trial runs)"))
    image_field: str | None = field(
        default=None, metadata=doc("image field of tar sources / column of datasets (default: detected)")
    )
    split: str = field(default="train", metadata=doc("split of Hugging Face dataset sources"))
    recipe: str | None = field(default=None, metadata=doc("TOML recipe the values came from (recorded)"))
    allow_mixed: bool = field(
        default=False,
        metadata=doc(
            "resume a build whose finished shards were made with other runtime settings (batch size, precision, "
            "device type, library versions), recording each shard's own in manifest.json"
        ),
    )

    def __post_init__(self) -> None:
        from sefdata.generators import GenSpec  # late: generators import heavy libraries
        from sefdata.presets import expand_spec

        if not self.gen:
            raise SefError("no generator: give at least one --gen (see `sefdata build --help`)")
        self.gen = [expand_spec(g) for g in self.gen]  # NAME:preset=P,... -> pinned parameters (recorded as such)
        specs = [GenSpec.parse(g) for g in self.gen]
        fields = [s.field for s in specs]
        if len(set(fields)) != len(fields):
            raise SefError(f"two generators write the same field ({', '.join(fields)}); rename one with as=NAME")
        from sefdata.encode import EncodingPolicy  # late: numpy and Pillow are not needed to read the options

        EncodingPolicy.parse(self.format)
        if self.dtype != "auto" and self.dtype not in DTYPES:
            raise SefError(f"--dtype {self.dtype!r}: use one of auto, {', '.join(DTYPES)}")
        for name in ("shard_size", "min_side", "max_pixels"):
            if getattr(self, name) < 1:
                raise SefError(f"--{name.replace('_', '-')} must be at least 1")
        for name in ("batch_size", "max_side", "crop", "limit", "workers"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise SefError(f"--{name.replace('_', '-')} must be at least 1")
        if self.device != "auto" and not (self.device == "cpu" or self.device.startswith(("cuda", "mps"))):
            raise SefError(f"--device {self.device!r}: use auto, cpu, cuda or cuda:i")

    def specs(self):
        from sefdata.generators import GenSpec

        return [GenSpec.parse(g) for g in self.gen]

    def output_dict(self) -> dict:
        """What to build: the fields that decide the samples (the runtime settings that change their bytes too are
        :func:`runtime_settings`; where and how fast a build runs is in neither)."""
        # batch size and precision are runtime settings (the precision as resolved: "auto" may mean fp32 or bf16)
        skip = {"out", "batch_size", "workers", "device", "dtype", "compile", "channels_last", "rank", "world",
                "recipe", "allow_mixed"}  # fmt: skip
        out = {k: v for k, v in dataclasses.asdict(self).items() if k not in skip}
        if self.max_side is not None:  # large JPEGs decode at a reduced scale (sefcore.imageio): other bytes
            out["jpeg_draft"] = True
        return out

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def default_batch_size(device: torch.device) -> int:
    """``--batch-size`` left unset: 1 on a CPU, 8 on a GPU. A CPU gains nothing from batching convolutions and loses
    cache: TAEF2 + x4 Real-ESRGAN at 384 px, run alone, made 14.7 images/s one at a time and 8.5 in fours on two
    AVX512-BF16 cores in bf16 (CPU time per image 135 ms against 234: ``cpu/taef2-sr`` and ``cpu/taef2-sr+batch4``
    in ``bench/results/generation.json``), the SD VAE at 128 px the same either way; a GPU needs batches to be busy."""
    return 1 if device.type == "cpu" else 8


# Packages whose code computes or writes the output: another release may give other bytes.
OUTPUT_PACKAGES = ("sef-toolkit", "torch", "torchvision", "diffusers", "transformers", "spandrel", "pillow", "numpy",
                   "imagecodecs", "webdataset")  # fmt: skip


def runtime_settings(
    batch_size: int, device: torch.device, dtype: torch.dtype, *, compile: bool = False, channels_last: bool = True
) -> dict:
    """The settings besides the config that change a build's output bytes: floating-point results depend on the
    batch size (measured: batch 1 vs 2 give other TAEF2 fakes in fp32 on a CPU), the precision and the kind of
    device, the kernels (compiled or not, memory format), and on the releases of the libraries that run the models
    and encode the files. ``compile`` and ``channels_last`` are recorded only when not the default, so builds made
    before they existed keep their hash. On a CPU, torch's intra-op thread count too (it follows ``OMP_NUM_THREADS``,
    default one per core): with one image per call oneDNN splits an image's convolutions across the threads, and 1
    and 2 threads gave fakes a level apart (tiny TAESD + SR at batch 1, 2026-12-05; at batch 8 they were the same)."""
    import torch

    from sefdata.provenance import package_versions

    return {
        "batch_size": batch_size,
        "device": device.type,
        "dtype": str(dtype).removeprefix("torch."),
        "versions": package_versions(OUTPUT_PACKAGES),
        **({"compile": True} if compile else {}),
        **({} if channels_last else {"channels_last": False}),
        **({"torch_threads": torch.get_num_threads()} if device.type == "cpu" else {}),
    }


def settings_hash(settings: dict) -> str:
    """A short hash of a JSON-able dict (the config, or the config with the runtime settings)."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    """``key: old -> new`` for every leaf that differs between two nested dicts (dotted keys)."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {json.dumps(a)} -> {json.dumps(b)}")
    return out


def resolve_rank_world(
    rank: int | None, world: int | None, env: typing.Mapping[str, str] = os.environ
) -> tuple[int, int]:
    """Flags win; then torchrun/accelerate (RANK, WORLD_SIZE); then Slurm arrays; else a single worker."""
    if rank is None and world is None:
        if "RANK" in env and "WORLD_SIZE" in env:
            rank, world = int(env["RANK"]), int(env["WORLD_SIZE"])
        elif "SLURM_ARRAY_TASK_ID" in env and "SLURM_ARRAY_TASK_COUNT" in env:
            rank = int(env["SLURM_ARRAY_TASK_ID"]) - int(env.get("SLURM_ARRAY_TASK_MIN", "0"))
            world = int(env["SLURM_ARRAY_TASK_COUNT"])
    rank = 0 if rank is None else rank
    world = 1 if world is None else world
    if world < 1 or not 0 <= rank < world:
        raise SefError(f"rank {rank} is not in 0..{world - 1} (world size {world})")
    return rank, world


def resolve_device(device: str, env: typing.Mapping[str, str] = os.environ) -> torch.device:
    import torch

    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(env.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
        return torch.device("cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SefError(f"--device {device}: no CUDA GPU is visible here; use --device cpu")
    return torch.device(device)


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 in hardware: CUDA GPUs from Ampere on, CPUs with AVX512-BF16 or AMX."""
    import torch

    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        checks = (
            getattr(torch.cpu, "_is_avx512_bf16_supported", None),
            getattr(torch.cpu, "_is_amx_tile_supported", None),
        )
        return any(check is not None and check() for check in checks)
    return False


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """The model precision for ``--dtype name`` on ``device``.

    ``auto`` picks the fastest precision that keeps the fakes faithful: bf16 where the hardware computes it natively
    (its 8-bit exponent cannot overflow; on a 2-core AVX512-BF16 CPU, TAEF2 runs 2x faster and its PSNR against the
    real moves by under 0.05 dB, measured 2026-11-25), else fp16 on a GPU, else fp32 (emulated bf16 is
    slower than fp32 on a CPU). Generators that are unsafe in the chosen precision still fall back to fp32 on their
    own (VAEs that force upcasting, models spandrel marks fp32-only). The resolved precision is recorded per shard.
    """
    import torch

    if name != "auto":
        return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[name]
    if native_bf16(device):
        return torch.bfloat16
    return torch.float16 if device.type == "cuda" else torch.float32


# --- recipes -----------------------------------------------------------------------------------------------------


def _check_type(key: str, value: object, annotation: object) -> None:
    origin = typing.get_origin(annotation)
    allowed = typing.get_args(annotation) if origin in (typing.Union, types.UnionType) else (annotation,)
    for a in allowed:
        if a is type(None) and value is None:
            return
        if typing.get_origin(a) is list and isinstance(value, list):
            return
        if a in (int, float) and isinstance(value, int) and not isinstance(value, bool):
            return
        if isinstance(a, type) and isinstance(value, a):
            return
    names = " or ".join(getattr(a, "__name__", str(a)) for a in allowed)
    raise SefError(f"recipe key {key!r}: expected {names}, got {type(value).__name__} {value!r}")


_NOT_PATHS = ("as", "preset")  # generator-table keys whose values are names, never files next to the recipe


def _gen_entry(entry: object, base: Path, index: int) -> str:
    """A recipe generator, as a spec string or a table {name = "...", key = value, ...}, checked now: unknown
    generators, presets, parameters and wrongly typed values are errors naming gen[index] and the key.

    A table may name a ``preset`` (manifests/generators) instead of, or as well as, a ``name``; its other keys
    override the preset's. Relative paths that exist next to the recipe are made absolute."""
    from sefdata.generators import GenSpec
    from sefdata.presets import expand_spec, get_preset

    where = f"recipe gen[{index}]"
    if isinstance(entry, str):
        name, _, rest = entry.partition(":")
        params: dict[str, object] = {}
        for item in filter(None, (p.strip() for p in rest.split(","))):
            key, eq, value = item.partition("=")
            if not eq:
                raise SefError(f"{where}: {item!r} is not key=value")
            params[key.strip()] = value.strip()
    elif isinstance(entry, dict):
        params = {k: v for k, v in entry.items() if k != "name"}
        name = entry.get("name")
        if name is None and "preset" not in entry:
            raise SefError(f"{where}: a generator table needs a 'name' (or a 'preset')")
        if name is None:
            try:
                name = get_preset(str(entry["preset"])).generator
            except SefError as e:
                raise SefError(f"{where}.preset: {e}") from None
        if not isinstance(name, str):
            raise SefError(f"{where}.name: expected a string, got {type(name).__name__}")
        for k, v in params.items():
            if not isinstance(v, (str, int, float, bool)):
                raise SefError(f"{where}.{k}: expected a string, number or boolean, got {type(v).__name__}")
            if "," in str(v):
                raise SefError(f"{where}.{k}: values cannot contain ',' (it separates parameters)")
    else:
        raise SefError(f"{where}: expected a string or a table, got {type(entry).__name__}")
    items = []
    for k, v in params.items():
        v = str(v).lower() if isinstance(v, bool) else str(v)
        if v and k not in _NOT_PATHS and not Path(v).is_absolute() and (base / v).exists():
            v = str((base / v).resolve())
        items.append(f"{k}={v}")
    spec = name + (":" + ",".join(items) if items else "")
    try:
        spec = expand_spec(spec)
        GenSpec.parse(spec).config()  # builds the generator's config: checks keys and types, loads nothing
    except SefError as e:
        raise SefError(f"{where}: {e}") from None
    return spec


def load_recipe(path: str | Path) -> dict:
    """Read a TOML recipe into BuildConfig keyword arguments, validating keys and types.

    Keys are BuildConfig field names (``-`` or ``_``), at the top level or under ``[build]``. ``gen`` is a list of
    spec strings or tables, presets expanded (see :mod:`sefdata.presets`) and parameters checked. Relative paths
    (sources, generator files) that exist next to the recipe are taken relative to it; others are kept as given
    (e.g. Hub ids).
    """
    path = Path(path)
    data = read_toml(path, "recipe", section="build")
    hints = typing.get_type_hints(BuildConfig)
    known = {f.name for f in dataclasses.fields(BuildConfig)} - {"recipe", "out"}
    kwargs: dict = {}
    base = path.parent
    for raw_key, value in data.items():
        key = raw_key.replace("-", "_")
        if key not in known:
            raise SefError(f"recipe {str(path)!r}: unknown key {raw_key!r}; known: {', '.join(sorted(known))}")
        if key == "gen":
            if not isinstance(value, list):
                raise SefError(f"recipe key 'gen': expected a list of generators, got {type(value).__name__}")
            value = [_gen_entry(e, base, i) for i, e in enumerate(value)]
        else:
            _check_type(raw_key, value, hints[key])
        if key == "sources":
            value = [str((base / s).resolve()) if (base / s).exists() else s for s in value]
        kwargs[key] = value
    return kwargs
