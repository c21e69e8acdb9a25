"""Keeping every module at its configured ratio to the run's schedule.

HF's schedulers are ``LambdaLR``s: one multiplier for all groups, so ratios hold by construction (the min-lr
variants turn an absolute ``min_lr`` into a rate of ``optimizer.defaults["lr"]``, which is ``learning_rate``).
Two schedulers instead take absolute LR bounds and apply them to every group alike, which would pull a low
vision LR up to a bound or stop it from decaying: ``greedy`` (``min_lr``, ``max_lr``) and
``reduce_lr_on_plateau`` (``min_lr``). For those the bounds are given per group, scaled by the group's ratio.

A module can also start late and warm up on its own (``<module>_start_step``, ``<module>_warmup_steps``): its
groups' multipliers are gated by :func:`module_multiplier` on top of the run's schedule. And it can decay to a floor
of its own (``<module>_min_lr``): its groups' multipliers are rescaled by :func:`lf_multilr.training.floors.floored`
first, the gate on top.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any

from lf_multilr.errors import ConfigError
from lf_multilr.grouping.schema import floor_of, module_of, schedule_of
from lf_multilr.training.floors import Decay, to_floor

#: Scheduler kwargs that are absolute learning rates, with the value the scheduler uses when unset.
ABSOLUTE_BOUNDS: dict[str, dict[str, float]] = {
    "greedy": {"min_lr": 1e-3, "max_lr": 1.0},
    "reduce_lr_on_plateau": {"min_lr": 0.0},
}


def per_group_kwargs(
    scheduler_type: str, kwargs: Mapping[str, Any] | None, learning_rate: float, group_lrs: Sequence[float]
) -> dict[str, Any] | None:
    """Scheduler kwargs with absolute bounds scaled per group, or None when the scheduler needs no change."""
    bounds = ABSOLUTE_BOUNDS.get(scheduler_type)
    if not bounds or learning_rate <= 0:
        return None
    scaled = dict(kwargs or {})
    for name, default in bounds.items():
        value = scaled.get(name, default)
        if isinstance(value, (list, tuple)):
            raise ConfigError(
                f"lr_scheduler_kwargs.{name}",
                value,
                "lf-multilr builds the param groups, so a per-group list cannot know their order",
                "give one number; lf-multilr scales it for each module by its ratio to learning_rate",
            )
        scaled[name] = [float(value) * lr / learning_rate for lr in group_lrs]
    return scaled


def module_multiplier(base: Callable[[int], float], start: int, warmup: int | None, step: int) -> float:
    """A module's LR multiplier at optimizer step ``step`` (0-based: the number of optimizer steps already taken).

    0 before ``start``; from ``start`` on, the run's own multiplier ``base(step)`` times a linear ramp that reaches 1
    after ``warmup`` steps: ``base(step) * min(1, (step - start + 1) / warmup)``. So the module's first step
    (``step == start``) trains at ``1 / warmup`` of its scheduled LR and step ``start + warmup - 1`` at all of it.
    """
    if step < start:
        return 0.0
    ramp = 1.0 if not warmup else min(1.0, (step - start + 1) / warmup)
    return base(step) * ramp


def gate(base: Callable[[int], float], start: int, warmup: int | None) -> Callable[[int], float]:
    """``base`` gated by :func:`module_multiplier`, as a ``functools.partial``: a ``LambdaLR`` checkpoints a partial's
    (empty) ``__dict__``, where a closure or lambda would not pickle."""
    return partial(module_multiplier, base, start, warmup)


def gate_scheduler(scheduler: Any, param_groups: Sequence[dict[str, Any]], decay: Decay | None = None) -> int:
    """Gate the multipliers of the groups that carry ``start_step`` / ``warmup_steps`` / ``min_lr``; return how many.

    Only ``LambdaLR``-based schedulers (every HF type but ``reduce_lr_on_plateau`` and ``greedy``) have per-group
    multipliers to gate. A group's floor rescales the run's decay first (``decay``: where the run's warm-up ends and
    the multiplier its decay ends at; None for a scheduler that does not decay to an end, where a floor is refused).
    The groups' current LRs are recomputed, since the scheduler applied step 0 ungated. A group without these keys
    keeps the run's multiplier as it is.
    """
    gated = 0
    for index, group in enumerate(param_groups):
        start, warmup = schedule_of(group)
        floor = floor_of(group)
        if not start and not warmup and floor is None:
            continue
        lambdas = getattr(scheduler, "lr_lambdas", None)
        if lambdas is None:
            given: dict[str, Any] = {"start_step": start, "warmup_steps": warmup}
            raise ConfigError(
                _keys_of(group, start, warmup, floor),
                given if floor is None else {**given, "min_lr": floor},
                f"the scheduler {type(scheduler).__name__} has no per-group multiplier to delay or warm up"
                + (" or to floor" if floor is not None else ""),
                "use a LambdaLR-based lr_scheduler_type (e.g. cosine, linear, constant_with_warmup)",
            )
        base = lambdas[index]
        if isinstance(base, partial) and base.func is module_multiplier:
            continue  # already gated
        if floor is not None:
            if decay is None:
                raise ConfigError(
                    _keys_of(group, 0, None, floor),
                    floor,
                    f"the scheduler {type(scheduler).__name__} does not decay to an end, so there is no floor to "
                    "decay to",
                    "use a decaying lr_scheduler_type (e.g. cosine, linear, polynomial, warmup_stable_decay)",
                )
            base = to_floor(base, decay.warmup_steps, decay.end, floor, float(group["initial_lr"]))
        lambdas[index] = gate(base, start, warmup)
        group["lr"] = group["initial_lr"] * lambdas[index](scheduler.last_epoch)
        gated += 1
    if gated:
        scheduler._last_lr = [group["lr"] for group in param_groups]
    return gated


def _keys_of(group: Mapping[str, Any], start: int, warmup: int | None, floor: float | None) -> str:
    """The keys a group's start, warm-up and floor come from, for a refusal."""
    module = module_of(group) or "a module"
    if floor is None:
        return f"{module}_start_step / _warmup_steps"
    return f"{module}_start_step / _warmup_steps / _min_lr" if start or warmup else f"{module}_min_lr"


def warmup_decay(warmup: int, total: int, decay: str, min_rate: float, step: int) -> float:
    """The v1 scheduler plugin's multiplier at optimizer step ``step`` (0-based), for every group alike: a linear
    warm-up ``step / warmup`` (HF's), then ``decay`` (cosine, linear or constant) from 1 down to ``min_rate`` at
    ``total`` steps."""
    if step < warmup:
        return step / max(1, warmup)
    if decay == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    shape = 0.5 * (1.0 + math.cos(math.pi * progress)) if decay == "cosine" else 1.0 - progress
    return min_rate + (1.0 - min_rate) * shape


def v1_lambdas(
    param_groups: Sequence[dict[str, Any]], total: int, warmup: int, decay: str, min_rate: float
) -> list[Callable[[int], float]]:
    """One ``LambdaLR`` multiplier per group: the run's warm-up and decay, the decay rescaled to end at the group's
    floor where it has one (:func:`~lf_multilr.training.floors.floored`, as v0's), then gated by the group's own
    start step and warm-up (they travel in the group: :func:`~lf_multilr.grouping.schema.schedule_of`)."""
    base = partial(warmup_decay, warmup, total, decay, min_rate)
    lambdas: list[Callable[[int], float]] = []
    for group in param_groups:
        start, own = schedule_of(group)
        floor = floor_of(group)
        run: Callable[[int], float] = base
        if floor is not None:
            if decay == "constant":  # refused before the model loads; here for a scheduler built by hand
                raise ConfigError(
                    _keys_of(group, 0, None, floor),
                    floor,
                    "the scheduler plugin's `decay: constant` does not decay, so there is no floor to decay to",
                    "use `decay: cosine` or `decay: linear`",
                )
            run = to_floor(base, warmup, min_rate, floor, float(group.get("initial_lr", group["lr"])))
        lambdas.append(gate(run, start, own) if start or own else run)
    return lambdas
