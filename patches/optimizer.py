"""Optimizer creation: one param group per module (and per role inside it) in every training stage."""

from __future__ import annotations

import importlib
import sys
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
from lf_multilr.grouping.plan import GroupPlan, LoraPlus, MuonSplit, Split, build_plan
from lf_multilr.reports.table import format_table
from lf_multilr.training.metrics import stage_notes

from . import guard
from ._state import logger
from .distributed import check_ranks, fsdp1_sizes
from .registry import config_model_type, known_types, model_config, module_map


def decay_names(model: torch.nn.Module, loraplus: bool) -> set[str]:
    """The names the replaced path decays: LLaMA-Factory's rule for LoRA+, HF's for the default path."""
    if loraplus:
        return set(sys.modules["llamafactory.train.trainer_utils"]._get_decay_parameter_names(model))
    from transformers import Trainer

    # HF's rule is an instance method that reads nothing from the instance.
    return set(Trainer.get_decay_parameter_names(None, model))  # type: ignore[arg-type]


def split_of(finetuning_args: Any) -> Split:
    """How each module is split into roles, in LLaMA-Factory's order of precedence (``create_custom_optimizer``):
    LoRA+ before Muon, HF's decay split when neither is set."""
    ratio = getattr(finetuning_args, "loraplus_lr_ratio", None)
    if ratio is not None:
        return LoraPlus(float(ratio), float(finetuning_args.loraplus_lr_embedding))
    if getattr(finetuning_args, "use_muon", False):
        return MuonSplit()
    return None


def muon_optimizer(param_groups: list[Any], training_args: Any) -> torch.optim.Optimizer:
    """LLaMA-Factory's own Muon class, built as its ``_create_muon_optimizer`` builds it (the class's defaults, the
    run's ``learning_rate`` and ``weight_decay`` as its defaults, the run's AdamW betas and epsilon; each tensor marked
    Muon or AdamW), then holding the plan's groups instead of its one: its step reads ``lr`` and its weight decay
    ``wd`` from each group, so every group gets its module's."""
    muon_class = importlib.import_module("llamafactory.third_party.muon").Muon
    optimizer = muon_class(
        lr=training_args.learning_rate,
        wd=training_args.weight_decay,
        muon_params=[tensor for group in param_groups if group["role"] == "muon" for tensor in group["params"]],
        adamw_params=[tensor for group in param_groups if group["role"] == "adamw" for tensor in group["params"]],
        adamw_betas=(training_args.adam_beta1, training_args.adam_beta2),
        adamw_eps=training_args.adam_epsilon,
    )
    optimizer.param_groups = []
    for group in param_groups:
        optimizer.add_param_group(group)
        group["wd"] = group["weight_decay"]
    return optimizer


def plan_for(model: torch.nn.Module, training_args: Any, finetuning_args: Any, settings: Settings) -> GroupPlan:
    """The checked plan for ``model`` as LLaMA-Factory has prepared it (frozen, PEFT-wrapped, ...)."""
    model_type = config_model_type(model_config(model))
    mapping = module_map(model_type)
    if mapping is None and settings.module_keys_set:
        refuse_unknown_model_type(settings, model_type, known_types())
    if mapping is None:  # no module keys (a plan, or lr_groups alone): all `other`
        mapping = ModuleMap.none(str(model_type))
    refuse_flat_parameters(settings, model.named_parameters())
    split = split_of(finetuning_args)
    plan = build_plan(
        model.named_parameters(),
        mapping,
        settings,
        float(training_args.learning_rate),
        float(training_args.weight_decay),
        decay_names(model, isinstance(split, LoraPlus)),
        split,
        fsdp1_sizes(model),
    )
    check_plan(plan, finetuning_args.finetuning_type)
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
        refuse_optimizer_structure(settings, str(getattr(training_args.optim, "value", training_args.optim)))
    return cls, kwargs


def keep_embeddings_in_32_bits(cls: Any, kwargs: dict[str, Any], model: torch.nn.Module) -> int:
    """What HF's ``Trainer.create_optimizer`` does after building an 8-bit bitsandbytes optimizer, and only when it
    builds the optimizer itself: register 32-bit optimizer state for the weight of every ``nn.Embedding``
    (bitsandbytes' ``GlobalOptimManager``, read at the optimizer's first step). The same rule, for the optimizer
    lf-multilr builds instead; returns how many embeddings were registered."""
    if "bitsandbytes" not in str(cls) or kwargs.get("optim_bits", None) != 8:
        return 0
    manager = importlib.import_module("bitsandbytes.optim").GlobalOptimManager.get_instance()
    embeddings = [module for module in model.modules() if isinstance(module, torch.nn.Embedding)]
    for module in embeddings:
        manager.register_module_override(module, "weight", {"optim_bits": 32})
    return len(embeddings)


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
        if isinstance(split_of(finetuning_args), MuonSplit):
            optimizer = muon_optimizer(plan.param_groups, training_args)
        else:
            cls, kwargs = optimizer_cls_and_kwargs(training_args, model, settings)
            optimizer = cls(plan.param_groups, **kwargs)
            keep_embeddings_in_32_bits(cls, kwargs, model)
        guard.expect(optimizer.param_groups)
        plan.notes.extend(stage_notes(getattr(finetuning_args, "stage", None)))
        logger().info_rank0(format_table(plan, warnings=False))
        for warning in plan.warnings:
            logger().warning_rank0(f"lf-multilr: {warning}")
        return optimizer

    return create_custom_optimizer
