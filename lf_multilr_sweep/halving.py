"""``--prune``: synchronous successive halving over the sweep's settings, decided from the study alone.

Rounds end at rungs of ``eval_steps * factor**k`` training steps below ``max_steps``, then at ``max_steps``
(:func:`targets`). In round 0 every setting trains from scratch to the first rung (with the full run's schedule) and
pauses there with a checkpoint; its trial stays RUNNING. When every trial of a round has reached the round's rung, or
failed, the best ``max(1, n // factor)`` of its ``n`` trials by eval loss at the rung go on: each resumes from its
own checkpoint to the next rung (the last round to ``max_steps``, where its trial ends COMPLETE); the others end
PRUNED at the rung. Each decision is written once, as one study attribute (``lf_multilr_halving_round_K``), by
whichever sweep process sees the round end first, under the claim lock; the functions here only read.

What a trial carries (user attributes): :data:`TARGET`, the step its run trains to in its current round;
:data:`REACHED`, the last rung it paused at; :data:`PAUSED`, true while it waits at that rung with no sweep process
training it (a paused trial has no heartbeat, and no process must take it for dead).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

TARGET, REACHED, PAUSED = "rung_target", "rung_reached", "paused"
#: Set on a trial the sweep pruned: the rung it paused at.
PRUNED_AT = "pruned_at_step"
#: The study attribute of round K's decision, K >= 1: ``{"rung": STEP, "promoted": [TRIAL, ...]}``.
ROUND = "lf_multilr_halving_round_"
DEFAULT_FACTOR = 3


def targets(eval_steps: int, max_steps: int, factor: int) -> tuple[int, ...]:
    """Where each round ends: the rungs ``eval_steps * factor**k`` below ``max_steps``, then ``max_steps``."""
    rungs = []
    step = eval_steps
    while step < max_steps:
        rungs.append(step)
        step *= factor
    return (*rungs, max_steps)


@dataclass(frozen=True)
class Contender:
    """A trial of the study, as the rounds see it."""

    number: int
    slot: str
    state: str
    abandoned: bool = False
    target: int | None = None
    reached: int | None = None
    paused: bool = False
    losses: Mapping[int, float] = field(default_factory=dict)

    @property
    def resumable(self) -> bool:
        """Paused at a rung, with a further one to train to."""
        reached = self.reached
        return self.state == "RUNNING" and self.paused and reached is not None and (self.target or 0) > reached

    @property
    def held(self) -> bool:
        """A sweep process trains it now."""
        return self.state in ("RUNNING", "WAITING") and not self.paused


@dataclass(frozen=True)
class Promotion:
    """Which trials go on into round ``round`` (>= 1), decided at the rung ``rung``."""

    round: int
    rung: int
    promoted: tuple[int, ...]

    def attr(self) -> tuple[str, dict[str, object]]:
        return f"{ROUND}{self.round}", {"rung": self.rung, "promoted": list(self.promoted)}


def recorded(attrs: Mapping[str, object]) -> list[Promotion]:
    """The decisions in the study's attributes, round 1 first."""
    found = []
    for name, value in attrs.items():
        if name.startswith(ROUND) and isinstance(value, dict):
            promoted = tuple(int(number) for number in value["promoted"])
            found.append(Promotion(int(name[len(ROUND) :]), int(value["rung"]), promoted))
    found.sort(key=lambda d: d.round)
    assert [d.round for d in found] == list(range(1, len(found) + 1)), f"the study's rounds have a gap: {found}"
    return found


def latest(entries: Sequence[Contender]) -> dict[str, Contender]:
    """Each slot's last trial."""
    last: dict[str, Contender] = {}
    for entry in sorted(entries, key=lambda e: e.number):
        last[entry.slot] = entry
    return last


def _done(entry: Contender, rung: int, first: bool) -> bool:
    """Whether ``entry`` is through the round ending at ``rung``: it reached the rung, or failed. In the ``first``
    round the setting of an interrupted or abandoned trial trains again from scratch, and the round waits for it
    (later rounds resume a trial stopped that way from its checkpoint, so it never fails)."""
    if entry.state == "FAIL":
        return not (first and entry.abandoned)
    return entry.state in ("COMPLETE", "PRUNED") or (entry.reached is not None and entry.reached >= rung)


def loss_at(entry: Contender, rung: int) -> float:
    value = entry.losses.get(rung)
    return value if value is not None and math.isfinite(value) else math.inf


def participants(
    entries: Sequence[Contender], slots: Sequence[str], decisions: Sequence[Promotion]
) -> list[Contender] | None:
    """The trials of the round the last decision opened (round 0: each slot's last trial); None while a slot of
    round 0 has no trial."""
    if decisions:
        by_number = {entry.number: entry for entry in entries}
        return [by_number[number] for number in decisions[-1].promoted if number in by_number]
    last = latest(entries)
    if any(slot not in last for slot in slots):
        return None
    return [last[slot] for slot in slots]


def promotions(
    entries: Sequence[Contender], slots: Sequence[str], decisions: Sequence[Promotion], ends: Sequence[int], factor: int
) -> list[Promotion]:
    """The decisions the study's state calls for beyond ``decisions``: for every round whose trials are all through
    it, the best ``max(1, n // factor)`` of its ``n`` by eval loss at its rung (ties: the earlier trial)."""
    made: list[Promotion] = []
    current = participants(entries, slots, decisions)
    while current is not None and len(decisions) + len(made) < len(ends) - 1:
        number = len(decisions) + len(made)
        rung = ends[number]
        if not all(_done(entry, rung, number == 0) for entry in current):
            break
        reached = [e for e in current if e.state == "RUNNING" and e.reached is not None and e.reached >= rung]
        best = sorted(reached, key=lambda e: (loss_at(e, rung), e.number))[: max(1, len(current) // factor)]
        made.append(Promotion(number + 1, rung, tuple(e.number for e in best)))
        current = best
    return made


@dataclass(frozen=True)
class Moves:
    """What the decisions ask of the trials: promoted ones get their next target, the rest of the round is PRUNED."""

    promote: tuple[tuple[int, int], ...]  # (trial, its new target)
    prune: tuple[tuple[int, int], ...]  # (trial, the rung it is pruned at)


def moves(entries: Sequence[Contender], decisions: Sequence[Promotion], ends: Sequence[int]) -> Moves:
    """The moves of the decisions that the trials do not show yet (none once applied: applying them is idempotent,
    and a process that stopped halfway leaves the rest to the next claim)."""
    promote, prune = [], []
    for decision in decisions:
        promoted = set(decision.promoted)
        for entry in entries:
            if entry.state != "RUNNING" or not entry.paused or entry.target != decision.rung:
                continue
            if entry.number in promoted:
                promote.append((entry.number, ends[decision.round]))
            else:
                prune.append((entry.number, decision.rung))
    return Moves(tuple(promote), tuple(prune))
