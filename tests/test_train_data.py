"""Streaming paired data: shard resolution, domain fields, paired augmentation, rank/worker splits, resume skips."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch
import train_helpers
from train_helpers import write_contract_shards

from sefmodel.model.preprocess import ImageProcessor
from sefmodel.train.augment import AugmentConfig, apply, sample_params
from sefmodel.train.data import (
    EvalStream,
    Pair,
    PairStream,
    batched,
    check_split,
    collate,
    data_workers,
    decode_pairs,
    draw_pairs,
    iter_samples,
    make_loader,
    resolve_domains,
    resolve_shards,
    select_shards,
    shuffle,
    skip,
)

shards, tiny_gens = train_helpers.shards, train_helpers.tiny_gens  # fixtures
MEAN = STD = (0.5, 0.5, 0.5)
ALL_ON = AugmentConfig(flip_p=1, resize_p=1, color_p=1, grayscale_p=0, blur_p=1, noise_p=1, jpeg_p=1)


PROCESSOR = ImageProcessor(size=32, image_mean=MEAN, image_std=STD)


def stream(urls, domains=None, **kw) -> PairStream:
    kw = {"pairs": 2, "processor": PROCESSOR, "shuffle_buffer": 3, **kw}
    return PairStream(urls, domains or {"recon": ["vae"], "sr": ["sr"]}, **kw)


def take(it, n):
    return list(itertools.islice(it, n))


def test_resolve_shards_folder_patterns_and_manifest_fields(shards):
    folder = shards["train"]
    by_folder = resolve_shards([str(folder)])
    assert len(by_folder) == 8 and by_folder.fields == ["real", "taesd", "sr"]  # from manifest.json
    assert [u.rsplit("/", 1)[-1] for u in by_folder.urls] == [f"shard-{i:06d}.tar" for i in range(8)]
    brace = resolve_shards([f"{folder}/shard-{{000000..000003}}.tar"])
    assert [u.rsplit("/", 1)[-1] for u in brace.urls] == [f"shard-{i:06d}.tar" for i in range(4)]
    assert brace.fields[0] == "real" and sorted(brace.fields) == ["real", "sr", "taesd"]  # read from a sample
    assert len(resolve_shards([f"{folder}/*.tar"])) == 8
    with pytest.raises(FileNotFoundError, match="not a folder"):
        resolve_shards([str(folder / "nope.tar")])


def test_a_domain_without_its_fields_is_an_error_listing_the_fields_present():
    assert resolve_domains({"recon": ["vae", "taesd"], "sr": ["sr"]}, ["recon"], ["real", "taesd", "sr"]) == {
        "recon": ["taesd"]
    }
    assert resolve_domains({"recon": ["vae"], "sr": ["sr"]}, None, ["real", "taesd", "sr"]) == {"sr": ["sr"]}
    with pytest.raises(
        ValueError, match=r"domain 'recon' uses fields \['vae', 'ddim'\], but the shards hold taef2, sr"
    ):
        resolve_domains({"recon": ["vae", "ddim"], "sr": ["sr"]}, ["recon"], ["real", "taef2", "sr"])
    with pytest.raises(ValueError, match="unknown domain 'gan'"):
        resolve_domains({"recon": ["vae"]}, ["gan"], ["real", "vae"])


def test_real_and_fake_get_the_same_augmentation(tmp_path):
    # fakes are byte-identical copies of the real: after augmentation they must still equal it exactly, with every
    # operation on (resize, crop, flip, colour, blur, noise, JPEG)
    urls = write_contract_shards(tmp_path, 2, 4, identical=True)
    batches = take(iter(stream(urls, augment=ALL_ON)), 4)
    for b in batches:
        n = len(b["keys"])
        assert torch.equal(b["pixels"][:n], b["pixels"][n:])
        assert b["labels"].tolist() == [0.0] * n + [1.0] * n
    # ...and the augmentation differs between samples (a real draw, not a constant)
    flat = torch.cat([b["pixels"][: len(b["keys"])] for b in batches])
    assert not torch.equal(flat[0], flat[1])


def test_augment_params_replay_exactly_and_off_is_a_plain_crop():
    rng = np.random.default_rng(0)
    from PIL import Image

    image = Image.fromarray(np.random.default_rng(1).integers(0, 255, (50, 60, 3), dtype=np.uint8))
    params = sample_params(ALL_ON, rng)
    assert np.array_equal(apply(image, params, 32), apply(image.copy(), params, 32))
    plain = sample_params(AugmentConfig.off(), np.random.default_rng(3))
    out = apply(image, plain, 32)
    x0, y0 = round(plain.crop_x * 28), round(plain.crop_y * 18)
    assert np.array_equal(out, np.asarray(image)[y0 : y0 + 32, x0 : x0 + 32])  # native pixels, no resampling
    with pytest.raises(ValueError, match="probability"):
        AugmentConfig(jpeg_p=1.5)
    with pytest.raises(ValueError, match="jpeg_quality"):
        AugmentConfig(jpeg_quality=[90, 50])


def test_fakes_are_drawn_from_the_domains_fields(tmp_path):
    urls = write_contract_shards(tmp_path, 2, 6, fakes=("vae", "taesd", "sr"))
    domains = {"recon": ["vae", "taesd"], "sr": ["sr"]}
    real = {}
    fields = {}
    for url in urls:
        for s in iter_samples(url):
            real[s["__key__"]] = s
    for b in take(iter(stream(urls, domains, augment=AugmentConfig.off(), pairs=3)), 8):
        n = len(b["keys"])
        for i, key in enumerate(b["keys"]):
            d = int(b["domain"][n + i])
            assert int(b["domain"][i]) == d
            fields.setdefault(list(domains)[d], set()).add(key)
    assert set(fields) == {"recon", "sr"}


def test_ranks_and_workers_read_disjoint_shards_and_too_few_shards_is_an_error(tmp_path):
    urls = write_contract_shards(tmp_path, 4, 3)
    seen = {}
    for rank in range(2):
        for worker in range(2):
            s = stream(urls, rank=rank, world=2)
            keys = {x["__key__"] for x in take(s.raw_samples(worker, 2), 12)}
            seen[(rank, worker)] = keys
            assert len(keys) == 3  # resampled: the one shard of this (rank, worker), over and over
    assert len(set().union(*seen.values())) == 12  # all disjoint, all covered
    with pytest.raises(ValueError, match=r"4 training shard\(s\) cannot feed 2 rank\(s\) x 3 data worker"):
        check_split(4, 2, 3)
    with pytest.raises(ValueError, match="cannot feed"):
        next(iter(make_loader(stream(urls, world=5), 0)))


def test_data_workers_are_lowered_to_the_shards_per_rank_and_fewer_shards_than_ranks_is_an_error():
    assert data_workers(2, 1, 4) == 2  # a build of 2 shards trains with 2 workers, not the default 4
    assert data_workers(5, 2, 4) == 2  # rank 0 holds 3 shards, rank 1 only 2: every worker of every rank is fed
    assert data_workers(8, 2, 4) == 4
    assert data_workers(1, 1, 4) == 1
    assert data_workers(3, 1, 0) == 0  # in the main process stays so
    for workers in (0, 4):
        with pytest.raises(ValueError, match=r"3 training shard\(s\) cannot feed 4 rank\(s\) x 1 .*Use fewer ranks"):
            data_workers(3, 4, workers)


@pytest.mark.parametrize("workers", [0, 2])
def test_a_resumed_stream_continues_exactly_where_the_first_one_was(tmp_path, workers):
    urls = write_contract_shards(tmp_path, 4, 3)
    full = take(iter(make_loader(stream(urls, augment=ALL_ON), workers)), 7)
    resumed = take(iter(make_loader(stream(urls, augment=ALL_ON, skip_batches=3), workers)), 4)
    for a, b in zip(full[3:], resumed, strict=True):
        assert a["keys"] == b["keys"] and torch.equal(a["pixels"], b["pixels"])
    other_segment = take(iter(make_loader(stream(urls, augment=ALL_ON, segment=2), workers)), 2)
    assert [b["keys"] for b in other_segment] != [b["keys"] for b in full[:2]]


class Untouchable:
    """A sample that fails the test if any stage looks inside it."""

    def __getitem__(self, key):
        raise AssertionError("a skipped sample was read")


def test_the_skip_stage_keeps_stream_positions_and_never_opens_what_it_skips():
    items = [Untouchable(), Untouchable(), "c", "d"]
    assert list(skip(items, 2)) == [(2, "c"), (3, "d")]
    assert list(skip(iter("abc"), 0)) == [(0, "a"), (1, "b"), (2, "c")]
    assert list(skip("ab", 5)) == []


def test_a_shuffle_is_seeded_loses_nothing_and_holds_only_its_buffer():
    def run(seed, items=range(20)):
        return list(shuffle(items, 4, np.random.default_rng(seed)))

    assert run(0) == run(0) and run(0) != run(1) and sorted(run(0)) == list(range(20))
    pulled = []

    def source():
        for i in range(20):
            pulled.append(i)
            yield i

    first = next(shuffle(source(), 4, np.random.default_rng(0)))
    assert len(pulled) == 5 and first in range(5)  # the buffer's 4, then the one that displaced the first out
    assert run(0, range(3)) != [] and sorted(run(0, range(3))) == [0, 1, 2]  # shorter than the buffer: flushed


def test_pair_draws_depend_on_the_position_alone_so_a_skip_resumes_them_exactly():
    samples = [{"__key__": f"k{i}"} for i in range(40)]
    domains = {"recon": ["vae", "taesd"], "sr": ["sr"]}

    def draws(start):
        pairs = draw_pairs(skip(samples, start), domains, ALL_ON, lambda i: np.random.default_rng([7, i]))
        return [(p.key, p.domain, p.field, p.params) for p in pairs]

    assert draws(13) == draws(0)[13:]
    assert {d[2] for d in draws(0)} == {"vae", "taesd", "sr"}  # every field of every domain is drawn


def test_batched_and_collate_put_reals_first_and_drop_an_incomplete_batch():
    assert list(batched(range(7), 3)) == [[0, 1, 2], [3, 4, 5]]
    params = sample_params(AugmentConfig.off(), np.random.default_rng(0))
    pairs = [Pair({"__key__": f"k{i}"}, i, "vae", params, torch.full((3, 2, 2), i), torch.full((3, 2, 2), 10 + i))
             for i in range(2)]  # fmt: skip
    (batch,) = collate([pairs])
    assert batch["pixels"][:, 0, 0, 0].tolist() == [0, 1, 10, 11] and batch["keys"] == ["k0", "k1"]
    assert batch["labels"].tolist() == [0, 0, 1, 1] and batch["domain"].tolist() == [0, 1, 0, 1]
    assert "keys" not in next(collate([pairs], with_keys=False))


def test_select_shards_splits_by_rank_then_worker_and_decode_refuses_a_fake_of_another_size(tmp_path):
    urls = [f"s{i}" for i in range(8)]
    assert select_shards(urls, 1, 2, 1, 2) == ["s3", "s7"]
    with pytest.raises(ValueError, match="cannot feed"):
        select_shards(urls, 0, 3, 0, 3)
    (url,) = write_contract_shards(tmp_path / "a", 1, 1)
    (other,) = write_contract_shards(tmp_path / "b", 1, 1, size=(30, 30))
    sample = next(iter_samples(url)) | {"sr.png": next(iter_samples(other))["sr.png"]}
    params = sample_params(AugmentConfig.off(), np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"sr is \(30, 30\), real is \(40, 36\)"):
        next(decode_pairs([Pair(sample, 0, "sr", params)]))


def test_eval_stream_scores_every_sample_once_over_ranks_with_all_fakes(tmp_path):
    urls = write_contract_shards(tmp_path, 1, 5, fakes=("vae", "sr"))
    domains = {"recon": ["vae"], "sr": ["sr"]}
    counts = []
    for rank in range(3):  # more ranks than shards: split by sample, never a hang
        batches = list(EvalStream(urls, domains, batch=4, processor=PROCESSOR, rank=rank, world=3))
        labels = torch.cat([b["labels"] for b in batches]) if batches else torch.zeros(0)
        counts.append(len(labels))
        assert (labels == 0).sum() * 2 == (labels == 1).sum()  # each real with both fakes
    assert sum(counts) == 5 * 3


def test_manifest_fields_are_what_the_build_wrote(shards):
    manifest = json.loads((shards["train"] / "manifest.json").read_text())
    assert manifest["sef"]["fields"] == ["real", "taesd", "sr"]


def test_url_sources_go_through_fsspec_like_hf_urls(shards):
    # file:// takes the same code path as hf:// and http(s):// (fsspec), without a network
    folder = f"file://{shards['train']}"
    by_folder = resolve_shards([folder])  # manifest.json read through fsspec
    assert len(by_folder) == 8 and by_folder.urls[0].startswith("file://") and by_folder.fields[0] == "real"
    by_glob = resolve_shards([f"{folder}/shard-00000[0-3].tar"])
    assert [u.rsplit("/", 1)[-1] for u in by_glob.urls] == [f"shard-{i:06d}.tar" for i in range(4)]
    keys = [s["__key__"] for s in iter_samples(by_glob.urls[0])]
    assert keys == [s["__key__"] for s in iter_samples(str(shards["train"] / "shard-000000.tar"))]
