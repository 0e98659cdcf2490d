"""The committed benchmark results are published with the repository: no path of the machine that wrote them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sefcore.privacy import json_local_paths

RESULTS = sorted((Path(__file__).resolve().parents[1] / "bench" / "results").glob("*.json"))


def test_there_are_results_to_check():
    assert len(RESULTS) >= 5, [p.name for p in RESULTS]


@pytest.mark.parametrize("path", RESULTS, ids=lambda p: p.name)
def test_results_name_no_local_path(path):
    assert json_local_paths(json.loads(path.read_text())) == []


def test_the_check_finds_a_local_path():
    assert json_local_paths({"detector": {"backbone_id": "/work/shared/assets/weights/mobilenet_v2_1.0_224"}})
