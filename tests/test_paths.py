"""docs/compatibility.md's table of every path stays true: each test a row names exists (its file, its function, and
the parametrize id it names)."""

from __future__ import annotations

import re

from tools.testing import ROOT

PAGE = ROOT / "docs" / "compatibility.md"


def rows() -> list[str]:
    section = PAGE.read_text().split("## Every path", 1)[1].split("\n## ", 1)[0]
    return [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| path")]


def named_tests(row: str) -> list[tuple[str, str, list[str]]]:
    """(file, function, parametrize ids) of each test a row names; a bare `[id]` continues the test before it."""
    found: list[tuple[str, str, list[str]]] = []
    for path, function, ids, bare in re.findall(r"`(?:(tests/\w+\.py)::(\w+)((?:\[[^\]]+\])?)|(\[[^\]]+\]))`", row):
        if bare:
            found[-1][2].append(bare[1:-1])
        else:
            found.append((path, function, [ids[1:-1]] if ids else []))
    return found


def test_the_table_names_tests_for_most_paths():
    tested = [row for row in rows() if named_tests(row)]
    assert len(rows()) >= 35 and len(tested) >= 25, (len(rows()), len(tested))
    for row in rows():
        assert named_tests(row) or "untested" in row, row  # a row without a test says why


def test_every_test_a_row_names_exists():
    for row in rows():
        for path, function, ids in named_tests(row):
            source = (ROOT / path).read_text()
            assert re.search(rf"^def {function}\(", source, flags=re.MULTILINE), f"{path}::{function}"
            for test_id in ids:  # a parametrize id: a key or value the test's parameters list
                assert f'"{test_id}"' in source, f"{path}::{function}[{test_id}]"
