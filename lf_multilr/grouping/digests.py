"""What a set of param groups looks like, so that two of them can be compared.

Each module group carries ``layout``: a digest of the (wrapper-free) names of its parameters, in order. Two
optimizers whose groups have the same names, sizes and layouts put the same parameters in the same places, so
optimizer state can move between them. That is checked when a checkpoint's optimizer state is loaded (HF and
torch match groups by position and size only) and, under several processes, between the ranks.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from lf_multilr.grouping.schema import LAYOUT, MODULE


def digest(names: Iterable[str]) -> str:
    """A short, stable digest of parameter names in order."""
    return hashlib.sha1("\n".join(names).encode()).hexdigest()[:16]


def signature(groups: Sequence[Mapping[str, Any]]) -> list[tuple[str | None, int, str | None]]:
    """(name, parameter count, layout) per group; names and layouts are None for groups lf-multilr did not build."""
    return [(group.get("name"), _count(group), group.get(LAYOUT)) for group in groups]


def _count(group: Mapping[str, Any]) -> int:
    return len(group["params"])


def describe(groups: Sequence[Mapping[str, Any]]) -> str:
    """One line that lists the groups, for messages: ``2 groups: unnamed (27), unnamed (31)``."""
    return _listed(signature(groups))


SignatureRow = Sequence[Any]  # (name, count, layout) as :func:`signature` gives it


def first_difference(old: Sequence[SignatureRow], new: Sequence[SignatureRow]) -> tuple[str, int] | None:
    """What first differs between two signatures: ("count", -1), or ("name" | "size" | "layout", group index)."""
    if len(old) != len(new):
        return "count", -1
    for index, ((old_name, old_count, old_layout), (new_name, new_count, new_layout)) in enumerate(
        zip(old, new, strict=True)
    ):
        if old_name != new_name:
            return "name", index
        if old_count != new_count:
            return "size", index
        if old_layout is not None and new_layout is not None and old_layout != new_layout:
            return "layout", index
    return None


def _label(entry: SignatureRow) -> str:
    return str(entry[0] or "unnamed")


def _listed(entries: Sequence[SignatureRow]) -> str:
    count = f"{len(entries)} group{'' if len(entries) == 1 else 's'}"
    return f"{count}: " + ", ".join(f"{_label(entry)} ({entry[1]})" for entry in entries)


def difference(old: Sequence[SignatureRow], new: Sequence[SignatureRow], old_side: str, new_side: str) -> str | None:
    """What first differs between two signatures, in words; None when they agree.

    ``old_side`` / ``new_side`` say where each was seen: ("in the checkpoint", "in this run"), ("on rank 0", "on rank
    1").
    Groups built by stock code (no names) are compared by count and size, as torch does; lf-multilr's groups also by
    name and layout, which catches groups of equal size that hold different parameters.
    """
    found = first_difference(old, new)
    if found is None:
        return None
    kind, index = found
    if kind == "count":  # "in the checkpoint" -> "the checkpoint has ..."
        return f"{old_side.split(' ', 1)[1]} has {_listed(old)}; {new_side.split(' ', 1)[1]} has {_listed(new)}"
    mine, theirs = old[index], new[index]
    if kind == "name":
        return f"group {index} is `{_label(mine)}` {old_side} and `{_label(theirs)}` {new_side}"
    where = f"group {index} ({_label(theirs)})"
    if kind == "size":
        return f"{where} holds {mine[1]} tensors {old_side} and {theirs[1]} {new_side}"
    return f"{where} holds different parameters {old_side} and {new_side} (same count, other names)"


def mismatch(saved: Sequence[Mapping[str, Any]], current: Sequence[Mapping[str, Any]]) -> str | None:
    """Why optimizer state built for ``saved`` groups would land on the wrong parameters of ``current``; None if not."""
    return difference(signature(saved), signature(current), "in the checkpoint", "in this run")


def lr_changes(
    saved: Sequence[Mapping[str, Any]], current: Sequence[Mapping[str, Any]]
) -> list[tuple[str, float, float]]:
    """(module, checkpoint LR, config LR) for every group whose starting LR differs from the checkpoint's.

    ``initial_lr`` is what the scheduler scales; a checkpoint saved before any scheduler step has only ``lr``.
    """
    changes = []
    for old, new in zip(saved, current, strict=False):
        was = float(old.get("initial_lr", old.get("lr", math.nan)))
        now = float(new.get("initial_lr", new.get("lr", math.nan)))
        if not math.isclose(was, now, rel_tol=1e-9, abs_tol=0.0):
            changes.append((str(new.get(MODULE) or new.get("name") or "unnamed group"), was, now))
    return changes
