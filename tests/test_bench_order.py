"""bench/order.py: the benchmarks' run order puts every variant in every position equally often."""

from __future__ import annotations

from collections import Counter

import pytest

from bench.order import check_repeats, orders, period, warm_up


@pytest.mark.parametrize("count", [1, 2, 3, 4, 5, 6, 7])
@pytest.mark.parametrize("rounds", [1, 2, 3])
def test_every_variant_takes_every_position_equally_often(count: int, rounds: int) -> None:
    variants = [f"v{i}" for i in range(count)]
    rows = orders(variants, count * rounds)
    assert all(sorted(row) == variants for row in rows)  # each repeat runs each variant once
    positions = Counter((position, variant) for row in rows for position, variant in enumerate(row))
    assert positions == {(p, v): rounds for p in range(count) for v in variants}


@pytest.mark.parametrize("count", [2, 3, 4, 5, 6, 7])
def test_every_period_each_variant_follows_each_other_equally_often(count: int) -> None:
    rows = orders(list(range(count)), period(count))
    pairs = Counter((a, b) for row in rows for a, b in zip(row, row[1:], strict=False))
    expected = 1 if count % 2 == 0 else 2
    assert pairs == {(a, b): expected for a in range(count) for b in range(count) if a != b}


def test_two_variants_alternate_abba() -> None:
    assert orders(["stock", "lf-multilr"], 4) == [["stock", "lf-multilr"], ["lf-multilr", "stock"]] * 2


def test_three_variants_no_fixed_first() -> None:
    rows = orders(["stock", "every step", "every 10"], 3)
    assert [row[0] for row in rows] == ["stock", "every step", "every 10"]


@pytest.mark.parametrize(("repeats", "count"), [(5, 3), (0, 2), (3, 2), (1, 0)])
def test_unbalanced_repeats_are_refused(repeats: int, count: int) -> None:
    with pytest.raises(ValueError, match="multiple of"):
        orders(list(range(count)), repeats)
    assert check_repeats(repeats, count) is not None


def test_check_repeats_accepts_a_multiple() -> None:
    assert check_repeats(6, 3) is None


def test_warm_up_runs_each_variant_once() -> None:
    seen: list[str] = []
    warm_up(["a", "b", "c"], seen.append)
    assert sorted(seen) == ["a", "b", "c"]
