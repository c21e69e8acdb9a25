"""The layer-wise optimizer's schedules (lf_multilr.training.layerwise), on a toy model with torch's SGD: no
LLaMA-Factory, no GaLore (tests/test_optimizers.py trains the real ones)."""

import pytest
import torch
from torch import nn

from lf_multilr.training import layerwise
from lf_multilr.training.schedule import gate_scheduler


def decay(step: int) -> float:
    return 1.0 - 0.1 * step


def test_every_tensor_steps_at_its_groups_gated_lr_and_none_falls_behind_the_run():
    """Two modules, one starting at step 2; the second gets no gradient at steps 1-3. Each tensor's SGD step is its
    group's LR at the run's step, times the run's multiplier, gated; after the trainer's optimizer step every group
    holds the LR of the step being taken, a tensor without a gradient included, and no gradient is left behind."""
    model = nn.ModuleDict({"a": nn.Linear(3, 3, bias=False), "b": nn.Linear(3, 3, bias=False)})
    groups = [
        {"params": [model["a"].weight], "lr": 1.0, "name": "a", "module": "a"},
        {"params": [model["b"].weight], "lr": 0.5, "name": "b", "module": "b", "start_step": 2, "warmup_steps": None},
    ]
    optimizer = layerwise.build(groups, lambda group: torch.optim.SGD([group]), 0.1)
    assert [g["name"] for g in layerwise.stepping_groups(optimizer)] == ["a", "b"]
    run = torch.optim.lr_scheduler.LambdaLR(optimizer, decay)

    def make(each):
        scheduler = torch.optim.lr_scheduler.LambdaLR(each, decay)
        gate_scheduler(scheduler, each.param_groups)
        return scheduler

    assert layerwise.attach_schedulers(optimizer, make, lambda: run.last_epoch) == 2
    gets_gradient = {"a": [0, 1, 2, 3, 4], "b": [0, 4]}
    for step in range(5):
        before = {name: model[name].weight.detach().clone() for name in "ab"}
        grads = {name: torch.randn(3, 3) for name in "ab"}
        loss = sum((model[name].weight * grads[name]).sum() for name in "ab" if step in gets_gradient[name])
        loss.backward()
        optimizer.step()  # the trainer's: a no-op that brings the idle tensors' schedules up
        want = {"a": 1.0 * decay(step), "b": 0.0 if step < 2 else 0.5 * decay(step)}
        assert {g["name"]: g["lr"] for g in layerwise.stepping_groups(optimizer)} == pytest.approx(want)
        for name in "ab":
            moved = model[name].weight.detach() - before[name]
            stepped = step in gets_gradient[name]
            assert torch.allclose(moved, -want[name] * grads[name] if stepped else torch.zeros(3, 3)), (name, step)
            assert model[name].weight.grad is None or not model[name].weight.grad.any()
        run.step()
    assert model["b"].weight.detach().ne(before["b"]).any()  # it did train at step 4, at 0.5 x 0.6


def test_a_second_run_scheduler_replaces_the_tensors_schedules():
    """A second ``train()`` builds a new run scheduler: attaching again follows the new one, not the old."""
    weight = nn.Parameter(torch.ones(2))
    optimizer = layerwise.build([{"params": [weight], "lr": 1.0}], lambda group: torch.optim.SGD([group]), 1.0)
    first = torch.optim.lr_scheduler.LambdaLR(optimizer, decay)
    layerwise.attach_schedulers(optimizer, lambda each: torch.optim.lr_scheduler.LambdaLR(each, decay), lambda: 3)
    optimizer.step()
    assert layerwise.stepping_groups(optimizer)[0]["lr"] == pytest.approx(decay(3))
    assert first.last_epoch == 0
    layerwise.attach_schedulers(optimizer, lambda each: torch.optim.lr_scheduler.LambdaLR(each, decay), lambda: 1)
    optimizer.step()
    assert layerwise.stepping_groups(optimizer)[0]["lr"] == pytest.approx(decay(1))
