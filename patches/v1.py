"""LLaMA-Factory's v1 engine (``USE_V1=1``): lf-multilr's optimizer and scheduler as v1 plugins named ``multilr``,
and the parts v1 has no plugin point for (the checks before the model loads, the logs, the first-step check,
resuming), each a patch of v1's internals in the table of targets.

v1 builds its optimizer with ``OptimizerPlugin(optim_config.name)(model, optim_config)`` after wrapping the model for
DDP or FSDP2, and its scheduler with ``LRSchedulerPlugin(name)(optimizer, num_training_steps, config)``. Each family
keeps its own registry (LLaMA-Factory main); lf-multilr adds ``multilr`` to both when their modules are imported, as
a copy of the registry (reverted exactly), without touching LLaMA-Factory's files. The scheduler sees only the
optimizer, the step count and its config: each module's start step and warm-up travel in its param groups.
"""

from __future__ import annotations

import importlib
import math
import os
from collections.abc import Callable, Mapping
from functools import wraps
from types import SimpleNamespace
from typing import Any, cast

import torch

from lf_multilr.config import backends
from lf_multilr.config.callbacks import callback_classes
from lf_multilr.config.checks import refuse_unknown_model_type
from lf_multilr.config.keys import CALLBACKS, CALLBACKS_ENV
from lf_multilr.config.settings import Settings, keep
from lf_multilr.config.v1 import (
    FREEZE_FLAGS,
    OPTIM_CONFIG,
    PLUGIN,
    SCHEDULER_CONFIG,
    OptimConfig,
    SchedulerConfig,
    names_plugin,
    read_optim_config,
    read_scheduler_config,
)
from lf_multilr.errors import ConfigError
from lf_multilr.grouping.checks import check_plan
from lf_multilr.grouping.placement import ModuleMap
from lf_multilr.grouping.plan import GroupPlan, MuonSplit, build_plan
from lf_multilr.grouping.schema import ours
from lf_multilr.reports.table import format_table
from lf_multilr.training.guard import V1_FIX, missing_groups, stop_message, ungated, ungated_message
from lf_multilr.training.metrics import GradNormMonitor, module_lrs
from lf_multilr.training.schedule import v1_lambdas

from . import guard
from ._state import STATE, logger
from .distributed import check_ranks
from .optimizer import muon_over_groups
from .registry import config_model_type, known_types, model_config, module_map

OPTIMIZERS = "llamafactory.v1.plugins.trainer_plugins.optimizers.optimizer"
SCHEDULERS = "llamafactory.v1.plugins.trainer_plugins.lr_scheduler"
OPTIMIZER_REGISTRY, SCHEDULER_REGISTRY = "OptimizerPlugin._registry", "LRSchedulerPlugin._registry"
CONFIG = "llamafactory.v1.config"
ARG_PARSER = "llamafactory.v1.config.arg_parser"
CALLBACK_HANDLER = "llamafactory.v1.utils.callbacks.trainer_callback"
CHECKPOINT = "llamafactory.v1.core.utils.checkpoint"
BASE_TRAINER = "llamafactory.v1.core.base_trainer"
#: v1's stage trainers (sft, dpo, rm): they import `get_args`, and dpo and rm also `TrainingArguments`, by name.
TRAINERS = tuple(f"llamafactory.v1.trainers.{stage}_trainer" for stage in ("sft", "dpo", "rm"))

#: Why this LLaMA-Factory's v1 engine cannot take the plugins, where its registries are not main's.
SHARED_REGISTRY = (
    "this LLaMA-Factory's v1 engine keeps one plugin registry for every plugin family (an optimizer and a scheduler "
    "both named `multilr` would overwrite each other) and has no multimodal data path"
)
V1_ELSEWHERE = (
    "train with LLaMA-Factory's default engine (unset USE_V1, and give the keys at the top level of the config), or "
    "with LLaMA-Factory main, whose v1 engine takes them"
)


# -- the plugins ------------------------------------------------------------------------------------------------


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside DDP's wrapper (FSDP2 shards in place and keeps the model's class and names)."""
    inner = getattr(model, "module", None)
    while isinstance(inner, torch.nn.Module):
        model, inner = inner, getattr(inner, "module", None)
    return model


def _is_peft(model: torch.nn.Module) -> bool:
    try:
        from peft import PeftModel
    except ImportError:
        return False
    return isinstance(unwrap(model), PeftModel)


def hf_decay_names(model: torch.nn.Module) -> set[str]:
    """HF's rule (v0's default path): no decay for biases and norm weights."""
    from transformers import Trainer

    return set(Trainer.get_decay_parameter_names(None, model))  # type: ignore[arg-type]


def create_optimizer(model: torch.nn.Module, optim_config: Mapping[str, Any]) -> torch.optim.Optimizer:
    """The ``multilr`` optimizer plugin: AdamW over lf-multilr's module groups of the model v1 hands it (wrapped
    for DDP or sharded by FSDP2: the wrapper prefixes are removed before a name is placed)."""
    plan, config = plan_for(model, optim_config)
    same = check_ranks(plan.param_groups)  # every rank, before any of them trains
    if same is not None:
        logger().info(same)
    groups = cast(list[dict[str, Any]], plan.param_groups)
    if config.base == "muon":
        optimizer = muon_over(groups, config)
    else:
        optimizer = torch.optim.AdamW(groups, lr=config.learning_rate, weight_decay=config.weight_decay, **config.adamw)
    guard.expect(optimizer.param_groups)
    if config.log_module_metrics:
        STATE.v1_monitors[optimizer] = GradNormMonitor.of_groups(optimizer.param_groups)
    optimizer.register_step_pre_hook(_measure)
    logger().info_rank0(format_table(plan, warnings=False))
    for warning in plan.warnings:
        logger().warning_rank0(f"lf-multilr: {warning}")
    return optimizer


class V1MuonSplit(MuonSplit):
    """v1's Muon plugin's rule (``create_muon_optimizer``): a 2-D tensor whose name holds none of ``embed``,
    ``lm_head``, ``wte``, ``wpe`` and ``lora`` steps with Muon, the rest with its internal AdamW."""

    describe = (
        "base: muon: v1's Muon steps the 2-D matrices (not embeddings, lm_head, wte, wpe or LoRA factors), its AdamW "
        "the rest"
    )

    @staticmethod
    def uses_muon(name: str, tensor: torch.Tensor) -> bool:
        return tensor.ndim == 2 and not any(part in name for part in ("embed", "lm_head", "wte", "wpe", "lora"))


def muon_over(groups: list[dict[str, Any]], config: OptimConfig) -> torch.optim.Optimizer:
    """v1's own Muon class, built as its plugin builds it (its defaults, or the keys given), then holding the module
    groups: ``<module>/muon`` and ``<module>/adamw``, each at its module's LR and weight decay (``wd``: Muon decays
    every tensor; :func:`~lf_multilr.patches.optimizer.muon_over_groups`)."""
    muon = config.muon
    return muon_over_groups(
        importlib.import_module(f"{OPTIMIZERS.rsplit('.', 1)[0]}.muon_optimizer").Muon,
        groups,
        lr=config.learning_rate,
        wd=config.weight_decay,
        momentum=muon.get("momentum", 0.95),
        nesterov=muon.get("nesterov", True),
        ns_steps=muon.get("ns_steps", 5),
        adamw_betas=tuple(muon.get("adamw_betas", [0.9, 0.95])),
        adamw_eps=muon.get("adamw_eps", 1e-8),
    )


def plan_for(model: torch.nn.Module, optim_config: Mapping[str, Any]) -> tuple[GroupPlan, OptimConfig]:
    """The checked plan for the model v1 hands the optimizer plugin (or ``lf-multilr plan`` builds on the meta
    device), and the plugin's config read."""
    config = read_optim_config(optim_config)
    settings = config.settings
    model_type = config_model_type(model_config(unwrap(model)))
    mapping = module_map(model_type)
    if mapping is None and settings.module_keys_set:
        refuse_unknown_model_type(settings, model_type, known_types())
    if mapping is None and config.frozen:
        flag = next(flag for flag, module in FREEZE_FLAGS.items() if module == config.frozen[0])
        raise ConfigError(
            f"{OPTIM_CONFIG}.{flag}",
            True,
            f"model type `{model_type}` is not in LLaMA-Factory's composite-model registry, so lf-multilr cannot tell "
            f"which parameters are its {config.frozen[0]}",
            f"remove the key, or train a model type the registry knows ({', '.join(known_types())})",
        )
    if mapping is None:
        mapping = ModuleMap.none(str(model_type))
    named = list(model.named_parameters())
    freeze(named, mapping, config.frozen)
    decay = {name for name, _ in named} if config.decay_every_tensor else hf_decay_names(model)
    split = V1MuonSplit() if config.base == "muon" else None
    plan = build_plan(named, mapping, settings, config.learning_rate, config.weight_decay, decay, split)
    check_plan(plan, "lora" if _is_peft(model) else "full")
    return plan, config


def freeze(named: list[tuple[str, torch.nn.Parameter]], mapping: ModuleMap, frozen: tuple[str, ...]) -> None:
    """v1 has no freeze flags: the modules the plugin's ``freeze_*`` keys name stop taking gradients before the groups
    are built, so none of their tensors joins a group or gets optimizer state. v1 wrapped the model before (DDP
    keeps its hooks on them, and reduces nothing for a tensor without a gradient)."""
    if not frozen:
        return
    for name, param in named:
        if mapping.owner(name) in frozen:
            param.requires_grad_(False)


def create_scheduler(optimizer: Any, num_training_steps: int, lr_scheduler_config: Mapping[str, Any]) -> Any:
    """The ``multilr`` scheduler plugin: a warm-up and a decay for every group alike, each module's start step and
    own warm-up gated on top (read from its groups)."""
    config = read_scheduler_config(lr_scheduler_config)
    lambdas = v1_lambdas(
        optimizer.param_groups, int(num_training_steps), config.warmup_steps, config.decay, config.min_lr_rate
    )
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda=lambdas)


def registry_shape(value: Any) -> str | None:
    return None if isinstance(value, dict) else f"it is a {type(value).__name__}, no longer a dict of plugins"


def with_optimizer(registry: dict[str, Any]) -> dict[str, Any]:
    """v1's optimizer registry with ``multilr`` added (a copy: revert puts the original back)."""
    return {**registry, PLUGIN: create_optimizer}


def with_scheduler(registry: dict[str, Any]) -> dict[str, Any]:
    return {**registry, PLUGIN: create_scheduler}


# -- the config, before the model loads -------------------------------------------------------------------------


def unsupported(section: str) -> str | None:
    """Why this LLaMA-Factory's v1 engine cannot take lf-multilr's plugin for ``section``; None where it can. Imports
    the registry's module (a few small ones), which registers the plugin."""
    owner, registry = (OPTIMIZERS, OPTIMIZER_REGISTRY) if section == OPTIM_CONFIG else (SCHEDULERS, SCHEDULER_REGISTRY)
    try:  # main's optimizer family has a module of its own; 0.9.5's one registry serves every family
        importlib.import_module(OPTIMIZERS)
        importlib.import_module(owner)
    except ImportError:
        return SHARED_REGISTRY
    dotted = f"{owner}.{registry}"
    if dotted in STATE.applied:
        return None
    decision = STATE.decided.get(dotted)
    status = decision.status() if decision is not None else "not applied"
    return f"lf-multilr's plugin could not be registered in this LLaMA-Factory's v1 registry ({status})"


def refuse_top_level(settings: Settings) -> None:
    """lf-multilr's keys at the top level of a v1 config: v1 takes them inside ``optim_config``."""
    key, value = settings.first_set()
    if unsupported(OPTIM_CONFIG) is None:
        raise ConfigError(
            key,
            value,
            "`USE_V1=1` trains with LLaMA-Factory's v1 engine, which takes lf-multilr's keys inside `optim_config`",
            f"move it there: `optim_config: {{name: {PLUGIN}, {key}: {value}}}`",
        )
    raise ConfigError(key, value, backends.V1.why(), backends.V1.fix)


def check_plugin_configs(training_args: Any) -> bool:
    """Check what the v1 config gives lf-multilr's plugins; whether it names the optimizer plugin."""
    read: dict[str, Any] = {}
    for section in (OPTIM_CONFIG, SCHEDULER_CONFIG):
        config = getattr(training_args, section, None)
        if not names_plugin(config):
            continue
        why = unsupported(section)
        if why is not None:
            raise ConfigError(f"{section}.name", PLUGIN, why, V1_ELSEWHERE)
        read[section] = (read_optim_config if section == OPTIM_CONFIG else read_scheduler_config)(config)
    if OPTIM_CONFIG in read:
        refuse_floors_without_decay(read[OPTIM_CONFIG], read.get(SCHEDULER_CONFIG))
    return OPTIM_CONFIG in read


def refuse_floors_without_decay(optim: OptimConfig, scheduler: SchedulerConfig | None) -> None:
    """A floor (``<module>_min_lr``, an ``lr_groups`` entry's ``min_lr``) needs a decay to end at: v1 alone keeps a
    constant LR (``scheduler`` None: the plugin not named), and the scheduler plugin's ``decay: constant`` does not
    decay."""
    floors = optim.settings.floors()
    if not floors or (scheduler is not None and scheduler.decay != "constant"):
        return
    key, value = floors[0]
    why = (
        "the scheduler plugin's `decay: constant` does not decay"
        if scheduler is not None
        else f"without `{SCHEDULER_CONFIG}: {{name: {PLUGIN}}}` the v1 engine keeps a constant LR"
    )
    raise ConfigError(
        f"{OPTIM_CONFIG}.{key}",
        value,
        f"{why}, so there is no floor to decay to",
        f"add `{SCHEDULER_CONFIG}: {{name: {PLUGIN}, decay: cosine}}` (or `decay: linear`), or remove the key",
    )


def with_v1_keys(base: type) -> type:
    """The v1 engine's ``TrainingArguments``: lf-multilr's keys at the top level refused (v1 takes them inside
    ``optim_config``), the plugins' configs checked, and the first-step check armed when the optimizer plugin is
    named."""
    from .hparams import _with_fields, key_fields

    if base in STATE.keyed_classes:
        return STATE.keyed_classes[base]

    def __post_init__(self: Any) -> None:
        base.__post_init__(self)  # type: ignore[attr-defined]
        settings = keep(self, Settings.read(self))
        if settings.any_set:
            refuse_top_level(settings)
        callbacks = getattr(self, CALLBACKS.name)
        if callback_classes(callbacks, os.environ):  # v1 never runs `_training_function`, where they join a run
            key, value = (CALLBACKS.name, callbacks) if callbacks else (CALLBACKS_ENV, os.environ.get(CALLBACKS_ENV))
            raise ConfigError(
                key,
                value,
                "`USE_V1=1` trains with LLaMA-Factory's v1 engine, which never runs the callbacks lf-multilr adds",
                f"unset USE_V1 to train with LLaMA-Factory's default engine, or remove `{CALLBACKS.name}` and unset "
                f"{CALLBACKS_ENV}",
            )
        if check_plugin_configs(self):
            guard.arm()
        else:
            guard.disarm()

    STATE.keyed_classes[base] = cls = _with_fields(base, key_fields(), __post_init__)
    return cls


def preflight(model_args: Any, training_args: Any) -> None:
    """What can be refused before the model loads: a module key for a model type the registry does not know."""
    from .hparams import read_model_type

    optim_config = getattr(training_args, OPTIM_CONFIG, None)
    if not names_plugin(optim_config):
        return
    settings = read_optim_config(optim_config).settings
    if not settings.module_keys_set:
        return
    given = SimpleNamespace(
        model_name_or_path=model_args.model, trust_remote_code=getattr(model_args, "trust_remote_code", False)
    )
    model_type = read_model_type(given)
    if model_type is not None and module_map(model_type) is None:
        refuse_unknown_model_type(settings, model_type, known_types())


def wrap_get_args(original: Callable[..., Any]) -> Callable[..., Any]:
    @wraps(original)
    def get_args(args: Any = None, *rest: Any, **kwargs: Any) -> Any:
        parsed = original(args, *rest, **kwargs)
        preflight(parsed[0], parsed[2])
        return parsed

    return get_args


# -- during training: the first-step check and the logs -----------------------------------------------------------


def _measure(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
    """Before each step (after v1 clipped the gradients): the LRs the step uses and each module's gradient norm."""
    monitor = STATE.v1_monitors.get(optimizer)
    entries: dict[str, Any] = dict(module_lrs(optimizer.param_groups))
    if monitor is not None:
        monitor.measure(0)
        entries.update(monitor.entries(0))
    STATE.v1_measured[optimizer] = entries


def log_entries(measured: Mapping[str, float], grad_norm: Any) -> dict[str, float]:
    """The step's ``lr/<module>`` and ``grad_norm/<module>`` entries. v1 measures its ``grad_norm`` before clipping
    and clips every gradient by one factor: the modules' norms, measured after it, are scaled back by that factor."""
    entries = dict(measured)
    norms = {key: value for key, value in measured.items() if key.startswith("grad_norm/")}
    clipped = math.sqrt(sum(value * value for value in norms.values()))
    if norms and clipped > 0 and isinstance(grad_norm, (int, float)) and math.isfinite(grad_norm):
        entries.update({key: value * float(grad_norm) / clipped for key, value in norms.items()})
    return entries


def _verify(trainer: Any) -> None:
    optimizer = guard.innermost(getattr(trainer, "optimizer", None))
    expected = STATE.guard.expected
    groups = getattr(optimizer, "param_groups", [])
    why = missing_groups(expected, groups)
    guard.disarm()
    if why is not None:
        kind = f"a {type(optimizer).__module__}.{type(optimizer).__qualname__}"
        init = type(trainer).__dict__.get("_init_optimizer")
        where = f" from `{type(trainer).__qualname__}._init_optimizer`" if init is not None else ""
        built_by = f"{kind}{where}, not lf-multilr's optimizer plugin"
        if expected is not None:
            built_by = f"{kind} that is not the one lf-multilr's optimizer plugin built (something replaced it)"
        raise RuntimeError(stop_message(why, built_by, V1_FIX))
    gate = ungated(groups, int(getattr(trainer, "global_step", 0) or 0))
    if gate is not None:
        raise RuntimeError(ungated_message(gate))


def wrap_callback_call(original: Callable[..., Any]) -> Callable[..., Any]:
    """v1's callback handler: before ``on_train_begin`` reaches the callbacks, the first-step check; before
    ``on_log`` does, the step's per-module entries join the record (``trainer_log.jsonl`` is written from it)."""

    @wraps(original)
    def _call(self: Any, event: str, args: Any, state: Any, **kwargs: Any) -> Any:
        trainer = getattr(self, "trainer", None)
        if trainer is not None and event == "on_train_begin" and guard.armed():
            _verify(trainer)
        elif trainer is not None and event == "on_log" and isinstance(kwargs.get("logs"), dict):
            optimizer = guard.innermost(getattr(trainer, "optimizer", None))
            measured = STATE.v1_measured.pop(optimizer, None) if optimizer is not None else None
            if measured:
                logs = kwargs["logs"]
                logs.update(log_entries(measured, logs.get("grad_norm")))
        return original(self, event, args, state, **kwargs)

    return _call


# -- resuming -----------------------------------------------------------------------------------------------------


def wrap_resume(original: Callable[..., Any]) -> Callable[..., Any]:
    """v1's checkpoint resume: the optimizer state is loaded only into the param groups it was saved for, and a full
    checkpoint's weights (DDP or one process; the saved hub layout) through the model's own key renaming, which v1's
    loader lacks (stock v1 stops on the missing keys of a composite model)."""
    from .resume import checked_loading, hub_layout_loading

    @wraps(original)
    def resume(self: Any, ckpt_path: str, *args: Any, **kwargs: Any) -> Any:
        trainer = self._t
        optimizer = guard.innermost(getattr(trainer, "optimizer", None))
        if optimizer is None or not ours(optimizer.param_groups):
            return original(self, ckpt_path, *args, **kwargs)
        with (
            checked_loading(optimizer, ckpt_path, _is_peft(trainer.model), "model"),
            hub_layout_loading(unwrap(trainer.model), ckpt_path),
        ):
            return original(self, ckpt_path, *args, **kwargs)

    return resume


# -- lf-multilr plan ----------------------------------------------------------------------------------------------


def make_plan(config: dict[str, Any]) -> GroupPlan:
    """``lf-multilr plan`` of a v1 config: v1's own parser with the run's checks, the model built from its
    ``config.json`` on the meta device with the auto class v1 picks, and the optimizer plugin's plan."""
    from llamafactory.v1.config import get_args
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText

    model_args, _, training_args, _ = get_args(config)
    guard.disarm()  # nothing trains here
    optim_config = getattr(training_args, OPTIM_CONFIG, None)
    if not names_plugin(optim_config):
        raise ConfigError(
            f"{OPTIM_CONFIG}.name",
            getattr(optim_config, "get", lambda _: None)("name"),
            "this v1 config does not name lf-multilr's optimizer plugin, so it trains without module groups",
            f"add `{OPTIM_CONFIG}: {{name: {PLUGIN}, ...}}` with the keys",
        )
    if getattr(model_args, "peft_config", None) is not None:
        raise ConfigError(
            "peft_config",
            dict(model_args.peft_config),
            "lf-multilr plan builds v1 models without their adapters",
            "plan the full fine-tuning config (the same module keys), or run it: the run prints its table",
        )
    hf_config = AutoConfig.from_pretrained(model_args.model, trust_remote_code=model_args.trust_remote_code)
    auto = (
        AutoModelForImageTextToText
        if type(hf_config) in AutoModelForImageTextToText._model_mapping
        else AutoModelForCausalLM
    )
    with torch.device("meta"):
        model = auto.from_config(hf_config, trust_remote_code=model_args.trust_remote_code)
    return plan_for(model, optim_config)[0]
