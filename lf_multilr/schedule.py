"""Keeping every module at its configured ratio to the run's schedule.

HF's schedulers are ``LambdaLR``s: one multiplier for all groups, so ratios hold by construction (the min-lr
variants turn an absolute ``min_lr`` into a rate of ``optimizer.defaults["lr"]``, which is ``learning_rate``).
Two schedulers instead take absolute LR bounds and apply them to every group alike, which would pull a low
vision LR up to a bound or stop it from decaying: ``greedy`` (``min_lr``, ``max_lr``) and
``reduce_lr_on_plateau`` (``min_lr``). For those the bounds are given per group, scaled by the group's ratio.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .errors import ConfigError

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
