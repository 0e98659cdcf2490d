"""The one TOML reader (sefcore.tomlfile): each failure is one SefError line naming the file and what it was read as;
a section's keys join the top level."""

from __future__ import annotations

import pytest

from sefcore.errors import SefError
from sefcore.tomlfile import read_toml


def test_a_section_joins_the_top_level_and_wins_over_it(tmp_path):
    path = tmp_path / "r.toml"
    path.write_text('seed = 1\nout = "a"\n[build]\nseed = 2\n[other]\nx = 3\n')
    assert read_toml(path, "recipe", section="build") == {"seed": 2, "out": "a", "other": {"x": 3}}
    assert read_toml(path, "recipe") == {"seed": 1, "out": "a", "build": {"seed": 2}, "other": {"x": 3}}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "recipe '{p}' not found"),
        (b"seed = = 1\n", "recipe '{p}' is not valid TOML: "),
        (b"name = '\xff'\n", "recipe '{p}' is not UTF-8 text: "),
        ("folder", "cannot read recipe '{p}': "),
    ],
)
def test_every_failure_is_one_line_naming_the_file(tmp_path, content, message):
    path = tmp_path / "r.toml"
    if content == "folder":
        path.mkdir()
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(SefError) as err:
        read_toml(path, "recipe")
    text = str(err.value)
    assert text.startswith(message.format(p=path)) and "\n" not in text.strip()
