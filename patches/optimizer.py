"""Optimizer creation: one param group per module (and per role inside it) in every training stage."""

from __future__ import annotations

import sys
from functools import wraps
from typing import Any

import torch

from lf_multilr.distributed import FLAT_FIX, FLAT_WHY, flat_parameters
from lf_multilr.errors import ConfigError
from lf_multilr.groups import GroupPlan, LoraPlus, build_plan, check_plan
from lf_multilr.keys import Settings
from lf_multilr.modules import ModuleMap
from lf_multilr.report import format_table
from lf_multilr.schedule import per_group_kwargs

from . import guard
from .distributed import check_ranks, fsdp1_sizes
from .hparams import first_set, refuse_own_optimizers
from .registry import config_model_type, known_types, model_config, module_map

LOGGER_NAME = "llamafactory.lf_multilr"


def _logger() -> Any:
    from llamafactory.extras import logging

    return logging.get_logger(LOGGER_NAME)


def decay_names(model: torch.nn.Module, loraplus: bool) -> set[str]:
    """The names the replaced path decays: LLaMA-Factory's rule for LoRA+, HF's for the default path."""
    if loraplus:
        return set(sys.modules["llamafactory.train.trainer_utils"]._get_decay_parameter_names(model))
    from transformers import Trainer

    # HF's rule is an instance method that reads nothing from the instance.
    return set(Trainer.get_decay_parameter_names(None, model))  # type: ignore[arg-type]


def plan_for(model: torch.nn.Module, training_args: Any, finetuning_args: Any, settings: Settings) -> GroupPlan:
    """The checked plan for ``model`` as LLaMA-Factory has prepared it (frozen, PEFT-wrapped, ...)."""
    model_type = config_model_type(model_config(model))
    mapping = module_map(model_type)
    if mapping is None and not settings.module_keys_set:  # no module keys (a plan, or lr_groups alone): all `other`
        mapping = ModuleMap.of(str(model_type), [], [], [])
    if mapping is None:
        key, value = first_set(settings)
        raise ConfigError(
            key,
            value,
            f"model type `{model_type}` is not in LLaMA-Factory's composite-model registry, "
            "so it has no modules to tell apart",
            f"set `learning_rate` instead, or use a registered type ({', '.join(known_types())})",
        )
    flat = flat_parameters(model.named_parameters())
    if flat:
        key, value = first_set(settings)
        raise ConfigError(key, value, f"{FLAT_WHY} (the model holds {len(flat)}, e.g. `{flat[0]}`)", FLAT_FIX)
    ratio = getattr(finetuning_args, "loraplus_lr_ratio", None)
    loraplus = None
    if ratio is not None:
        loraplus = LoraPlus(float(ratio), float(finetuning_args.loraplus_lr_embedding))
    plan = build_plan(
        model.named_parameters(),
        mapping,
        settings,
        float(training_args.learning_rate),
        float(training_args.weight_decay),
        decay_names(model, loraplus is not None),
        loraplus,
        fsdp1_sizes(model),
    )
    check_plan(plan, settings, finetuning_args.finetuning_type)
    return plan


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
        key, value = first_set(settings)
        raise ConfigError(
            key,
            value,
            f"`optim: {getattr(training_args.optim, 'value', training_args.optim)}` builds its own parameter "
            "structure, "
            "which would drop the module groups",
            "choose an optimizer that takes param groups (e.g. adamw_torch), or remove the lf-multilr keys",
        )
    return cls, kwargs


def wrap_create_custom_optimizer(original: Any) -> Any:
    @wraps(original)
    def create_custom_optimizer(model: Any, training_args: Any, finetuning_args: Any) -> Any:
        settings = Settings.read(finetuning_args)
        if not settings.any_set:
            return original(model, training_args, finetuning_args)
        refuse_own_optimizers(settings, finetuning_args)
        plan = plan_for(model, training_args, finetuning_args, settings)
        logger = _logger()
        same = check_ranks(plan.param_groups)  # every rank, before any of them trains
        if same is not None:
            logger.info(same)
        cls, kwargs = optimizer_cls_and_kwargs(training_args, model, settings)
        optimizer = cls(plan.param_groups, **kwargs)
        guard.expect(optimizer.param_groups)
        scheduler_type = str(getattr(training_args.lr_scheduler_type, "value", training_args.lr_scheduler_type))
        scheduler_kwargs = per_group_kwargs(
            scheduler_type,
            training_args.lr_scheduler_kwargs,
            float(training_args.learning_rate),
            [group["lr"] for group in optimizer.param_groups],
        )
        if scheduler_kwargs is not None:
            training_args.lr_scheduler_kwargs = scheduler_kwargs
        logger.info_rank0(format_table(plan, warnings=False))
        for warning in plan.warnings:
            logger.warning_rank0(f"lf-multilr: {warning}")
        return optimizer

    return create_custom_optimizer
