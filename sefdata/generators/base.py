"""The generator interface and its registry.

A generator turns a batch of aligned real images into fakes of the same size. It knows nothing about shards,
files or encodings. Images come in as float32 tensors in [0, 1], NCHW, RGB, on the generator's device (the build
copies uint8 there and converts it on the device) or on the CPU (tests, scripts); the generator only reads them,
moves them to its dtype and memory format (:meth:`Generator.inputs`) and returns the same shape in [0, 1] *on its
device* (any float dtype): the build quantises to uint8 there, so only a quarter of the bytes cross back to the
host. :meth:`Generator.optimise` puts a model in the runtime's memory format and compiles it when asked.

Adding a generator is one new file plus one registration line::

    @dataclass
    class MyConfig:
        model: str = field(default="org/name", metadata={"help": "Hub id or local folder"})

    @register_generator("mine", MyConfig)
    class MyGenerator(Generator):
        def generate(self, images, seeds): ...
"""

from __future__ import annotations

import abc
import dataclasses
import hashlib
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from sefcore.errors import SefError

RESERVED_FIELDS = ("real", "json")


@dataclass(frozen=True)
class Runtime:
    """Where and how generators run."""

    device: torch.device
    dtype: torch.dtype
    compile: str | None = None  # a torch.compile backend ("inductor") for the models' forward passes; None: eager
    channels_last: bool = True  # convolutional models and their inputs in NHWC memory format; False: NCHW


class Generator(abc.ABC):
    """Base class. Subclasses set ``multiple`` in ``__init__`` once their model is loaded.

    A generator whose weights can travel inside another folder (an AEROBLADE detector stores its autoencoders)
    implements :meth:`save_weights` and names in ``saved_paths`` the config fields that then hold paths relative to
    that folder; :func:`restore_generator` loads it back from there."""

    name: ClassVar[str]  # registry name, set by register_generator
    multiple: int = 1  # H and W of the input must be multiples of this
    saved_paths: ClassVar[tuple[str, ...]] = ()  # config fields that save_weights fills with folder-relative paths

    def __init__(self, config: Any, runtime: Runtime) -> None:
        self.config = config
        self.runtime = runtime

    @abc.abstractmethod
    def generate(self, images: torch.Tensor, seeds: Sequence[int]) -> torch.Tensor:
        """images: float32 [0, 1], (N, 3, H, W), on the CPU or the generator's device, read-only; seeds: one per
        image. Returns the same shape and range, on the generator's device."""

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.runtime.channels_last else torch.contiguous_format

    def inputs(self, images: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        """``images`` on the device, in ``dtype`` (default: the runtime's) and the runtime's memory format."""
        return images.to(self.runtime.device, dtype or self.runtime.dtype, memory_format=self.memory_format)

    def optimise(self, model: torch.nn.Module, *parts: torch.nn.Module) -> torch.nn.Module:
        """Put ``model`` (already on its device and dtype) in the runtime's memory format and, when the runtime
        asks, compile ``parts`` (default: the model itself) in place: the modules whose ``forward`` the generator
        calls. Weights, parameter names and state dicts stay as they are. Returns ``model``, in eval mode, frozen."""
        model.to(memory_format=self.memory_format).eval().requires_grad_(False)
        if self.runtime.compile:
            for part in parts or (model,):
                part.compile(backend=self.runtime.compile)
        return model

    def sample_records(self) -> list[dict]:
        """Per-image measurements of the last :meth:`generate` call, one dict per image in order, stored in each
        sample's metadata beside its PSNR (e.g. DDIM's latent round-trip error). Default: none."""
        return []

    def model_info(self) -> dict:
        """Model ids, revisions and file hashes, for the manifest. Override to add what identifies the weights."""
        return {}

    def save_weights(self, folder: Path) -> dict[str, str]:
        """Write this generator's weights into ``folder`` (safetensors and JSON only) and return the ``--gen``
        parameters that load them again, with the ``saved_paths`` fields relative to ``folder``. Default: not
        supported."""
        raise SefError(f"generator {self.name!r} cannot store its weights in another folder")

    def info(self) -> dict:
        return {
            "generator": self.name,
            "params": dataclasses.asdict(self.config),
            "model": self.model_info(),
            "multiple": self.multiple,
            # what --device/--dtype resolved to on this rank (a model may still run in fp32: see "model")
            "runtime": {"device": str(self.runtime.device), "dtype": str(self.runtime.dtype).removeprefix("torch.")},
        }


_REGISTRY: dict[str, tuple[type[Generator], type]] = {}


def register_generator(name: str, config_cls: type) -> Callable[[type[Generator]], type[Generator]]:
    """Class decorator: make ``cls`` available as ``--gen name:...``. Refuses duplicate names."""

    def wrap(cls: type[Generator]) -> type[Generator]:
        if name in _REGISTRY:
            raise ValueError(f"generator {name!r} is already registered by {_REGISTRY[name][0].__qualname__}")
        if not dataclasses.is_dataclass(config_cls):
            raise TypeError(f"the config of generator {name!r} must be a dataclass")
        cls.name = name
        _REGISTRY[name] = (cls, config_cls)
        return cls

    return wrap


def available_generators() -> dict[str, type]:
    """Registered names and their config classes."""
    return {name: cfg for name, (_, cfg) in sorted(_REGISTRY.items())}


def _convert(value: str, annotation: Any, where: str) -> Any:
    """Convert a spec string to the annotated field type (str, int, float, bool, or X | None)."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if value.lower() in ("none", ""):
            return None
        annotation = args[0]
    try:
        if annotation is bool:
            if value.lower() in ("1", "true", "yes", "on"):
                return True
            if value.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        return annotation(value)
    except ValueError:
        raise SefError(f"{where}: {value!r} is not a valid {annotation.__name__}") from None


def parse_params(config_cls: type, params: dict[str, str], gen_name: str) -> Any:
    """Build a generator config from string parameters, naming any unknown, missing or mistyped key."""
    hints = typing.get_type_hints(config_cls)
    fields = {f.name: f for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(params) - set(fields))
    if unknown:
        raise SefError(
            f"--gen {gen_name}: unknown parameter(s) {', '.join(unknown)}; known: {', '.join(fields) or 'none'}"
        )
    values = {k: _convert(v, hints[k], f"--gen {gen_name}:{k}") for k, v in params.items()}
    try:
        return config_cls(**values)
    except TypeError as e:  # a required field is missing
        raise SefError(f"--gen {gen_name}: {e}") from None


@dataclass(frozen=True)
class GenSpec:
    """One ``--gen NAME[:key=value,...]``: registry name, shard field and parameters."""

    name: str
    field: str
    params: dict[str, str]

    @classmethod
    def parse(cls, text: str) -> GenSpec:
        name, _, rest = text.strip().partition(":")
        params: dict[str, str] = {}
        for item in filter(None, (p.strip() for p in rest.split(","))):
            key, eq, value = item.partition("=")
            if not eq or not key.strip():
                raise SefError(f"--gen {text!r}: {item!r} is not key=value")
            params[key.strip()] = value.strip()
        if name not in _REGISTRY:
            raise SefError(f"--gen {text!r}: unknown generator {name!r}; known: {', '.join(sorted(_REGISTRY))}")
        field = params.pop("as", name)
        if not field.replace("_", "").replace("-", "").isalnum() or field in RESERVED_FIELDS:
            raise SefError(
                f"--gen {text!r}: field name {field!r} must be letters, digits, '_' or '-', and not "
                f"{' or '.join(RESERVED_FIELDS)}"
            )
        return cls(name=name, field=field, params=params)

    def config(self) -> Any:
        return parse_params(_REGISTRY[self.name][1], self.params, self.name)

    def __str__(self) -> str:
        extra = "" if self.field == self.name else f"as={self.field}"
        items = [f"{k}={v}" for k, v in self.params.items()] + ([extra] if extra else [])
        return self.name + (":" + ",".join(items) if items else "")


def create_generator(spec: GenSpec, runtime: Runtime) -> Generator:
    cls, _ = _REGISTRY[spec.name]
    return cls(spec.config(), runtime)


def restore_generator(name: str, params: dict[str, str], folder: Path, runtime: Runtime) -> Generator:
    """The generator that :meth:`Generator.save_weights` wrote into ``folder``, loaded from there: ``params`` are
    what it returned (its ``saved_paths`` fields relative to ``folder``)."""
    if name not in _REGISTRY:
        raise SefError(f"unknown generator {name!r}; known: {', '.join(sorted(_REGISTRY))}")
    cls, _ = _REGISTRY[name]
    located = {k: str(Path(folder) / v) if k in cls.saved_paths and v not in ("", "none", "None") else v
               for k, v in params.items()}  # fmt: skip
    return create_generator(GenSpec(name=name, field=name, params=located), runtime)


def sample_seed(base_seed: int, key: str, field: str) -> int:
    """A per-sample, per-generator seed that does not depend on batching, sharding or ranks."""
    digest = hashlib.sha256(f"{base_seed}:{key}:{field}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def torch_generators(seeds: Sequence[int]) -> list[torch.Generator]:
    """One CPU torch.Generator per image: noise is drawn on the CPU so it is the same on every device."""
    return [torch.Generator().manual_seed(s) for s in seeds]


def seeded_noise(generators: Sequence[torch.Generator], shape: Sequence[int], like: torch.Tensor) -> torch.Tensor:
    """Standard normal noise of ``shape`` per image (stacked: (N, *shape)), drawn on the CPU with each image's own
    generator, then on ``like``'s device and dtype. To a GPU it goes from pinned memory without waiting for the work
    queued there (a copy from pageable memory would wait)."""
    noise = torch.stack([torch.randn(tuple(shape), generator=g) for g in generators])
    if like.device.type == "cuda":
        noise = noise.pin_memory().to(like.device, non_blocking=True)
    return noise.to(like.device, like.dtype)
