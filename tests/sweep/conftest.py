"""The sweep tests' fixtures: a throwaway PostgreSQL server (:mod:`postgres`, next to this file)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import postgres
import pytest


@pytest.fixture(scope="module")
def pg() -> Iterator[Callable[[str], str]]:
    """``pg(name)``: the URL of a new empty database on a server of this module's tests."""
    why = postgres.missing()
    if why:
        pytest.skip(why)
    with postgres.server() as url:
        yield lambda name: postgres.create_database(url, name)
