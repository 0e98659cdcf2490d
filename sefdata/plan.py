"""Shard planning: the listing of a build's inputs cut into shards before any image is read (DESIGN.md §4).

Inputs are listed in a deterministic order (:mod:`sefdata.sources`) and cut into groups of ``shard_size``; group i
is shard i, built by rank ``i % world``. Under the ``match`` encoding a JPEG source gives JPEG files and any other
source PNG files, and Hugging Face ``datasets`` loads a WebDataset tar only when all its samples carry the same
file types; so under ``match`` the JPEG sources (told by their first bytes, the JPEG start-of-image marker) are
planned into shards of their own, first, and the other sources into the shards after them, each group in listing
order. Every shard then holds one encoding and loads as it is.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from sefdata.sources import SourceItem, is_jpeg, peek_item


@dataclass
class ShardPlan:
    index: int
    items: list[SourceItem]
    group: str | None  # "jpeg" or "other" under `match` (its sources' kind); None when one encoding serves all


def plan_sha256(plans: Sequence[ShardPlan]) -> str:
    """The whole plan: every shard's inputs (their keys, one per source id) in order. Every shard's stats record the
    plan it was built from, so shards of two listings (a re-run after files were added, removed or renamed, or ranks
    that saw different files) are told apart before a manifest joins them."""
    return hashlib.sha256("\n".join(f"{p.index}\t{item.key}" for p in plans for item in p.items).encode()).hexdigest()


def plan_shards(items: Iterable[SourceItem], shard_size: int, *, by_encoding: bool) -> list[ShardPlan]:
    """Cut ``items`` into shards; with ``by_encoding`` JPEG and other sources go to separate shards."""
    if not by_encoding:
        groups: list[tuple[str | None, list[SourceItem]]] = [(None, list(items))]
    else:
        jpegs: list[SourceItem] = []
        others: list[SourceItem] = []
        for item in items:
            (jpegs if is_jpeg(peek_item(item)) else others).append(item)
        groups = [("jpeg", jpegs), ("other", others)]
    plans: list[ShardPlan] = []
    for group, members in groups:
        for lo in range(0, len(members), shard_size):
            plans.append(ShardPlan(len(plans), members[lo : lo + shard_size], group))
    return plans
