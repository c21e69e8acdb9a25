"""Optimizer creation: one param group per module (and per role inside it) in every training stage."""

from __future__ import annotations

import copy
import importlib
from functools import wraps
from typing import Any

import torch

from lf_multilr.config.checks import (
    layerwise_form,
    own_optimizer,
    refuse_absent_parts,
    refuse_flat_parameters,
    refuse_optimizer_structure,
    refuse_own_optimizers,
    refuse_unknown_model_type,
)
from lf_multilr.config.settings import Settings, settings_of
from lf_multilr.grouping.checks import badam_ratio_warnings, check_plan
from lf_multilr.grouping.placement import ModuleMap
from lf_multilr.grouping.plan import GroupPlan, LoraPlus, MuonSplit, Projected, Split, build_plan
from lf_multilr.reports.table import format_table
from lf_multilr.training import layerwise
from lf_multilr.training.metrics import LAYERWISE_UNLOGGED, stage_notes

from . import guard
from ._state import logger
from .distributed import check_ranks, fsdp1_sizes
from .registry import config_model_type, known_types, model_config, module_map


def trainer_utils() -> Any:
    """LLaMA-Factory's optimizer factory module (imported where it is not yet: a plan, and the check before the weights
    load, run before LLaMA-Factory's trainers import it)."""
    return importlib.import_module("llamafactory.train.trainer_utils")


def decay_names(model: torch.nn.Module, llamafactorys: bool) -> set[str]:
    """The names the replaced path decays: LLaMA-Factory's rule for its own optimizers (LoRA+, GaLore, APOLLO, BAdam),
    HF's for the default path."""
    if llamafactorys:
        return set(trainer_utils()._get_decay_parameter_names(model))
    from transformers import Trainer

    # HF's rule is an instance method that reads nothing from the instance.
    return set(Trainer.get_decay_parameter_names(None, model))  # type: ignore[arg-type]


def projected_names(model: torch.nn.Module, finetuning_args: Any, kind: str) -> frozenset[str]:
    """The tensors LLaMA-Factory's GaLore or APOLLO projects (``_create_galore_optimizer``'s rule): the trainable
    matrices of the ``nn.Linear`` modules whose names hold a target (``all``: LLaMA-Factory's linear modules)."""
    targets = list(getattr(finetuning_args, f"{kind}_target"))
    if targets == ["all"]:
        targets = trainer_utils().find_all_linear_modules(model, finetuning_args.freeze_vision_tower)
    return frozenset(
        name
        for module_name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and any(target in module_name for target in targets)
        for name, param in module.named_parameters(prefix=module_name)
        if param.requires_grad and len(param.shape) > 1
    )


def optim_name(training_args: Any) -> str:
    return str(getattr(training_args.optim, "value", training_args.optim))


def is_layerwise(training_args: Any, finetuning_args: Any) -> bool:
    """Whether the run's GaLore or APOLLO is the layer-wise form (one optimizer per tensor, stepped in its gradient
    hook): LLaMA-Factory's ``galore_layerwise`` / ``apollo_layerwise``, or HF's ``optim: *_layerwise``."""
    return layerwise_form(training_args.optim, finetuning_args) is not None


def hf_low_rank(training_args: Any, model: torch.nn.Module) -> tuple[str, Any, dict[str, Any], list[Any]] | None:
    """HF's ``optim: galore_*`` / ``apollo_*``: (kind, class, kwargs, HF's two groups: the other tensors, then the
    projected ones with the projection's settings); None for any other ``optim``. The layer-wise forms are read as
    their plain form (the same class, kwargs and groups: HF's layer-wise build would register its own hooks)."""
    optim = optim_name(training_args)
    if not optim.startswith(("galore_", "apollo_")):
        return None
    if optim.endswith("_layerwise"):
        training_args = copy.copy(training_args)
        training_args.optim = type(training_args.optim)(optim.removesuffix("_layerwise"))
    cls, kwargs = transformers_trainer().get_optimizer_cls_and_kwargs(training_args, model)
    groups = kwargs.pop("params")
    return optim.split("_", 1)[0], cls, kwargs, groups


def split_of(model: torch.nn.Module, finetuning_args: Any, training_args: Any) -> Split:
    """How each module is split into roles: as the optimizer LLaMA-Factory's factory would build splits the model
    (:func:`own_optimizer`), or HF's GaLore / APOLLO ``optim``, HF's decay split otherwise (BAdam's ratio mode: with
    LLaMA-Factory's decay rule)."""
    builds = own_optimizer(finetuning_args)
    low_rank = hf_low_rank(training_args, model) if builds is None else None
    if low_rank is not None:
        names = {id(param): name for name, param in model.named_parameters()}
        return Projected(low_rank[0], frozenset(names[id(param)] for param in low_rank[3][1]["params"]), False)
    if builds in ("galore", "apollo"):
        return Projected(builds, projected_names(model, finetuning_args, builds))
    if builds == "loraplus":
        return LoraPlus(float(finetuning_args.loraplus_lr_ratio), float(finetuning_args.loraplus_lr_embedding))
    if builds == "muon":
        return MuonSplit()
    return None


#: LLaMA-Factory's GaLore / APOLLO class for each ``optim`` it accepts (``_create_galore_optimizer``,
#: ``_create_apollo_optimizer``); other values are LLaMA-Factory's own NotImplementedError.
PROJECTED_CLASSES = {
    "galore": {
        "adamw_torch": "GaLoreAdamW",
        "adamw_bnb_8bit": "GaLoreAdamW8bit",
        "adamw_8bit": "GaLoreAdamW8bit",
        "paged_adamw_8bit": "GaLoreAdamW8bit",
        "adafactor": "GaLoreAdafactor",
    },
    "apollo": {"adamw_torch": "APOLLOAdamW"},
}


def projection_settings(finetuning_args: Any, kind: str) -> dict[str, Any]:
    """The settings LLaMA-Factory puts on its GaLore / APOLLO group."""
    if kind == "galore":
        return {
            "rank": finetuning_args.galore_rank,
            "update_proj_gap": finetuning_args.galore_update_interval,
            "scale": finetuning_args.galore_scale,
            "proj_type": finetuning_args.galore_proj_type,
        }
    return {
        "rank": finetuning_args.apollo_rank,
        "proj": finetuning_args.apollo_proj,
        "proj_type": finetuning_args.apollo_proj_type,
        "update_proj_gap": finetuning_args.apollo_update_interval,
        "scale": finetuning_args.apollo_scale,
        "scale_type": finetuning_args.apollo_scale_type,
        "scale_front": finetuning_args.apollo_scale_front,
    }


def stock_positions(model: torch.nn.Module, split: Projected) -> dict[int, int]:
    """Each trainable tensor's 1-based position in the groups LLaMA-Factory's factory builds (no-decay, decay, then
    the projected tensors in module order), by ``id``: APOLLO seeds a tensor's random projection by it."""
    decay = decay_names(model, True)
    named = [(name, param) for name, param in model.named_parameters() if param.requires_grad]
    order = [param for name, param in named if name not in split.names and name not in decay]
    order += [param for name, param in named if name not in split.names and name in decay]
    params = dict(named)
    projected = [
        params[name]
        for module_name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear)
        for name, _ in module.named_parameters(prefix=module_name)
        if name in split.names
    ]
    return {id(param): position for position, param in enumerate([*order, *projected], start=1)}


def projected_optimizer(
    param_groups: list[Any], model: torch.nn.Module, training_args: Any, finetuning_args: Any, split: Projected
) -> torch.optim.Optimizer:
    """GaLore's or APOLLO's optimizer over the plan's groups: the class and kwargs stock picks (LLaMA-Factory's for
    its flags, HF's for its ``optim``), the projection's settings on each module's projected group. APOLLO seeds each
    tensor's random projection by its position among the groups: each keeps the seed stock grouping gives it, so
    regrouping changes no projection. The layer-wise form (:mod:`lf_multilr.training.layerwise`): one such optimizer
    per tensor, over a one-tensor copy of its module's group."""
    low_rank = hf_low_rank(training_args, model) if own_optimizer(finetuning_args) is None else None
    if low_rank is not None:
        _, cls, kwargs, stock_groups = low_rank
        settings = {key: value for key, value in stock_groups[1].items() if key != "params"}
        order = [param for group in stock_groups for param in group["params"]]
        positions = {id(param): position for position, param in enumerate(order, start=1)}
    else:
        name = PROJECTED_CLASSES[split.kind].get(optim_name(training_args))
        if name is None:
            raise NotImplementedError(f"Unknown optim: {training_args.optim}.")  # LLaMA-Factory's own error
        cls = getattr(trainer_utils(), name)
        _, kwargs = transformers_trainer().get_optimizer_cls_and_kwargs(training_args)
        settings = projection_settings(finetuning_args, split.kind)
        positions = stock_positions(model, split)
    for group in param_groups:
        if group["role"] == split.kind:
            group.update(settings)
    if is_layerwise(training_args, finetuning_args):  # each tensor seeded 1, as in stock's one-tensor optimizers
        return layerwise.build(param_groups, lambda group: cls([group], **kwargs), float(training_args.learning_rate))
    optimizer = cls(param_groups, **kwargs)
    if split.kind == "apollo":
        for group in optimizer.param_groups:
            for param in group["params"]:
                optimizer.state[param]["seed"] = positions[id(param)]
    return optimizer


def badam_ratio_optimizer(
    plan: GroupPlan, model: torch.nn.Module, training_args: Any, finetuning_args: Any
) -> torch.optim.Optimizer:
    """BAdam's ``BlockOptimizerRatio`` as LLaMA-Factory's ``_create_badam_optimizer`` builds it, over the plan's groups
    (LLaMA-Factory's decay split, per module): its step reads each group's ``lr``."""
    ratio = importlib.import_module("badam").BlockOptimizerRatio
    _, kwargs = transformers_trainer().get_optimizer_cls_and_kwargs(training_args)
    return ratio(  # type: ignore[no-any-return]
        param_groups=plan.param_groups,
        named_parameters_list=list(model.named_parameters()),
        update_ratio=finetuning_args.badam_update_ratio,
        mask_mode=finetuning_args.badam_mask_mode,
        verbose=finetuning_args.badam_verbose,
        include_embedding=False,
        **kwargs,
    )


def transformers_trainer() -> Any:
    from transformers import Trainer

    return Trainer


def muon_over_groups(muon_class: Any, param_groups: list[Any], **kwargs: Any) -> torch.optim.Optimizer:
    """A Muon class of the design LLaMA-Factory's and v1's share, built with ``kwargs``, each tensor marked Muon or
    AdamW by its group's role, then holding the plan's groups instead of its own: its step reads ``lr`` and its
    weight decay ``wd`` from each group, so every group gets its module's."""
    optimizer = muon_class(
        muon_params=[tensor for group in param_groups if group["role"] == "muon" for tensor in group["params"]],
        adamw_params=[tensor for group in param_groups if group["role"] == "adamw" for tensor in group["params"]],
        **kwargs,
    )
    optimizer.param_groups = []
    for group in param_groups:
        optimizer.add_param_group(group)
        group["wd"] = group["weight_decay"]
    return optimizer  # type: ignore[no-any-return]


def muon_optimizer(param_groups: list[Any], training_args: Any) -> torch.optim.Optimizer:
    """LLaMA-Factory's own Muon class, built as its ``_create_muon_optimizer`` builds it (the class's defaults, the
    run's ``learning_rate`` and ``weight_decay`` as its defaults, the run's AdamW betas and epsilon), over the plan's
    groups (:func:`muon_over_groups`)."""
    return muon_over_groups(
        importlib.import_module("llamafactory.third_party.muon").Muon,
        param_groups,
        lr=training_args.learning_rate,
        wd=training_args.weight_decay,
        adamw_betas=(training_args.adam_beta1, training_args.adam_beta2),
        adamw_eps=training_args.adam_epsilon,
    )


def plan_for(model: torch.nn.Module, training_args: Any, finetuning_args: Any, settings: Settings) -> GroupPlan:
    """The checked plan for ``model`` as LLaMA-Factory has prepared it (frozen, PEFT-wrapped, ...)."""
    plan = build_for(model, training_args, finetuning_args, settings)
    check_plan(plan, finetuning_args.finetuning_type)
    return plan


def build_for(model: torch.nn.Module, training_args: Any, finetuning_args: Any, settings: Settings) -> GroupPlan:
    """The plan for ``model`` as LLaMA-Factory has prepared it, before :func:`check_plan`."""
    model_type = config_model_type(model_config(model))
    mapping = module_map(model_type, settings.table)
    if mapping is None and settings.module_keys_set:
        refuse_unknown_model_type(settings, model_type, known_types())
    if mapping is None:  # no module keys (a plan, or lr_groups alone): all `other`
        mapping = ModuleMap.none(str(model_type), settings.table)
    elif settings.module_keys_set:  # where the model type could not be read before the model loaded
        refuse_absent_parts(settings, str(model_type), mapping.keys_of)
    refuse_flat_parameters(settings, model.named_parameters())
    split = split_of(model, finetuning_args, training_args)
    hf_low_rank_split = isinstance(split, Projected) and not split.decays  # HF's GaLore / APOLLO: no weight decay
    plan = build_plan(
        model.named_parameters(),
        mapping,
        settings,
        float(training_args.learning_rate),
        float(training_args.weight_decay),
        set() if hf_low_rank_split else decay_names(model, own_optimizer(finetuning_args) not in (None, "muon")),
        split,
        fsdp1_sizes(model),
    )
    if is_layerwise(training_args, finetuning_args):
        plan.notes.append(LAYERWISE_UNLOGGED)
    if own_optimizer(finetuning_args) == "badam":  # its ratio mode: the layer mode is refused
        plan.warnings.extend(badam_ratio_warnings(plan, [name for name, _ in model.named_parameters()]))
    decays = [key for key in settings.set_keys() if key.endswith("_weight_decay")]
    if hf_low_rank_split and decays:
        plan.warnings.append(
            f"`optim: {optim_name(training_args)}` applies no weight decay (HF builds it so): {', '.join(decays)} "
            "do nothing."
        )
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
        refuse_optimizer_structure(settings, optim_name(training_args))
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
        split = split_of(model, finetuning_args, training_args)
        if isinstance(split, MuonSplit):
            optimizer = muon_optimizer(plan.param_groups, training_args)
        elif isinstance(split, Projected):
            optimizer = projected_optimizer(plan.param_groups, model, training_args, finetuning_args, split)
        elif own_optimizer(finetuning_args) == "badam":
            optimizer = badam_ratio_optimizer(plan, model, training_args, finetuning_args)
        else:
            cls, kwargs = optimizer_cls_and_kwargs(training_args, model, settings)
            optimizer = cls(plan.param_groups, **kwargs)
            keep_embeddings_in_32_bits(cls, kwargs, model)
        guard.expect(layerwise.stepping_groups(optimizer))
        plan.notes.extend(stage_notes(getattr(finetuning_args, "stage", None)))
        logger().info_rank0(format_table(plan, warnings=False))
        for warning in plan.warnings:
            logger().warning_rank0(f"lf-multilr: {warning}")
        return optimizer

    return create_custom_optimizer
