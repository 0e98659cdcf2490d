"""``sefdata verify``: prove a build folder intact — every shard, every sample, every field.

Checks, per shard: the tar exists and its byte size and sha256 match both its stats file and ``manifest.json``;
every sample has exactly the build's fields, each decodes as an image of the same pixel size as the real, its
metadata parses, names the sample's key and records each fake's sha256 correctly; the sample count matches. Also
reports shards that are unfinished (no stats), leftover ``.partial`` files and shards the manifest does not list.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from sefdata.errors import SefError
from sefdata.manifest import BUILD_FILE, MANIFEST_FILE, read_build
from sefdata.shards import file_sha256, is_done, read_stats, tar_path


@dataclass
class VerifyReport:
    shards: int = 0
    samples: int = 0
    problems: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))  # file -> problems

    @property
    def ok(self) -> bool:
        return not self.problems


def _samples(path: Path) -> dict[str, dict[str, bytes]]:
    grouped: dict[str, dict[str, bytes]] = {}
    with tarfile.open(path) as tar:
        for member in tar:
            if not member.isfile():
                continue
            key, _, suffix = member.name.partition(".")
            grouped.setdefault(key, {})[suffix] = tar.extractfile(member).read()
    return grouped


def _check_sample(key: str, sample: dict[str, bytes], fields: list[str]) -> list[str]:
    problems = []
    present = {s.split(".")[0]: s for s in sample if s != "json"}
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
    manifest_path = out / MANIFEST_FILE
    listed: dict[str, dict] = {}
    if manifest_path.is_file():
        listed = {s["url"]: s for s in json.loads(manifest_path.read_text())["shardlist"]}
    else:
        report.problems[MANIFEST_FILE].append("missing: run `sefdata manifest` once every shard is done")
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
        elif entry is not None and (entry["filesize"], entry["sha256"], entry["nsamples"]) != (
            size, sha, stats["written"],
        ):  # fmt: skip
            report.problems[path.name].append("size, sha256 or count differ from manifest.json")
        try:
            samples = _samples(path)
        except (tarfile.TarError, OSError) as e:
            report.problems[path.name].append(f"tar does not read: {e}")
            continue
        if len(samples) != stats["written"]:
            report.problems[path.name].append(f"{len(samples)} samples, stats say {stats['written']}")
        for key, sample in samples.items():
            report.problems[path.name].extend(_check_sample(key, sample, fields))
        encodings = {s.partition(".")[2] for sample in samples.values() for s in sample if s.startswith("real.")}
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
