"""``manifest.json``: the build's resolved config, versions, generators, totals and every shard.

Its ``shardlist`` follows the wids shard-index format (``__kind__: wids-shard-index-v1``), so the manifest is itself
an index that ``wids.ShardListDataset("manifest.json")`` can open for random access.
"""

from __future__ import annotations

import json
import platform
import time
from collections import Counter
from importlib import metadata
from pathlib import Path

from sefdata.errors import SefError
from sefdata.shards import atomic_write_json, is_done, read_stats, stats_path, tar_path

BUILD_FILE = "build.json"
MANIFEST_FILE = "manifest.json"
PACKAGES = ("sef-toolkit", "torch", "torchvision", "diffusers", "transformers", "spandrel", "webdataset", "pillow",
            "numpy", "datasets", "huggingface_hub")  # fmt: skip


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def read_build(out: Path) -> dict:
    path = out / BUILD_FILE
    if not path.is_file():
        raise SefError(f"{str(out)!r} is not a sefdata build folder (no {BUILD_FILE})")
    return json.loads(path.read_text())


def write_manifest(out: Path) -> dict:
    """Merge every shard's stats into ``manifest.json``; all shards must be done."""
    build = read_build(out)
    n = build["num_shards"]
    missing = [i for i in range(n) if not is_done(out, i)]
    if missing:
        raise SefError(
            f"{len(missing)} of {n} shards are not finished (first: {tar_path(out, missing[0]).name}); "
            "run the build again (every rank) to finish them"
        )
    shardlist, failed, generators = [], Counter(), None
    inputs = written = 0
    for i in range(n):
        stats = read_stats(out, i)
        if stats["config_hash"] != build["config_hash"]:
            raise SefError(f"{stats_path(out, i).name} belongs to another build (config hash differs)")
        shardlist.append({
            "url": tar_path(out, i).name, "nsamples": stats["written"], "filesize": stats["bytes"],
            "sha256": stats["sha256"],
        })  # fmt: skip
        inputs += stats["inputs"]
        written += stats["written"]
        failed.update(stats["failed"])
        generators = generators or stats.get("generators")
    manifest = {
        "__kind__": "wids-shard-index-v1",
        "wids_version": 1,
        "name": out.resolve().name,
        "shardlist": shardlist,
        "sef": {
            "format_version": 1,
            "config": build["config"],
            "config_hash": build["config_hash"],
            "recipe": build.get("recipe"),
            "fields": build["fields"],
            "generators": generators,
            "totals": {"inputs": inputs, "written": written, "failed": dict(sorted(failed.items()))},
            "versions": versions(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        },
    }
    atomic_write_json(out / MANIFEST_FILE, manifest)
    return manifest
