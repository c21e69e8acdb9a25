"""Floors: the LR a module (``<module>_min_lr``) or custom group (an ``lr_groups`` entry's ``min_lr``) decays to.

HF's decaying schedules are one multiplier m(t) for every group, and their decay ends at a multiplier ``end`` that
is the same for every group (:func:`decay_end`): 0 for linear and cosine, ``lr_end / learning_rate`` for polynomial,
``min_lr_rate`` (or ``min_lr / learning_rate``) for the two min-lr cosines, ``min_lr_ratio`` for warmup_stable_decay.
So every group's floor is ``end`` times its LR: proportional to ``learning_rate``. A group at LR L with a floor f of
its own follows instead, at optimizer step t (0-based, HF's ``global_step`` before the step) and with W the run's
warm-up steps:

    L * m(t)                                       t < W: the run's warm-up, as it is
    f + (L - f) * (m(t) - end) / (1 - end)         t >= W: the run's decay, rescaled to run from L down to f

At the top of the decay (m = 1) that is L, where the run's decay ends (m = end) it is f, and in between the module
follows the run's own shape (the cosine, the line, the polynomial, warmup_stable_decay's stable phase and decay).
As a multiplier of L it is :func:`floored`: ``r + (1 - r) * shape`` with ``r = f / L``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

#: The ``lr_scheduler_type`` s whose decay ends at a known multiplier (:func:`decay_end`), where a floor is defined.
DECAYING: tuple[str, ...] = (
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
    "cosine_with_min_lr",
    "cosine_warmup_with_min_lr",
    "warmup_stable_decay",
)
#: HF's defaults for the scheduler kwargs that set where a decay ends (``get_polynomial_decay_schedule_with_warmup``'s
#: ``lr_end``, ``get_wsd_schedule``'s ``min_lr_ratio``); a test holds them to HF's signatures.
POLYNOMIAL_LR_END = 1e-7
WSD_MIN_LR_RATIO = 0.0


def decay_end(scheduler_type: str, kwargs: Mapping[str, Any] | None, learning_rate: float) -> float | None:
    """The multiplier the run's decay ends at, as HF computes it from ``lr_scheduler_kwargs``; None for a scheduler
    that does not decay to an end (constant, inverse_sqrt, reduce_lr_on_plateau, greedy)."""
    given = dict(kwargs or {})
    if scheduler_type in ("linear", "cosine", "cosine_with_restarts"):
        return 0.0  # the cosine's lowest point, and the end of each of cosine_with_restarts' cycles
    if scheduler_type == "polynomial":  # HF's multiplier is relative to the optimizer's default lr: learning_rate
        return float(given.get("lr_end", POLYNOMIAL_LR_END)) / learning_rate
    if scheduler_type in ("cosine_with_min_lr", "cosine_warmup_with_min_lr"):
        if given.get("min_lr") is not None:
            return float(given["min_lr"]) / learning_rate
        return float(given.get("min_lr_rate") or 0.0)  # HF refuses a run that gives neither
    if scheduler_type == "warmup_stable_decay":
        return float(given.get("min_lr_ratio", WSD_MIN_LR_RATIO))
    return None


@dataclass(frozen=True)
class Decay:
    """What a floor needs of the run's schedule: where its warm-up ends and the multiplier its decay ends at."""

    warmup_steps: int
    end: float

    @classmethod
    def of(
        cls, scheduler_type: str, kwargs: Mapping[str, Any] | None, learning_rate: float, warmup_steps: int
    ) -> Decay | None:
        end = decay_end(scheduler_type, kwargs, learning_rate)
        return None if end is None else cls(int(warmup_steps), end)


def to_floor(
    base: Callable[[int], float], warmup_steps: int, end: float, floor: float, lr: float
) -> Callable[[int], float]:
    """``base`` rescaled after the warm-up to decay a group at ``lr`` down to ``floor`` (:func:`floored`, as a
    ``functools.partial``, which a ``LambdaLR`` checkpoints); a group held at 0 has no ratio to keep."""
    return partial(floored, base, warmup_steps, end, floor / lr if lr > 0 else 0.0)


def floored(base: Callable[[int], float], warmup_steps: int, end: float, rate: float, step: int) -> float:
    """The multiplier of a group whose floor is ``rate`` times its LR, at optimizer step ``step`` (0-based), on the
    run's multiplier ``base``: ``base(step)`` during the warm-up, then ``rate + (1 - rate) * shape`` with ``shape =
    (base(step) - end) / (1 - end)`` (never below 0: the floor is the lowest the group goes)."""
    multiplier = base(step)
    if step < warmup_steps:
        return multiplier
    shape = 1.0 if end >= 1.0 else max(0.0, (multiplier - end) / (1.0 - end))
    return rate + (1.0 - rate) * shape
