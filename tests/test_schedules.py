"""Every scheduler type LLaMA-Factory accepts keeps each module at its configured ratio to the base schedule."""

import pytest
import torch
from transformers import SchedulerType
from transformers.optimization import get_scheduler

from lf_multilr.config.keys import KEY_NAMES
from lf_multilr.config.settings import Settings
from lf_multilr.grouping.plan import build_plan
from lf_multilr.training.schedule import per_group_kwargs
from tools.testing import QWEN2_VL, Toy, decay_names

BASE = 1e-2
LRS = {"vision_tower_lr": 1e-4, "multi_modal_projector_lr": 1e-3, "language_model_lr": 5e-2}
KWARGS = {
    "cosine_with_min_lr": {"min_lr": 1e-3},
    "cosine_warmup_with_min_lr": {"min_lr_rate": 0.1},
    "warmup_stable_decay": {"num_stable_steps": 4, "num_decay_steps": 4},
    "greedy": {"min_lr": 1e-3, "patience": 1, "cooldown": 0, "warmup": 0, "smooth": False},
    "reduce_lr_on_plateau": {"patience": 0, "factor": 0.5},
}


@pytest.mark.parametrize("scheduler_type", [s.value for s in SchedulerType])
def test_module_ratios_hold_at_every_step(scheduler_type):
    model = Toy()
    plan = build_plan(
        model.named_parameters(), QWEN2_VL, Settings({**dict.fromkeys(KEY_NAMES), **LRS}), BASE, 0.0, decay_names(model)
    )
    initial = [g["lr"] for g in plan.param_groups]
    optimizer = torch.optim.AdamW(plan.param_groups, lr=BASE)
    kwargs = dict(KWARGS.get(scheduler_type, {}))
    kwargs = per_group_kwargs(scheduler_type, kwargs, BASE, initial) or kwargs
    scheduler = get_scheduler(
        scheduler_type, optimizer, num_warmup_steps=3, num_training_steps=12, scheduler_specific_kwargs=kwargs
    )
    multipliers = set()
    for step in range(12):
        model(torch.randn(3, 4), torch.tensor([1, 2, 3])).backward()
        optimizer.step()
        optimizer.zero_grad()
        if scheduler_type in ("reduce_lr_on_plateau", "greedy"):
            scheduler.step(10.0 + step)  # a loss that only rises: the scheduler keeps cutting
        else:
            scheduler.step()
        ratios = [g["lr"] / lr0 for g, lr0 in zip(optimizer.param_groups, initial, strict=True)]
        assert ratios == pytest.approx([ratios[0]] * len(ratios), rel=1e-9), (scheduler_type, step)
        multipliers.add(round(ratios[0], 12))
    if scheduler_type != "constant":
        assert len(multipliers) > 1, "the schedule never moved: the test proves nothing"
