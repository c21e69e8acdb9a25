"""The order in which a benchmark runs its variants, repeat by repeat: balanced, so that order is not the result.

Run in one fixed order, the first variant of every repeat pays what the later ones are spared (a cold cache, a
machine still busy with the last run) or the reverse; on the shared CPU machine stock-first made lf-multilr look 9%
faster than stock. The orders here form a Williams design: repeat ``r`` runs the variants in row ``r``, where
row 0 is ``0, 1, n-1, 2, n-2, ...``, row ``i < n`` adds ``i`` to each index (mod ``n``), and, when ``n`` is odd,
rows ``n .. 2n-1`` are rows ``0 .. n-1`` reversed. So:

- every ``n`` repeats (a Latin square), each variant takes each position once;
- every ``period(n)`` repeats (``n`` if even, ``2n`` if odd), each variant also runs right after each other variant
  equally often.

Two variants give ``AB``, ``BA`` (ABBA). Give every variant the same warm-up as well (``warm_up``): an untimed run of
each before the timed repeats, so that no variant pays the process's first-run costs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

T = TypeVar("T")


def period(variants: int) -> int:
    """Repeats after which positions and predecessors are both balanced."""
    return variants if variants % 2 == 0 else 2 * variants


def _row(variants: int, index: int) -> list[int]:
    first = [0]
    for step in range(1, variants):
        first.append((step + 1) // 2 if step % 2 else variants - step // 2)
    row = [(value + index % variants) % variants for value in first]
    return row[::-1] if index % period(variants) >= variants else row


def orders(variants: Sequence[T], repeats: int) -> list[list[T]]:
    """The variants in their order for each of ``repeats`` repeats. ``repeats`` must be a multiple of the number of
    variants, so that each variant takes each position equally often."""
    count = len(variants)
    if count == 0 or repeats < 1 or repeats % count:
        raise ValueError(
            f"repeats={repeats} for {count} variants: give a positive multiple of {count} so that each variant runs "
            f"in each position equally often ({period(max(count, 1))} or a multiple also balances which runs before "
            "which)"
        )
    return [[variants[i] for i in _row(count, repeat)] for repeat in range(repeats)]


def check_repeats(repeats: int, variants: int) -> str | None:
    """An argparse-ready message when ``repeats`` does not balance ``variants`` variants, else None."""
    try:
        orders(range(variants), repeats)
    except ValueError as error:
        return str(error)
    return None


def warm_up(variants: Sequence[T], run: Callable[[T], object]) -> None:
    """One untimed run of each variant, in the order of the first repeat, before the timed repeats."""
    for variant in orders(variants, len(variants))[0]:
        run(variant)
