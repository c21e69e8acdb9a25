"""Per-module start steps and warm-up: the run's scheduler, its per-group multipliers gated (HF's ``create_scheduler``,
which every LLaMA-Factory stage calls after its own ``create_custom_scheduler``)."""

from __future__ import annotations

from functools import wraps
from typing import Any

from lf_multilr.schedule import gate_scheduler


def wrap_create_scheduler(original: Any) -> Any:
    @wraps(original)
    def create_scheduler(self: Any, num_training_steps: int, optimizer: Any = None, *args: Any, **kwargs: Any) -> Any:
        scheduler = original(self, num_training_steps, optimizer, *args, **kwargs)
        groups = (optimizer if optimizer is not None else self.optimizer).param_groups
        if any(group.get("module") for group in groups):  # only optimizers lf-multilr built
            gate_scheduler(scheduler, groups)
        return scheduler

    return create_scheduler
