"""``sefdata publish``: shards + manifest + a dataset card → a Hugging Face Hub dataset repo.

The folder that is uploaded is staged first (and is all that ``--dry-run`` writes):

    README.md         dataset card: YAML metadata (licence, task, size category, sources, ``configs`` data_files so
                      the Hub viewer and ``load_dataset("USER/NAME")`` find the shards) and how the data was made
    manifest.json     the build's manifest (config, generators with ids/revisions/hashes, totals, shard index)
    preview.png       `sefdata preview` of the first samples
    data/shard-*.tar  the shards (hard links to the build's files where possible, else copies)

A build with the ``match`` policy over a corpus of JPEGs *and* PNGs has samples of two encodings, and the webdataset
loader of ``datasets`` needs one extension per field. Such a build is re-packed by encoding for the Hub, samples and
bytes unchanged: ``data/jpg/shard-*.tar`` and ``data/png/shard-*.tar``, one ``configs`` entry (``jpg``, ``png``) each.

Uploading uses ``HfApi.upload_folder``, which commits large folders in several batches and resumes an interrupted
upload when run again. The token comes from the usual Hub login or ``HF_TOKEN`` and is never printed.
"""

from __future__ import annotations

import json
import os
import shutil
import tarfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import DatasetCard, DatasetCardData

from sefdata.errors import SefError
from sefdata.hub import check_repo_id, staged_files, upload_folder
from sefdata.manifest import MANIFEST_FILE
from sefdata.preview import make_preview
from sefdata.shards import SHARD_DIGITS

SIZE_CATEGORIES = [(1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
                   (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M")]  # fmt: skip


@dataclass
class Staged:
    folder: Path
    files: list[str]  # relative paths, sorted
    card: DatasetCard
    warnings: list[str]


def size_category(n: int) -> str:
    return next((name for limit, name in SIZE_CATEGORIES if n < limit), "n>100M")


def sample_encodings(shards: list[Path]) -> set[str]:
    """The extensions of the ``real`` field across the build (reads tar headers only)."""
    found = set()
    for path in shards:
        with tarfile.open(path) as tar:
            found.update(name.split(".", 1)[1].partition(".")[2] for name in tar.getnames() if ".real." in name)
    return found


def repack_by_encoding(shards: list[Path], out: Path, shard_size: int) -> dict[str, int]:
    """Copy every sample, bytes unchanged, into ``out/<ext>/shard-*.tar`` by the encoding of its real."""
    from webdataset import TarWriter

    writers: dict[str, tuple[TarWriter, object]] = {}
    counts: dict[str, int] = defaultdict(int)

    def writer_for(ext: str) -> TarWriter:
        index = counts[ext] // shard_size
        current = writers.get(ext)
        if current is None or current[1] != index:
            if current is not None:
                current[0].close()
            (out / ext).mkdir(parents=True, exist_ok=True)
            path = out / ext / f"shard-{index:0{SHARD_DIGITS}d}.tar"
            writers[ext] = (TarWriter(str(path), encoder=False, mtime=0, user="sef", group="sef", mode=0o444), index)
        return writers[ext][0]

    for path in shards:
        with tarfile.open(path) as tar:
            sample: dict[str, bytes] = {}
            for member in [*tar.getmembers(), None]:
                key = member.name.split(".", 1)[0] if member else None
                if sample and key != sample["__key__"]:
                    ext = next(k for k in sample if k.startswith("real.")).partition(".")[2]
                    writer_for(ext).write(sample)
                    counts[ext] += 1
                    sample = {}
                if member is not None:
                    sample["__key__"] = key
                    sample[member.name.split(".", 1)[1]] = tar.extractfile(member).read()
    for w, _ in writers.values():
        w.close()
    return dict(counts)


def _generator_lines(generators: dict) -> list[str]:
    lines = []
    for field, info in sorted(generators.items()):
        # local paths say nothing to readers and leak the builder's file system: keep the file name (sha256 is in model)
        params = {k: Path(v).name if isinstance(v, str) and Path(v).is_absolute() else v
                  for k, v in info.get("params", {}).items() if v is not None}  # fmt: skip
        model = {k: v for k, v in info.get("model", {}).items() if v is not None}
        lines.append(f"- `{field}` — generator `{info['generator']}`; parameters `{json.dumps(params)}`; "
                     f"model `{json.dumps(model)}`")  # fmt: skip
    return lines


def make_card(
    manifest: dict, repo_id: str, license: str, layout: dict[str, int] | None, has_preview: bool
) -> DatasetCard:
    """``layout``: samples per encoding when the shards were re-packed by encoding, else None."""
    sef = manifest["sef"]
    totals, config = sef["totals"], sef["config"]
    sources = [s for s in config["sources"] if s.count("/") == 1 and not Path(s).exists()]  # Hub dataset ids
    data = DatasetCardData(
        license=license,
        task_categories=["image-classification"],
        size_categories=[size_category(totals["written"])],
        source_datasets=sources or None,
        pretty_name=repo_id.split("/")[-1],
        tags=["ai-generated-image-detection", "deepfake-detection", "webdataset", "sef-toolkit"],
        configs=[{"config_name": "default", "data_files": [{"split": "train", "path": "data/shard-*.tar"}]}]
        if layout is None
        else [{"config_name": ext, "data_files": [{"split": "train", "path": f"data/{ext}/shard-*.tar"}]}
              for ext in sorted(layout)],
    )  # fmt: skip
    fields = sef["fields"]
    failed = ", ".join(f"{k}: {v}" for k, v in totals["failed"].items()) or "none"
    if layout is None:
        where = f"{len(manifest['shardlist'])} WebDataset shards (`data/shard-*.tar`)"
        load = ['ds = load_dataset("' + repo_id + '", split="train", streaming=True)']
    else:
        where = "WebDataset shards by encoding: " + ", ".join(
            f"{n} {ext.upper()} samples in `data/{ext}/` (config `{ext}`)" for ext, n in sorted(layout.items())
        )
        load = [f'ds = load_dataset("{repo_id}", "{ext}", split="train", streaming=True)' for ext in sorted(layout)]
    body = [
        f"# {repo_id.split('/')[-1]}",
        "",
        "Aligned real/fake pairs for AI-generated image detection, built with the SEF toolkit (`sefdata build`). "
        "Every fake is made *from* its real image and shares its content, pixel size, orientation, colour mode and "
        "file encoding, so what separates them is the generator's artifact.",
        "",
        *(["![preview: real | fake | residual | residual spectrum](preview.png)", ""] if has_preview else []),
        "## Contents",
        "",
        f"- {totals['written']} samples in {where}, from {totals['inputs']} inputs; skipped by reason: {failed}.",
        f"- Fields per sample: {', '.join(f'`{f}`' for f in fields)} and `json` (source, sha256, crop box, "
        "conversions, per-generator seed, parameters, output sha256 and PSNR against the real).",
        "- Each fake is encoded like its real (`match`: JPEG reals with their own quantisation tables and chroma "
        "subsampling) unless the policy below says otherwise.",
        "",
        "## How it was made",
        "",
        *_generator_lines(sef.get("generators") or {}),
        "",
        f"- Alignment: one crop shared by the real and its fakes (`crop={config.get('crop')}`, "
        f"`max_side={config.get('max_side')}`); EXIF orientation applied; RGB.",
        f"- Encoding policy `{config['format']}`: with `match`, JPEG reals give JPEG fakes with the real's own "
        "quantisation tables and chroma subsampling, other reals give PNG; the real is re-encoded the same way.",
        f"- Seed {config['seed']}; config hash `{sef['config_hash']}`; full config, tool and library versions and "
        "model revisions in `manifest.json`.",
        "",
        "## Loading",
        "",
        "```python",
        "from datasets import load_dataset",
        *load,
        "```",
        "",
        "## Licence",
        "",
        f"Declared as `{license}`. The fakes are derived from the real images: check that the real corpus's "
        "licence allows redistribution of the images and of derivatives.",
    ]
    return DatasetCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(body) + "\n")


def stage(build_dir: str | Path, staging: str | Path, *, repo_id: str, license: str = "unknown") -> Staged:
    """Write the folder that ``publish`` uploads into ``staging`` (emptied first)."""
    build_dir, staging = Path(build_dir), Path(staging)
    manifest_path = build_dir / MANIFEST_FILE
    if not manifest_path.is_file():
        raise SefError(f"{str(build_dir)!r} has no {MANIFEST_FILE}: finish the build (and `sefdata manifest`) first")
    manifest = json.loads(manifest_path.read_text())
    shards = [build_dir / s["url"] for s in manifest["shardlist"]]
    missing = [p.name for p in shards if not p.is_file()]
    if missing:
        raise SefError(f"shards listed in the manifest are missing: {', '.join(missing[:5])}")
    if staging.exists():
        shutil.rmtree(staging)
    (staging / "data").mkdir(parents=True)
    layout = None
    if len(sample_encodings(shards)) > 1:
        layout = repack_by_encoding(shards, staging / "data", manifest["sef"]["config"]["shard_size"])
    else:
        for path in shards:
            target = staging / "data" / path.name
            try:
                os.link(path, target)  # no copy of possibly terabytes when staging on the same filesystem
            except OSError:
                shutil.copy2(path, target)
    shutil.copy2(manifest_path, staging / MANIFEST_FILE)
    warnings = []
    try:
        make_preview(build_dir, staging / "preview.png", samples=4, tile=256)
        has_preview = True
    except SefError as e:
        warnings.append(f"no preview: {e}")
        has_preview = False
    if layout is not None:
        warnings.append(
            "the build mixes encodings (" + ", ".join(f"{n} {e}" for e, n in sorted(layout.items())) + "); the Hub "
            "copy is re-packed into one config per encoding, since `datasets` needs one extension per field"
        )
    card = make_card(manifest, repo_id, license, layout, has_preview)
    card.save(staging / "README.md")
    files = staged_files(staging)
    return Staged(folder=staging, files=files, card=card, warnings=warnings)


def publish(
    build_dir: str | Path,
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    license: str = "unknown",
    staging: str | Path | None = None,
    dry_run: bool = False,
    api=None,
) -> Staged:
    """Stage and upload a build to the dataset repo ``repo_id``. ``dry_run``: stage only."""
    check_repo_id(repo_id)
    staging = Path(staging) if staging else Path(build_dir) / ".publish"
    staged = stage(build_dir, staging, repo_id=repo_id, license=license)
    if not dry_run:
        upload_folder(staging, repo_id, repo_type="dataset", private=private, revision=revision, api=api,
                      message=f"sefdata publish ({len(staged.files)} files)")  # fmt: skip
    return staged
