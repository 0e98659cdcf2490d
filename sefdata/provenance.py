"""What made an output, recorded in one shape wherever the toolkit writes one: a build's ``manifest.json``
(``sefdata build``), an evaluation's ``results.json`` (``sefmodel eval``) and a detector's golden set
(``golden/golden.json``, ``sefmodel golden`` and ``publish``).

A provenance block is a JSON object: first the inputs that made the output, under names that say what they are
(a build: ``sources``, ``recipe``, ``generators`` with their model ids, revisions and file hashes; an evaluation:
``detector`` with its weights' sha256 and config, ``benchmarks`` with their manifests' sha256), then the same three
keys everywhere:

* ``seed``: the seed the output was drawn with (``null`` where nothing is drawn at random);
* ``packages``: ``python`` and the release of each package that computes the output (``None`` where one is not
  installed); torch with its build tag (``2.14.1+cpu``), which the package metadata drops;
* ``command``: the command line as typed (``null`` when a library call made the output).

Every local path in the block is reduced to its last component (:mod:`sefcore.privacy`), so it can be published as
it is. Readers take the block with ``.get("provenance")``: outputs written before it existed have none.
"""

from __future__ import annotations

import platform
from importlib import metadata
from typing import Any

from sefcore.privacy import public_json, public_text


def package_versions(names: tuple[str, ...]) -> dict[str, str | None]:
    """Installed release of each package, from its metadata (None where it is not installed). A build's settings
    hash is computed over this, so it must not change for an installed set of packages."""
    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def cpu_description() -> dict[str, str]:
    """The CPU as benchmark records describe it: its model name (Linux's /proc/cpuinfo, else the platform's) and the
    vector instructions torch's kernels use (``AVX2``, ``AVX512``, ...). CPU figures from two machines compare only
    where these agree: bf16 TAEF2 ran 2x faster than fp32 on an AVX512-BF16 CPU, and a bf16 TAEF2 + SR build 7x
    slower than fp32 on an AVX2 one."""
    import torch

    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            name = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), name)
    except OSError:
        pass
    return {"model": name, "capability": torch.backends.cpu.get_cpu_capability()}


def installed_versions(names: tuple[str, ...]) -> dict[str, str | None]:
    """``python`` and each package's release as a provenance block records them: torch with its build tag."""
    out: dict[str, str | None] = {"python": platform.python_version(), **package_versions(names)}
    if "torch" in names and out["torch"] is not None:
        import torch

        out["torch"] = torch.__version__
    return out


def provenance(
    inputs: dict[str, Any], *, seed: int | None, packages: tuple[str, ...], command: str | None
) -> dict[str, Any]:
    """The provenance block (module docstring) of an output made from ``inputs`` with ``seed`` by ``command``,
    with the installed releases of ``packages``; free of local paths."""
    block = {
        **inputs,
        "seed": seed,
        "packages": installed_versions(packages),
        "command": public_text(command) if command else None,
    }
    return public_json(block)


def version_differences(recorded: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """``"torch 2.14.1+cpu (recorded: 2.13.0)"`` for each recorded package whose release here is another."""
    out = []
    for name, theirs in recorded.items():
        ours = current.get(name)
        if theirs != ours:
            out.append(f"{name} {ours or 'not installed'} (recorded: {theirs or 'not installed'})")
    return out
