"""The run's scheduler (HF's ``create_scheduler``, which every LLaMA-Factory stage calls after its own
``create_custom_scheduler``), for an optimizer lf-multilr built: absolute LR bounds given per group (``greedy``,
``reduce_lr_on_plateau``), and the multipliers of modules that start late, warm up or decay to a floor of their own
gated."""

from __future__ import annotations

from functools import wraps
from typing import Any

from lf_multilr.grouping.schema import floor_of, ours
from lf_multilr.training.floors import Decay
from lf_multilr.training.schedule import gate_scheduler, per_group_kwargs

from . import guard


def wrap_create_scheduler(original: Any) -> Any:
    @wraps(original)
    def create_scheduler(self: Any, num_training_steps: int, optimizer: Any = None, *args: Any, **kwargs: Any) -> Any:
        guard.hand_over(self)
        groups = (optimizer if optimizer is not None else self.optimizer).param_groups
        if not ours(groups):  # only optimizers lf-multilr built
            return original(self, num_training_steps, optimizer, *args, **kwargs)
        given = self.args.lr_scheduler_kwargs
        scheduler_type = str(getattr(self.args.lr_scheduler_type, "value", self.args.lr_scheduler_type))
        scaled = per_group_kwargs(scheduler_type, given, float(self.args.learning_rate), [g["lr"] for g in groups])
        if scaled is not None:  # for this call only: the arguments keep what the user gave
            self.args.lr_scheduler_kwargs = scaled
        try:
            scheduler = original(self, num_training_steps, optimizer, *args, **kwargs)
        finally:
            self.args.lr_scheduler_kwargs = given
        decay = None
        if any(floor_of(group) is not None for group in groups):
            warmup = self.args.get_warmup_steps(num_training_steps)  # what HF's create_scheduler gave the scheduler
            decay = Decay.of(scheduler_type, given, float(self.args.learning_rate), warmup)
        gate_scheduler(scheduler, groups, decay)
        return scheduler

    return create_scheduler
