"""Optimizer creation: one param group per module (and per role inside it) in every training stage."""

from __future__ import annotations

import importlib
from functools import wraps
from typing import Any

import torch

from lf_multilr.config.checks import (
    refuse_flat_parameters,
    refuse_optimizer_structure,
    refuse_own_optimizers,
    refuse_unknown_model_type,
)
from lf_multilr.config.settings import Settings, settings_of
from lf_multilr.grouping.checks import check_plan
from lf_multilr.grouping.placement import ModuleMap
from lf_multilr.grouping.plan import GroupPlan, LoraPlus, build_plan
from lf_multilr.reports.table import format_table
from lf_multilr.training.metrics import stage_notes

from . import guard
from ._state import logger
from .distributed import check_ranks, fsdp1_sizes
from .registry import config_model_type, known_types, model_config, module_map


def decay_names(model: torch.nn.Module, loraplus: bool) -> set[str]:
    """The names the replaced path decays: LLaMA-Factory's rule for LoRA+, HF's for the default path."""
    if loraplus:
        # imported here too: a plan, and the check before the weights load, run before LLaMA-Factory's trainers import
        trainer_utils = importlib.import_module("llamafactory.train.trainer_utils")
        return set(trainer_utils._get_decay_parameter_names(model))
    from transformers import Trainer

    # HF's rule is an instance method that reads nothing from the instance.
    return set(Trainer.get_decay_parameter_names(None, model))  # type: ignore[arg-type]


def plan_for(model: torch.nn.Module, training_args: Any, finetuning_args: Any, settings: Settings) -> GroupPlan:
    """The checked plan for ``model`` as LLaMA-Factory has prepared it (frozen, PEFT-wrapped, ...)."""
    plan = build_for(model, training_args, finetuning_args, settings)
    check_plan(plan, finetuning_args.finetuning_type)
    return plan


def build_for(model: torch.nn.Module, training_args: Any, finetuning_args: Any, settings: Settings) -> GroupPlan:
    """The plan for ``model`` as LLaMA-Factory has prepared it, before :func:`check_plan`."""
    model_type = config_model_type(model_config(model))
    mapping = module_map(model_type)
    if mapping is None and settings.module_keys_set:
        refuse_unknown_model_type(settings, model_type, known_types())
    if mapping is None:  # no module keys (a plan, or lr_groups alone): all `other`
        mapping = ModuleMap.none(str(model_type))
    refuse_flat_parameters(settings, model.named_parameters())
    ratio = getattr(finetuning_args, "loraplus_lr_ratio", None)
    loraplus = None if ratio is None else LoraPlus(float(ratio), float(finetuning_args.loraplus_lr_embedding))
    return build_plan(
        model.named_parameters(),
        mapping,
        settings,
        float(training_args.learning_rate),
        float(training_args.weight_decay),
        decay_names(model, loraplus is not None),
        loraplus,
        fsdp1_sizes(model),
    )


def optimizer_cls_and_kwargs(
    training_args: Any, model: torch.nn.Module, settings: Settings
) -> tuple[Any, dict[str, Any]]:
    """The class and kwargs the user's ``optim:`` asks for, refused when it cannot take param groups."""
    from transformers import Trainer

    cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(training_args, model)  # type: ignore[arg-type]
    own = {"params", "model", "optimizer_dict"} & kwargs.keys()
    try:
        from transformers.trainer_optimizer import is_optimizer_factory
    except ImportError:  # older transformers have no optimizer factories
        factory = False
    else:
        factory = bool(is_optimizer_factory(cls))
    if own or factory:
        refuse_optimizer_structure(settings, str(getattr(training_args.optim, "value", training_args.optim)))
    return cls, kwargs


def wrap_create_custom_optimizer(original: Any) -> Any:
    @wraps(original)
    def create_custom_optimizer(model: Any, training_args: Any, finetuning_args: Any) -> Any:
        settings = settings_of(finetuning_args)
        if not settings.any_set:
            return original(model, training_args, finetuning_args)
        refuse_own_optimizers(settings, finetuning_args)
        plan = plan_for(model, training_args, finetuning_args, settings)
        same = check_ranks(plan.param_groups)  # every rank, before any of them trains
        if same is not None:
            logger().info(same)
        cls, kwargs = optimizer_cls_and_kwargs(training_args, model, settings)
        optimizer = cls(plan.param_groups, **kwargs)
        guard.expect(optimizer.param_groups)
        plan.notes.extend(stage_notes(getattr(finetuning_args, "stage", None)))
        logger().info_rank0(format_table(plan, warnings=False))
        for warning in plan.warnings:
            logger().warning_rank0(f"lf-multilr: {warning}")
        return optimizer

    return create_custom_optimizer
