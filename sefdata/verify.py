"""``sefdata verify``: prove a build folder intact — every shard, every sample, every field.

Checks, per shard: the tar exists and its byte size and sha256 match both its stats file and ``manifest.json``;
every sample has exactly the build's fields, each decodes as an image of the same pixel size as the real, its
metadata parses, names the sample's key and records each fake's sha256 correctly; the sample count matches. Also
reports shards that are unfinished (no stats), leftover ``.partial`` files, shards the manifest does not list, and a
sample key found in two shards (shards planned from different listings of the sources).
"""

from __future__ import annotations

import hashlib
import io
import json
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from sefcore.errors import SefError
from sefcore.hub import file_sha256
from sefdata.manifest import BUILD_FILE, read_build
from sefdata.shards import (
    MANIFEST_FILE,
    READ_ERRORS,
    Manifest,
    field_keys,
    is_done,
    iter_samples,
    read_stats,
    sample_encoding,
    tar_path,
)


@dataclass
class VerifyReport:
    shards: int = 0
    samples: int = 0
    problems: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))  # file -> problems

    @property
    def ok(self) -> bool:
        return not self.problems


def _check_sample(sample: dict[str, Any], fields: list[str]) -> list[str]:
    problems = []
    key = sample["__key__"]
    present = {f: k for f, k in field_keys(sample).items() if k != "json"}
    missing = [f for f in fields if f not in present]
    extra = sorted(set(present) - set(fields))
    if missing or extra or "json" not in sample:
        return [f"{key}: fields wrong (missing {missing + ([] if 'json' in sample else ['json'])}, extra {extra})"]
    try:
        meta = json.loads(sample["json"])
    except ValueError:
        return [f"{key}: json does not parse"]
    if meta.get("key") != key:
        problems.append(f"{key}: json names key {meta.get('key')!r}")
    sizes = {}
    for f in fields:
        try:
            with Image.open(io.BytesIO(sample[present[f]])) as img:
                img.load()
                sizes[f] = img.size
        except Exception as e:
            problems.append(f"{key}: {present[f]} does not decode ({type(e).__name__})")
    if len(set(sizes.values())) > 1:
        problems.append(f"{key}: sizes differ {sizes}")
    for f in fields[1:]:
        recorded = meta.get("generators", {}).get(f, {}).get("sha256")
        if recorded != hashlib.sha256(sample[present[f]]).hexdigest():
            problems.append(f"{key}: {present[f]} sha256 does not match its json")
    return problems


def verify(folder: str | Path) -> VerifyReport:
    """Check every shard of a build folder; raises SefError only if it is not a build folder at all."""
    out = Path(folder)
    build = read_build(out)
    fields: list[str] = build["fields"]
    report = VerifyReport()
    try:
        manifest = Manifest.find(out)
        if manifest is None:
            report.problems[MANIFEST_FILE].append("missing: run `sefdata manifest` once every shard is done")
    except SefError as e:  # one that does not parse is a problem of the build, not the end of the check
        manifest = None
        report.problems[MANIFEST_FILE].append(str(e))
    listed = {s.url: s for s in manifest.shards} if manifest else {}
    shard_of: dict[str, str] = {}  # sample key -> the first shard that holds it
    for partial in sorted(out.glob("*.partial")):
        report.problems[partial.name].append("leftover partial file (an interrupted write; re-run the build)")
    for index in range(build["num_shards"]):
        path = tar_path(out, index)
        report.shards += 1
        if not is_done(out, index):
            report.problems[path.name].append("unfinished: no stats file (re-run the build to finish it)")
            continue
        stats = read_stats(out, index)
        if stats["written"] == 0:  # every input was skipped: done, counted, and rightly without a tar
            if path.is_file():
                report.problems[path.name].append("a tar exists although its stats say no sample was written")
            continue
        if not path.is_file():
            report.problems[path.name].append("missing tar although its stats file exists")
            continue
        size, sha = path.stat().st_size, file_sha256(path)
        if (size, sha) != (stats["bytes"], stats["sha256"]):
            report.problems[path.name].append("bytes/sha256 differ from its stats file (modified or truncated)")
        entry = listed.get(path.name)
        if listed and entry is None:
            report.problems[path.name].append("not listed in manifest.json")
        elif entry is not None and (entry.filesize, entry.sha256, entry.nsamples) != (
            size, sha, stats["written"],
        ):  # fmt: skip
            report.problems[path.name].append("size, sha256 or count differ from manifest.json")
        try:
            samples = list(iter_samples(str(path)))
        except READ_ERRORS as e:
            report.problems[path.name].append(f"tar does not read: {e.args[0] if e.args else e}")
            continue
        if len(samples) != stats["written"]:
            report.problems[path.name].append(f"{len(samples)} samples, stats say {stats['written']}")
        for key, n in Counter(s["__key__"] for s in samples).items():
            if n > 1:  # members of one sample apart from each other: readers see several samples
                report.problems[path.name].append(f"{key}: the key of {n} samples (its members are not together)")
            if key in shard_of:  # an input in two shards: they were planned from different listings of the sources
                report.problems[path.name].append(
                    f"{key}: also in {shard_of[key]} (shards planned from different listings of the sources: some "
                    "inputs twice, others missing)"
                )
            else:
                shard_of[key] = path.name
        for sample in samples:
            report.problems[path.name].extend(_check_sample(sample, fields))
        encodings = {sample_encoding(sample) for sample in samples} - {None}
        if len(encodings) > 1:
            report.problems[path.name].append(
                f"samples of several encodings ({', '.join(sorted(encodings))}): `datasets` cannot load it"
            )
        report.samples += len(samples)
    if report.samples == 0:
        report.problems[BUILD_FILE].append("the build has no sample at all")
    report.problems = {k: v for k, v in report.problems.items() if v}
    return report


__all__ = ["SefError", "VerifyReport", "verify"]
