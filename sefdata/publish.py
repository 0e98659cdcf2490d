"""``sefdata publish``: shards + manifest + a dataset card → a Hugging Face Hub dataset repo.

The folder that is uploaded is staged first (and is all that ``--dry-run`` writes):

    README.md         dataset card: YAML metadata (licence, task, size category, sources, ``configs`` data_files so
                      the Hub viewer and ``load_dataset("USER/NAME")`` find the shards) and how the data was made
    manifest.json     the build's manifest (config, generators with ids/revisions/hashes, totals, shard index)
    preview.png       `sefdata preview` of the first samples
    data/shard-*.tar  the shards (hard links to the build's files where possible, else copies)

A ``match`` build over JPEGs *and* PNGs keeps each shard to one encoding (:mod:`sefdata.plan`), and the webdataset
loader of ``datasets`` needs one extension per field, so such a build is staged as ``data/jpg/shard-*.tar`` and
``data/png/shard-*.tar`` (the same files), one ``configs`` entry (``jpg``, ``png``) each. The card declares the
samples' features, so the Hub reads the schema instead of inferring it. Nothing that holds a local path of the
building machine is uploaded: the publish core (:mod:`sefdata.upload`, shared with ``sefmodel publish``) scans
every staged text file and every sample record first.

Uploading uses ``HfApi.upload_folder``, which commits large folders in several batches and resumes an interrupted
upload when run again. The token comes from the usual Hub login or ``HF_TOKEN`` and is never printed.
"""

from __future__ import annotations

import json
import os
import shutil
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import DatasetCard, DatasetCardData

from sefcore.errors import SefError
from sefcore.hub import check_repo_id, staged_files
from sefcore.privacy import public_params
from sefdata.preview import make_preview
from sefdata.shards import MANIFEST_FILE, Manifest, field_keys, iter_samples
from sefdata.upload import empty_folder, upload_staged

# what a build that still records a local path can do (builds before this version recorded generator model folders
# and ../ sources as given)
REBUILD_HINT = "rebuild with this version, which records sources and model folders by name (or fix the file by hand)"

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


def shard_encodings(manifest: Manifest, build_dir: Path) -> dict[str, list[Path]]:
    """The build's shards by the encoding of their samples (one per shard since format_version 2)."""
    by_encoding: dict[str, list[Path]] = defaultdict(list)
    for entry in manifest.shards:
        encoding = entry.encoding
        if encoding is None or "," in encoding:
            raise SefError(
                f"{entry.url} was built before shards kept one encoding each (or mixes them): `datasets` "
                "cannot load it as it is; rebuild into a new --out with this version"
            )
        by_encoding[encoding].append(build_dir / entry.url)
    return dict(by_encoding)


def sample_features(shard: Path):
    """The ``datasets`` features of a shard's samples: images for the image fields and, for ``json``, the schema
    of its first sample's record, which every sample of a build shares (same keys and types, no nulls)."""
    import datasets
    import pyarrow as pa

    first = next(iter_samples(str(shard)))
    fields = list(field_keys(first).values())
    features = datasets.Features.from_arrow_schema(pa.Table.from_pylist([{"json": json.loads(first["json"])}]).schema)
    for field in fields:
        if field != "json":
            features[field] = datasets.Image()
    return datasets.Features({f: features[f] for f in fields})


def _generator_lines(generators: dict) -> list[str]:
    lines = []
    for field, info in sorted(generators.items()):
        params = {k: v for k, v in public_params(info.get("params", {})).items() if v is not None}
        model = {k: v for k, v in info.get("model", {}).items() if v is not None}
        lines.append(f"- `{field}` — generator `{info['generator']}`; parameters `{json.dumps(params)}`; "
                     f"model `{json.dumps(model)}`")  # fmt: skip
    return lines


def _made_by(provenance: dict | None) -> list[str]:
    """The card's line naming the command and releases that made the build (its ``provenance``), if recorded."""
    if not provenance or not provenance.get("command"):
        return []
    packages = provenance.get("packages") or {}
    releases = ", ".join(f"{name} {packages[name]}" for name in ("sef-toolkit", "torch", "diffusers", "spandrel")
                         if packages.get(name))  # fmt: skip
    return [f"- Made with `{provenance['command']}` ({releases}); the rest of what made it is under `provenance` in "
            "`manifest.json`."]  # fmt: skip


def make_card(
    manifest: Manifest,
    repo_id: str,
    license: str,
    layout: dict[str, int] | None,
    has_preview: bool,
    features: dict | None = None,
) -> DatasetCard:
    """``layout``: samples per encoding when the build has several, else None. ``features``: per config name."""
    totals, config = manifest.totals, manifest.config
    sources = [s for s in config["sources"] if s.count("/") == 1 and not Path(s).exists()]  # Hub dataset ids
    data = DatasetCardData(
        license=license,
        task_categories=["image-classification"],
        size_categories=[size_category(totals.written)],
        source_datasets=sources or None,
        pretty_name=repo_id.split("/")[-1],
        tags=["ai-generated-image-detection", "deepfake-detection", "webdataset", "sef-toolkit"],
        configs=[{"config_name": "default", "data_files": [{"split": "train", "path": "data/shard-*.tar"}]}]
        if layout is None
        else [{"config_name": ext, "data_files": [{"split": "train", "path": f"data/{ext}/shard-*.tar"}]}
              for ext in sorted(layout)],
        # the schema, declared: the Hub and `datasets` read it instead of inferring it from the first samples
        dataset_info=[{"config_name": name, "features": f._to_yaml_list()} for name, f in (features or {}).items()]
        or None,
    )  # fmt: skip
    fields = manifest.fields
    failed = ", ".join(f"{k}: {v}" for k, v in totals.failed.items()) or "none"
    if layout is None:
        where = f"{len(manifest.shards)} WebDataset shards (`data/shard-*.tar`)"
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
        f"- {totals.written} samples in {where}, from {totals.inputs} inputs; skipped by reason: {failed}.",
        f"- Fields per sample: {', '.join(f'`{f}`' for f in fields)} and `json` (source, sha256, crop box, "
        "conversions, per-generator seed, parameters, output sha256 and PSNR against the real).",
        "- Each fake is encoded like its real (`match`: JPEG reals with their own quantisation tables and chroma "
        "subsampling) unless the policy below says otherwise.",
        "",
        "## How it was made",
        "",
        *_generator_lines(manifest.generators),
        "",
        f"- Alignment: one crop shared by the real and its fakes (`crop={config.get('crop')}`, "
        f"`max_side={config.get('max_side')}`); EXIF orientation applied; RGB.",
        f"- Encoding policy `{config['format']}`: with `match`, JPEG reals give JPEG fakes with the real's own "
        "quantisation tables and chroma subsampling, other reals give PNG; the real is re-encoded the same way.",
        f"- Seed {config['seed']}; config hash `{manifest.config_hash}`; full config, tool and library versions and "
        "model revisions in `manifest.json`.",
        *_made_by(manifest.provenance),  # manifests written before provenance existed have none
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
    manifest = Manifest.load(build_dir)
    if manifest.totals is None:
        raise SefError(f"{MANIFEST_FILE} of {str(build_dir)!r} is a bare shard index, not a `sefdata build` manifest")
    shards = [build_dir / s.url for s in manifest.shards]
    missing = [p.name for p in shards if not p.is_file()]
    if missing:
        raise SefError(f"shards listed in the manifest are missing: {', '.join(missing[:5])}")
    by_encoding = shard_encodings(manifest, build_dir)
    (empty_folder(staging) / "data").mkdir()
    layout = None
    if len(by_encoding) > 1:  # one folder and config per encoding: `datasets` wants one extension per field
        layout = {ext: sum(e.nsamples for e in manifest.shards if e.encoding == ext) for ext in by_encoding}
    for ext, paths in by_encoding.items():
        folder = staging / "data" / (ext if layout else "")
        folder.mkdir(parents=True, exist_ok=True)
        for path in paths:
            try:
                os.link(path, folder / path.name)  # no copy of possibly terabytes when staging on the same filesystem
            except OSError:
                shutil.copy2(path, folder / path.name)
    features = {(ext if layout else "default"): sample_features(paths[0]) for ext, paths in by_encoding.items()}
    shutil.copy2(build_dir / MANIFEST_FILE, staging / MANIFEST_FILE)  # as written, keys Manifest does not name included
    warnings = []
    try:
        make_preview(build_dir, staging / "preview.png", samples=4, tile=256)
        has_preview = True
    except SefError as e:
        warnings.append(f"no preview: {e}")
        has_preview = False
    card = make_card(manifest, repo_id, license, layout, has_preview, features)
    card.save(staging / "README.md")
    return Staged(folder=staging, files=staged_files(staging), card=card, warnings=warnings)


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
    """Stage a build, scan it and upload it to the dataset repo ``repo_id``. ``dry_run``: stage and scan only."""
    check_repo_id(repo_id)
    staging = Path(staging) if staging else Path(build_dir) / ".publish"
    staged = stage(build_dir, staging, repo_id=repo_id, license=license)
    staged.files = upload_staged(staging, repo_id, repo_type="dataset", command="sefdata publish", hint=REBUILD_HINT,
                                 private=private, revision=revision, dry_run=dry_run, api=api)  # fmt: skip
    return staged
