"""Layer-wise GaLore and APOLLO with the module groups: one optimizer per tensor, each at its module's LR.

LLaMA-Factory's ``galore_layerwise`` / ``apollo_layerwise`` (and HF's ``optim: *_layerwise``) give every trainable
tensor an optimizer of its own, stepped inside the tensor's post-accumulate-grad hook, and hand the trainer a dummy
optimizer whose ``step`` does nothing. lf-multilr keeps that structure and gives each tensor's one-group optimizer the
settings of the plan group it belongs to (LR, weight decay, module, role, start step, warm-up, floor), so each tensor's
own scheduler (:func:`attach_schedulers`) can be gated as a whole group's would be, and follows the run's scheduler
step for step.

The dummy is lf-multilr's own :class:`LayerwiseOptimizer`, not LLaMA-Factory's ``DummyOptimizer``: LLaMA-Factory's
``create_custom_scheduler`` builds ungated per-tensor schedulers for its own dummy, where a module that starts late
would train from step 0. Its ``param_groups`` are the dummy's one group (what the trainer's ``learning_rate`` log and
schedule read); :func:`stepping_groups` gives the groups that really step.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch


class LayerwiseOptimizer(torch.optim.Optimizer):
    """The trainer's optimizer for a layer-wise run: a no-op over one dummy tensor at ``lr`` (the run's
    ``learning_rate``), holding the per-tensor optimizers that step in the gradient hooks (``optimizer_dict``, the
    attribute LLaMA-Factory's and HF's dummies use) and, once built, their schedulers."""

    def __init__(self, lr: float, optimizer_dict: dict[torch.Tensor, torch.optim.Optimizer]) -> None:
        self.optimizer_dict = optimizer_dict
        self.schedulers: dict[torch.Tensor, Any] = {}
        self.clock: Callable[[], int] = lambda: 0
        super().__init__([torch.zeros(1, 1)], {"lr": lr})

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Nothing to clear: each tensor's optimizer clears its gradient in the hook, right after its step."""

    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """Each tensor's optimizer stepped in its gradient hook during the backward pass; here (where the trainer
        steps its optimizer, just before it reads the step's LR) the schedules of tensors that got no gradient in
        this step catch up too, so every group holds the LR of the step being taken."""
        self.catch_up()
        return None

    def catch_up(self, param: torch.Tensor | None = None) -> None:
        """Bring one tensor's scheduler (or every tensor's) to the run's step. A tensor that got no gradient yet has an
        optimizer that never stepped, for which torch would warn that the schedule skips its first value: it skips
        nothing here (the schedule is brought to the step its tensor is at), so the warning is not shown."""
        now = self.clock()
        for scheduler in self.schedulers.values() if param is None else [self.schedulers.get(param)]:
            if scheduler is None or scheduler.last_epoch >= now:
                continue
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)` before")
                while scheduler.last_epoch < now:
                    scheduler.step()

    def step_tensor(self, param: torch.Tensor) -> None:
        """What a tensor's gradient hook does: bring its scheduler to the run's step (``clock``: how many steps the
        run's scheduler has taken), step its optimizer, clear its gradient.

        Stock steps each tensor's scheduler right after its optimizer, in the hook; here the schedule catches up just
        before, so between the backward pass and the run's scheduler step (where HF reads ``learning_rate``, and
        lf-multilr ``lr/<module>``) each group holds the LR its step used, and a tensor that got no gradient for a
        step does not fall behind the run's schedule (:meth:`step` brings those up)."""
        if param.grad is None:
            return
        self.catch_up(param)
        self.optimizer_dict[param].step()
        self.optimizer_dict[param].zero_grad()


def stepping_groups(optimizer: Any) -> list[Mapping[str, Any]]:
    """The param groups that step: the optimizer's own, or for a layer-wise dummy (lf-multilr's, LLaMA-Factory's or
    HF's: anything with an ``optimizer_dict``) its per-tensor optimizers' groups, in the order they were built."""
    per_tensor = getattr(optimizer, "optimizer_dict", None)
    if per_tensor is None:
        return list(optimizer.param_groups)
    return [group for each in per_tensor.values() for group in each.param_groups]


def per_tensor_groups(param_groups: Sequence[Mapping[str, Any]]) -> Iterator[dict[str, Any]]:
    """One group per tensor, each a copy of its plan group's settings holding that tensor alone."""
    for group in param_groups:
        for param in group["params"]:
            yield {**group, "params": [param]}


def build(
    param_groups: Sequence[Mapping[str, Any]],
    make: Callable[[dict[str, Any]], torch.optim.Optimizer],
    learning_rate: float,
) -> LayerwiseOptimizer:
    """The layer-wise optimizer over the plan's groups: ``make`` builds one tensor's optimizer from its one group, and
    the tensor's post-accumulate-grad hook steps it and clears the gradient (as LLaMA-Factory's and HF's hooks do;
    :meth:`LayerwiseOptimizer.step_tensor`)."""
    optimizer_dict = {group["params"][0]: make(group) for group in per_tensor_groups(param_groups)}
    optimizer = LayerwiseOptimizer(learning_rate, optimizer_dict)
    for param in optimizer_dict:
        param.register_post_accumulate_grad_hook(optimizer.step_tensor)
    return optimizer


def attach_schedulers(
    optimizer: LayerwiseOptimizer, make: Callable[[torch.optim.Optimizer], Any], clock: Callable[[], int]
) -> int:
    """Give each tensor's optimizer its scheduler (``make``: the run's scheduler over that optimizer, gated for its
    group), kept at the run's step (``clock``) by :class:`LayerwiseOptimizer`; returns how many. Called again (a
    second ``train()``, which builds a new run scheduler), it replaces them."""
    optimizer.schedulers = {param: make(each) for param, each in optimizer.optimizer_dict.items()}
    optimizer.clock = clock
    return len(optimizer.schedulers)
