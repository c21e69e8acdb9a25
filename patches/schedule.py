"""The run's scheduler (HF's ``create_scheduler``, which every LLaMA-Factory stage calls after its own
``create_custom_scheduler``), for an optimizer lf-multilr built: absolute LR bounds given per group (``greedy``,
``reduce_lr_on_plateau``), and the multipliers of modules that start late, warm up or decay to a floor of their own
gated. A layer-wise GaLore / APOLLO optimizer gets the same scheduler per tensor, stepped in the tensor's hook."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

from lf_multilr.grouping.schema import floor_of, ours
from lf_multilr.training import layerwise
from lf_multilr.training.floors import Decay
from lf_multilr.training.schedule import gate_scheduler, per_group_kwargs

from . import guard


def gated(build: Callable[[Any], Any], groups: list[dict[str, Any]], args: Any, num_training_steps: int) -> Any:
    """``build(scheduler_kwargs)`` (the run's scheduler over ``groups``' optimizer), with absolute bounds scaled per
    group and each group's start, warm-up and floor gated."""
    given = args.lr_scheduler_kwargs
    scheduler_type = str(getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type))
    scaled = per_group_kwargs(scheduler_type, given, float(args.learning_rate), [g["lr"] for g in groups])
    if scaled is not None:  # for this call only: the arguments keep what the user gave
        args.lr_scheduler_kwargs = scaled
    try:
        scheduler = build(args.lr_scheduler_kwargs)
    finally:
        args.lr_scheduler_kwargs = given
    decay = None
    if any(floor_of(group) is not None for group in groups):
        warmup = args.get_warmup_steps(num_training_steps)  # what HF's create_scheduler gave the scheduler
        decay = Decay.of(scheduler_type, given, float(args.learning_rate), warmup)
    gate_scheduler(scheduler, groups, decay)
    return scheduler


def per_tensor(trainer: Any, optimizer: layerwise.LayerwiseOptimizer, num_training_steps: int, run: Any) -> None:
    """Each tensor's scheduler of a layer-wise run: HF's ``get_scheduler`` with the arguments HF's ``create_scheduler``
    passes (LLaMA-Factory's own per-tensor schedulers take the same), gated for the tensor's group, kept at the step
    of ``run`` (the trainer's scheduler)."""
    from transformers.optimization import get_scheduler

    args = trainer.args

    def make(each: Any) -> Any:
        def build(kwargs: Any) -> Any:
            return get_scheduler(
                args.lr_scheduler_type,
                optimizer=each,
                num_warmup_steps=args.get_warmup_steps(num_training_steps),
                num_training_steps=num_training_steps,
                scheduler_specific_kwargs=kwargs,
            )

        return gated(build, each.param_groups, args, num_training_steps)

    layerwise.attach_schedulers(optimizer, make, lambda: int(run.last_epoch))


def wrap_create_scheduler(original: Any) -> Any:
    @wraps(original)
    def create_scheduler(self: Any, num_training_steps: int, optimizer: Any = None, *args: Any, **kwargs: Any) -> Any:
        guard.hand_over(self)
        held = guard.innermost(optimizer if optimizer is not None else self.optimizer)
        if isinstance(held, layerwise.LayerwiseOptimizer):
            run = original(self, num_training_steps, optimizer, *args, **kwargs)  # the dummy's: `learning_rate`
            per_tensor(self, held, num_training_steps, run)  # anew for each run scheduler HF builds
            return run
        groups = held.param_groups
        if not ours(groups):  # only optimizers lf-multilr built
            return original(self, num_training_steps, optimizer, *args, **kwargs)
        return gated(
            lambda _: original(self, num_training_steps, optimizer, *args, **kwargs),
            groups,
            self.args,
            num_training_steps,
        )

    return create_scheduler
