"""The one "n/a" formatter and the one Markdown table builder, and the tables they make in results.md and the
model card: a name holding ``|`` or a line break stays in its cell."""

from __future__ import annotations

import re

import numpy as np
from conftest import photo_like
from conftest_model import randomize_trained, tiny_detector
from PIL import Image

from sefcore.markdown import NA, fmt, md_cell, md_table
from sefmodel.evaluation.evaluate import EvalConfig, evaluate
from sefmodel.model_card import make_aeroblade_card, make_model_card

UNESCAPED_PIPE = re.compile(r"(?<!\\)\|")


def _cells(line: str) -> list[str]:
    """A Markdown table row's cells, unescaped, as a GitHub-flavoured Markdown reader splits them."""
    assert line.startswith("|") and line.endswith("|"), line
    return [c.strip().replace("\\|", "|") for c in UNESCAPED_PIPE.split(line)[1:-1]]


def _tables(text: str) -> list[list[list[str]]]:
    """Every table in ``text`` as rows of cells (the ``|---|`` line left out)."""
    tables, current = [], []
    for line in [*text.splitlines(), ""]:
        if line.startswith("|"):
            current.append(_cells(line))
        elif current:
            tables.append([row for row in current if set("".join(row)) != {"-"}])
            current = []
    return tables


def _assert_rectangular(text: str) -> list[list[list[str]]]:
    tables = _tables(text)
    assert tables
    for table in tables:
        assert {len(row) for row in table} == {len(table[0])}, table
    return tables


def test_fmt_reads_n_a_for_a_missing_value_and_keeps_counts_whole():
    assert fmt(None) == NA == "n/a"
    assert fmt(None, 4) == "n/a"
    assert fmt(0.5) == "0.500" and fmt(0.12345, 4) == "0.1235" and fmt(1.0, 2) == "1.00"
    assert fmt(12) == "12"  # a count, not 12.000
    assert fmt(np.float64(0.25)) == "0.250"


def test_md_table_escapes_pipes_and_line_breaks_in_every_cell():
    assert md_cell("a|b") == "a\\|b" and md_cell("one\ntwo\r\nthree\rfour") == "one two three four"
    text = md_table(["name", "x|y"], [["a|b", 1], ["two\nlines", None]])
    assert text.splitlines() == ["| name | x\\|y |", "|---|---|", "| a\\|b | 1 |", "| two lines | None |"]
    assert _assert_rectangular(text) == [[["name", "x|y"], ["a|b", "1"], ["two lines", "None"]]]


def _results(title: str) -> dict:
    metrics = {"ap": 0.75, "auroc": None, "accuracy": 0.5, "real_acc": 0.25, "fake_acc": 0.75}
    return {"benchmarks": {"b": {"title": title, "metrics": metrics}}}


def test_a_benchmark_title_with_a_pipe_stays_in_its_cell_of_the_model_card():
    card = str(make_model_card(tiny_detector(), "me/x", "mit", [], _results("GenImage | SD 1.4\n(val)")))
    (table,) = _assert_rectangular(card)
    assert table == [
        ["benchmark", "AP", "AUROC", "accuracy", "real acc", "fake acc"],
        ["GenImage | SD 1.4 (val)", "0.750", "n/a", "0.500", "0.250", "0.750"],
    ]


def test_the_aeroblade_card_builds_the_same_table():
    from types import SimpleNamespace

    processor = SimpleNamespace(size=32, crop="center", crops_per_side=1)
    detector = SimpleNamespace(
        config=SimpleNamespace(autoencoders=[], fit=None),
        processor=processor,
        describe=lambda: {"description": "distance of a TAESD reconstruction"},
    )
    (table,) = _assert_rectangular(str(make_aeroblade_card(detector, "me/a", "mit", _results("a|b"))))
    assert table[1][0] == "a|b"


def test_a_benchmark_name_with_a_pipe_keeps_every_results_table_rectangular(tmp_path):
    for label, folder in enumerate(("real", "fake")):
        for i in range(3):
            path = tmp_path / "bench" / folder / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            pixels = photo_like(40, 36, seed=10 * label + i)
            Image.fromarray(pixels if not label else (pixels // 2 + 60).astype(np.uint8)).save(path)
    config = EvalConfig(benches=[f"a|b={tmp_path / 'bench'}", f"c={tmp_path / 'bench'}"], perturb=["jpeg:75"],
                        plots=False)  # fmt: skip
    evaluate(randomize_trained(tiny_detector()), config, tmp_path / "eval", log=lambda *a: None)
    tables = _assert_rectangular((tmp_path / "eval" / "results.md").read_text())
    summary, robustness = tables[0], tables[-1]
    assert [row[0] for row in summary[1:3]] == ["a|b", "c"]
    assert robustness[0] == ["value", "a|b bal. acc / AP", "c bal. acc / AP", "mean bal. acc / AP"]
