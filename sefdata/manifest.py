"""``manifest.json``: the build's resolved config, versions, generators, totals, every shard, and its provenance.

Its ``shardlist`` follows the wids shard-index format (``__kind__: wids-shard-index-v1``), so the manifest is itself
an index that ``wids.ShardListDataset("manifest.json")`` can open for random access. ``provenance`` says what made
the build in the shape every output of the toolkit uses (:mod:`sefdata.provenance`): ``sources`` (by name),
``recipe`` (name and sha256), ``generators`` (each field's generator, parameters and model ids, revisions and weight
file hashes), ``config_hash``, ``seed``, ``packages`` and ``command`` (the ``sefdata build`` command line that last
wrote ``build.json``). Manifests written before it have no ``provenance``; ``Manifest.provenance`` is None for them.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path, PurePosixPath

from sefcore.errors import SefError
from sefcore.privacy import public_config, public_json
from sefdata.config import differences
from sefdata.provenance import installed_versions, provenance
from sefdata.shards import MANIFEST_FILE, atomic_write_json, is_done, read_stats, stats_path, tar_path

BUILD_FILE = "build.json"
PACKAGES = ("sef-toolkit", "torch", "torchvision", "diffusers", "transformers", "spandrel", "webdataset", "pillow",
            "numpy", "datasets", "huggingface_hub")  # fmt: skip


def versions() -> dict[str, str | None]:
    return installed_versions(PACKAGES)


def read_build(out: Path) -> dict:
    path = out / BUILD_FILE
    if not path.is_file():
        raise SefError(f"{str(out)!r} is not a sefdata build folder (no {BUILD_FILE})")
    return json.loads(path.read_text())


def check_one_plan(out: Path, stats: list[dict]) -> None:
    """Refuse shards planned from different listings of the sources (their stats' ``plan_sha256`` differ): ranks
    list the sources each on their own, and one that saw other files (a folder still being filled) cut other shards,
    so some inputs would be in two shards and others in none. Stats written before plans were recorded pass."""
    by_plan: dict[str, list[int]] = {}
    for s in stats:
        if s.get("plan_sha256") is not None:
            by_plan.setdefault(s["plan_sha256"], []).append(s["shard"])
    if len(by_plan) > 1:
        groups = sorted(by_plan.values(), key=len, reverse=True)
        listed = "; ".join(f"shards {', '.join(map(str, g[:8]))}{' ...' if len(g) > 8 else ''}" for g in groups)
        raise SefError(
            f"the shards of {str(out)!r} were planned from {len(groups)} different listings of the sources ({listed}):"
            " ranks or re-runs saw different files, so some inputs are in two shards and others in none (`sefdata "
            "verify` names them). Make the sources complete, delete the shards of the other listings and build again"
        )


def write_manifest(out: Path, command: str | None = None) -> dict:
    """Merge every shard's stats into ``manifest.json``; all shards must be done.

    Published as it is, so it names no local path (:mod:`sefcore.privacy`). Shards made with other runtime settings
    (a resume with ``--allow-mixed``) are listed under ``runs``, one entry per set of settings with its shards.
    ``command``: the build's command line for ``provenance`` (default: the one ``build.json`` recorded)."""
    build = read_build(out)
    n = build["num_shards"]
    missing = [i for i in range(n) if not is_done(out, i)]
    if missing:
        raise SefError(
            f"{len(missing)} of {n} shards are not finished (first: {tar_path(out, missing[0]).name}); "
            "run the build again (every rank) to finish them"
        )
    shardlist, failed, generators = [], Counter(), None
    runs: dict[str, dict] = {}
    inputs = written = 0
    allow_mixed = False
    every = [read_stats(out, i) for i in range(n)]
    for i, stats in enumerate(every):
        settings = stats.get("settings")
        if settings is None or settings["config"] != build["settings"]["config"]:
            raise SefError(f"{stats_path(out, i).name} belongs to another build (its config differs)")
        allow_mixed |= stats.get("allow_mixed", False)
        run = runs.setdefault(stats["config_hash"], {
            "config_hash": stats["config_hash"], "runtime": settings["runtime"], "shards": [],
            "generators": {name: {"runtime": info["runtime"], "model_dtype": info.get("model", {}).get("dtype")}
                           for name, info in stats["generators"].items()},
        })  # fmt: skip
        run["shards"].append(i)
        if stats["written"]:  # a shard whose inputs were all skipped has no tar (its skips are counted below)
            shardlist.append({
                "url": tar_path(out, i).name, "nsamples": stats["written"], "filesize": stats["bytes"],
                "sha256": stats["sha256"], "encoding": stats["encoding"], "config_hash": stats["config_hash"],
            })  # fmt: skip
        inputs += stats["inputs"]
        written += stats["written"]
        failed.update(stats["failed"])
        generators = generators or stats.get("generators")
    check_one_plan(out, every)
    if len(runs) > 1 and not allow_mixed:
        first, *others = runs.values()
        changed = differences(first["runtime"], others[0]["runtime"])
        raise SefError(
            f"the shards of {str(out)!r} were made with different settings ({'; '.join(changed)}); run "
            "`sefdata build` again with --allow-mixed to accept a mixed build, or rebuild those shards"
        )
    recipe = build.get("recipe")
    recipe = {"name": PurePosixPath(recipe["path"]).name, "sha256": recipe["sha256"]} if recipe else None
    config = public_config(build["config"])
    # public_json again: stats written before the build recorded them so name local model folders
    generators = {name: public_json({k: v for k, v in info.items() if k != "runtime"})
                  for name, info in (generators or {}).items()}  # fmt: skip
    made_from = {"sources": config["sources"], "recipe": recipe, "generators": generators,
                 "config_hash": next(iter(runs))}  # fmt: skip
    manifest = {
        "__kind__": "wids-shard-index-v1",
        "wids_version": 1,
        "name": out.resolve().name,
        "shardlist": shardlist,
        "sef": {
            "format_version": 2,
            "config": config,
            "config_hash": next(iter(runs)),
            "mixed": len(runs) > 1,
            "runs": list(runs.values()),
            "recipe": recipe,
            "fields": build["fields"],
            "generators": generators,
            "totals": {"inputs": inputs, "written": written, "failed": dict(sorted(failed.items()))},
            "versions": versions(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        },
        "provenance": provenance(
            made_from, seed=config.get("seed"), packages=PACKAGES, command=command or build.get("command")
        ),
    }
    atomic_write_json(out / MANIFEST_FILE, manifest)
    return manifest
