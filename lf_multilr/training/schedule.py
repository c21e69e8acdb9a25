"""Keeping every module at its configured ratio to the run's schedule.

HF's schedulers are ``LambdaLR``s: one multiplier for all groups, so ratios hold by construction (the min-lr
variants turn an absolute ``min_lr`` into a rate of ``optimizer.defaults["lr"]``, which is ``learning_rate``).
Two schedulers instead take absolute LR bounds and apply them to every group alike, which would pull a low
vision LR up to a bound or stop it from decaying: ``greedy`` (``min_lr``, ``max_lr``) and
``reduce_lr_on_plateau`` (``min_lr``). For those the bounds are given per group, scaled by the group's ratio.

A module can also start late and warm up on its own (``<module>_start_step``, ``<module>_warmup_steps``): its
groups' multipliers are gated by :func:`module_multiplier` on top of the run's schedule.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any

from lf_multilr.errors import ConfigError
from lf_multilr.grouping.schema import module_of, schedule_of

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


def gate_scheduler(scheduler: Any, param_groups: Sequence[dict[str, Any]]) -> int:
    """Gate the multipliers of the groups that carry ``start_step`` / ``warmup_steps``; return how many.

    Only ``LambdaLR``-based schedulers (every HF type but ``reduce_lr_on_plateau`` and ``greedy``) have per-group
    multipliers to gate. The groups' current LRs are recomputed, since the scheduler applied step 0 ungated.
    """
    gated = 0
    for index, group in enumerate(param_groups):
        start, warmup = schedule_of(group)
        if not start and not warmup:
            continue
        lambdas = getattr(scheduler, "lr_lambdas", None)
        if lambdas is None:
            raise ConfigError(
                f"{module_of(group) or 'a module'}_start_step / _warmup_steps",
                {"start_step": start, "warmup_steps": warmup},
                f"the scheduler {type(scheduler).__name__} has no per-group multiplier to delay or warm up",
                "use a LambdaLR-based lr_scheduler_type (e.g. cosine, linear, constant_with_warmup)",
            )
        base = lambdas[index]
        if isinstance(base, partial) and base.func is module_multiplier:
            continue  # already gated
        lambdas[index] = gate(base, start, warmup)
        group["lr"] = group["initial_lr"] * lambdas[index](scheduler.last_epoch)
        gated += 1
    if gated:
        scheduler._last_lr = [group["lr"] for group in param_groups]
    return gated


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
    """One ``LambdaLR`` multiplier per group: the run's warm-up and decay, gated by the group's own start step and
    warm-up where its module sets them (they travel in the group: :func:`~lf_multilr.grouping.schema.schedule_of`)."""
    base = partial(warmup_decay, warmup, total, decay, min_rate)
    lambdas: list[Callable[[int], float]] = []
    for group in param_groups:
        start, own = schedule_of(group)
        lambdas.append(gate(base, start, own) if start or own else base)
    return lambdas
