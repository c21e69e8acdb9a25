"""Rows of the path matrix (docs/compatibility.md#every-path) proved in this process, with no training: LLaMA-Factory
loads and prepares the tiny Qwen2-VL (`load_model`, so its adapters and freezing are its own), its optimizer factory
builds the optimizer the run would step, and one step on a gradient of ones measures each tensor's move.

With a gradient of ones, the first step of AdamW (epsilon 1e-20, no weight decay), of Adafactor (as HF configures it:
no relative step, no parameter scaling) and of schedule-free AdamW moves every element by its group's LR: what each
module's tensors moved, divided by the module's LR, is one number for the whole model, or the groups did not reach
the optimizer.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from tools.testing import base_config, owner

LRS = {"vision_tower_lr": 1.0e-4, "multi_modal_projector_lr": 1.0e-3, "language_model_lr": 1.0e-2}
LR_OF = {key.removesuffix("_lr"): value for key, value in LRS.items()}


@pytest.fixture
def prepared(tiny, data, tmp_path):
    """``prepared(**overrides)``: the model as LLaMA-Factory prepares it for training, and the optimizer its factory
    builds, for the tiny Qwen2-VL with the three module LRs."""
    from llamafactory.hparams import get_train_args
    from llamafactory.model import load_model, load_tokenizer
    from llamafactory.train.trainer_utils import create_custom_optimizer

    def make(**overrides: Any) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
        config = {
            **base_config(tiny("qwen2_vl"), data, "qwen2_vl", tmp_path / "out"),
            **LRS,
            "learning_rate": 1.0e-3,
            "weight_decay": 0.0,
            "adam_epsilon": 1.0e-20,
            **overrides,
        }
        model_args, _, training_args, finetuning_args, _ = get_train_args(config)
        tokenizer = load_tokenizer(model_args)["tokenizer"]
        model = load_model(tokenizer, model_args, finetuning_args, is_trainable=True).float()
        optimizer = create_custom_optimizer(model, training_args, finetuning_args)
        assert optimizer is not None
        return model, optimizer

    return make


def step_over_lr(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, list[float]]:
    """Per module, each trainable tensor's max |dW| over its module's LR after one step on a gradient of ones."""
    trainable = {name: param for name, param in model.named_parameters() if param.requires_grad}
    before = {name: param.detach().clone() for name, param in trainable.items()}
    for param in trainable.values():
        param.grad = torch.ones_like(param)
    if hasattr(optimizer, "train"):  # schedule-free optimizers step only in train mode (HF's Trainer sets it)
        optimizer.train()
    optimizer.step()
    ratios: dict[str, list[float]] = {}
    for name, param in trainable.items():
        module = owner("qwen2_vl", name.removeprefix("base_model.model."))
        ratios.setdefault(module, []).append((param.detach() - before[name]).abs().max().item() / LR_OF[module])
    return ratios


def assert_one_ratio(ratios: dict[str, list[float]], expected: float) -> None:
    assert set(ratios) == set(LR_OF), ratios.keys()
    for module, values in ratios.items():
        assert values == pytest.approx([expected] * len(values), rel=2e-3), module


def group_members(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, set[str]]:
    names = {id(param): name for name, param in model.named_parameters()}
    members: dict[str, set[str]] = {}
    for group in optimizer.param_groups:
        members.setdefault(group["module"], set()).update(names[id(p)] for p in group["params"])
    return members


@pytest.mark.parametrize(
    ("optim", "optimizer_class"),
    [("adamw_torch_fused", "AdamW"), ("adafactor", "Adafactor"), ("schedule_free_adamw", "AdamWScheduleFree")],
)
def test_each_module_steps_by_its_lr_under_the_users_optim(prepared, optim, optimizer_class):
    if optim.startswith("schedule_free"):
        pytest.importorskip("schedulefree")
    model, optimizer = prepared(optim=optim)
    assert type(optimizer).__name__ == optimizer_class
    if optim == "adamw_torch_fused":
        assert {group["fused"] for group in optimizer.param_groups} == {True}
    assert {group["module"]: group["lr"] for group in optimizer.param_groups} == LR_OF
    assert_one_ratio(step_over_lr(model, optimizer), 1.0)


def test_freeze_tuning_groups_exactly_what_llamafactory_leaves_trainable(prepared):
    """`finetuning_type: freeze` trains the last language-model layer and, with the tower unfrozen, the vision blocks
    of the same index (LLaMA-Factory's rule): the groups hold exactly those tensors, each moving by its module's LR."""
    model, optimizer = prepared(finetuning_type="freeze", freeze_trainable_layers=1)
    trainable = {name for name, param in model.named_parameters() if param.requires_grad}
    members = group_members(model, optimizer)
    assert set().union(*members.values()) == trainable
    assert 0 < len(trainable) < len(list(model.parameters()))
    assert {module for module, names in members.items() if names} == set(LR_OF)
    assert_one_ratio(step_over_lr(model, optimizer), 1.0)


def test_dora_magnitudes_and_adapters_step_by_the_module_they_adapt(prepared):
    model, optimizer = prepared(finetuning_type="lora", lora_target="all", use_dora=True, additional_target="merger")
    members = group_members(model, optimizer)
    magnitudes = {name for names in members.values() for name in names if "lora_magnitude_vector" in name}
    assert magnitudes, "DoRA made no magnitude vectors"
    assert {module for module, names in members.items() if any(n in magnitudes for n in names)} >= {
        "vision_tower",
        "language_model",
    }
    assert_one_ratio(step_over_lr(model, optimizer), 1.0)
