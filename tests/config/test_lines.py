"""The line scanner finds where tables and keys are written, which tomllib does not say."""

from __future__ import annotations

import tomllib

import pytest

from strongroom.config.lines import KeyPath, index_lines, key_path

DOCUMENT = """\
top = 1                                   # 1
[clients.dracula]                         # 2
sources = [                               # 3
  "/etc",                                 # 4
  "[not.a.header]",                       # 5
]                                         # 6
retention = { daily = 7 }                 # 7
note = \"\"\"                                # 8
[clients.fake]                            # 9
sources = 1                               # 10
\"\"\"                                       # 11
[[clients.dracula.requires]]              # 12
kind = "marker"                           # 13
[[clients.dracula.requires]]              # 14
kind = 'fresh-file' # ] [                 # 15
max_age = "20h"                           # 16
[clients."web.01".jobs.'db']              # 17
sub.key = 2                               # 18
[[clients."web.01".jobs.'db'.hooks]]      # 19
command = [["a"],                         # 20
  ["b"]]                                  # 21
[[clients."web.01".jobs.'db'.hooks]]      # 22
when = "after"                            # 23
"""


def test_the_document_is_valid_toml() -> None:
    assert tomllib.loads(DOCUMENT)["clients"]["dracula"]["note"].startswith(" ")


@pytest.mark.parametrize(
    ("path", "line"),
    [
        (("top",), 1),
        (("clients", "dracula"), 2),
        (("clients", "dracula", "sources"), 3),
        (("clients", "dracula", "sources", 1), 3),
        (("clients", "dracula", "retention", "daily"), 7),
        (("clients", "dracula", "note"), 8),
        (("clients", "dracula", "requires"), 12),
        (("clients", "dracula", "requires", 0), 12),
        (("clients", "dracula", "requires", 0, "kind"), 13),
        (("clients", "dracula", "requires", 1), 14),
        (("clients", "dracula", "requires", 1, "kind"), 15),
        (("clients", "dracula", "requires", 1, "max_age"), 16),
        (("clients", "dracula", "requires", 1, "min_size"), 14),
        (("clients", "web.01"), 17),
        (("clients", "web.01", "jobs", "db"), 17),
        (("clients", "web.01", "jobs", "db", "sub"), 18),
        (("clients", "web.01", "jobs", "db", "sub", "key"), 18),
        (("clients", "web.01", "jobs", "db", "hooks", 0, "command"), 20),
        (("clients", "web.01", "jobs", "db", "hooks", 1), 22),
        (("clients", "web.01", "jobs", "db", "hooks", 1, "when"), 23),
        (("clients", "fake"), 2),  # not a table: inside a string; falls back to "clients"
        (("nothing",), None),
    ],
)
def test_each_key_is_found_on_its_line(path: KeyPath, line: int | None) -> None:
    assert index_lines(DOCUMENT).line_of(path) == line


def test_a_table_defined_after_its_subtable_is_found_at_its_own_header() -> None:
    lines = index_lines("[a.b.c]\nx = 1\n[a.b]\ny = 2\n")
    assert lines.line_of(("a", "b")) == 3
    assert lines.line_of(("a", "b", "c", "x")) == 2


def test_nested_arrays_of_tables_count_within_their_parent() -> None:
    text = "[[a]]\n[[a.b]]\n[[a.b]]\n[[a]]\n[[a.b]]\nk = 1\n"
    lines = index_lines(text)
    assert lines.line_of(("a", 0, "b", 1)) == 3
    assert lines.line_of(("a", 1)) == 4
    assert lines.line_of(("a", 1, "b", 0, "k")) == 6


@pytest.mark.parametrize(
    ("path", "text"),
    [
        (("clients", "dracula", "requires", 0, "max_age"), "clients.dracula.requires[0].max_age"),
        (("clients", "web.01", "port"), 'clients."web.01".port'),
        (("clients", "bad name"), 'clients."bad name"'),
        (("domain",), "domain"),
        ((), ""),
    ],
)
def test_a_key_path_reads_like_toml(path: KeyPath, text: str) -> None:
    assert key_path(path) == text
