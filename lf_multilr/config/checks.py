"""What a config asks for that lf-multilr refuses, each with one message: the key, the value, why, and the fix.

Pure decisions: the patches hand in what they read (the parsed arguments, a DeepSpeed config, the FSDP settings, the
model type) and raise what these functions raise. Every refusal names the first lf-multilr key the run sets.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from lf_multilr.config.backends import Backend
from lf_multilr.config.keys import key_name
from lf_multilr.config.settings import Settings
from lf_multilr.errors import ConfigError
from lf_multilr.modules import BASE, TABLE, Module
from lf_multilr.training.floors import DECAYING

#: What accelerate and HF read as true in their environment switches (`strtobool`); lf-multilr's: `_boot.flag`.
_TRUE = ("1", "true", "yes", "y", "on", "t")


def refusal(settings: Settings, why: str, fix: str) -> ConfigError:
    """The error for a run that sets ``settings``' first key, refused because ``why``."""
    key, value = settings.first_set()
    return ConfigError(key, value, why, fix)


def own_optimizer(finetuning_args: Any) -> str | None:
    """Which of LLaMA-Factory's own optimizers its factory builds, in ``create_custom_optimizer``'s order (galore,
    apollo, loraplus, badam, adam_mini, muon), or None."""
    flags = ("use_galore", "use_apollo", "loraplus_lr_ratio", "use_badam", "use_adam_mini", "use_muon")
    for flag in flags:
        value = getattr(finetuning_args, flag, None)
        if value is not None and value is not False:
            return flag.removeprefix("use_").removesuffix("_lr_ratio")
    return None


def _own_structure(finetuning_args: Any) -> tuple[str, Any, str, str] | None:
    """(flag, value, why, fix) where LLaMA-Factory's own optimizer keeps a structure that cannot hold the module
    groups; None where lf-multilr builds it with them."""
    builds = own_optimizer(finetuning_args)
    if builds == "badam" and getattr(finetuning_args, "badam_mode", "layer") == "layer":
        return (
            "badam_mode",
            "layer",
            "BAdam's BlockOptimizer gives every group the first group's LR before each step and rebuilds its base "
            "optimizer's groups (one decay, one no-decay) at every block switch, so no module group would last",
            "set `badam_mode: ratio` (its optimizer keeps the module groups), or remove `use_badam`",
        )
    if builds == "adam_mini":
        return (
            "use_adam_mini",
            "true",
            "Adam-mini is handed the model's named parameters and builds its param groups itself (one per tensor, "
            "keyed by the tensor's name, which its step reads), so it takes no module groups",
            "remove `use_adam_mini` (the keys work with the default AdamW, `use_muon`, `use_galore`, `use_apollo` "
            "and `badam_mode: ratio`)",
        )
    return None


def refuse_own_optimizers(settings: Settings, finetuning_args: Any) -> None:
    """Refuse LLaMA-Factory's own optimizers whose structure cannot hold the module groups (lf-multilr builds the
    others with them)."""
    found = _own_structure(finetuning_args)
    if found is not None:
        flag, value, why, fix = found
        keys = ", ".join(settings.set_keys())
        why = f"`{flag}: {value}` is set, and {why}"
        raise refusal(settings, why, f"{fix}, or remove the lf-multilr keys ({keys})")


def refuse_backends(settings: Settings, found: Sequence[Backend]) -> None:
    """Refuse the keys on a back end that builds its optimizer without LLaMA-Factory's factory."""
    if found:
        raise refusal(settings, found[0].why(), found[0].fix)


def refuse_optimizer_structure(settings: Settings, optim: str) -> None:
    """``optim:`` names an optimizer that builds its own parameter structure (LOMO, layer-wise optimizers)."""
    raise refusal(
        settings,
        f"`optim: {optim}` builds its own parameter structure, which would drop the module groups",
        "choose an optimizer that takes param groups (e.g. adamw_torch), or remove the lf-multilr keys",
    )


#: HF ``optim`` values whose optimizer builds its own parameter structure instead of taking param groups (HF hands
#: them ``model``): LOMO and AdaLOMO. (The layer-wise GaLore and APOLLO forms are built with the module groups, one
#: optimizer per tensor: :mod:`lf_multilr.training.layerwise`.)
STRUCTURE_OPTIMS = frozenset({"lomo", "adalomo"})


def refuse_structure_optim(settings: Settings, optim: Any) -> None:
    """Refuse, before any weight loads, an ``optim`` known to build its own structure (the optimizer factory refuses
    the rest, such as an optimizer factory class, when it builds the optimizer)."""
    name = str(getattr(optim, "value", optim))
    if name in STRUCTURE_OPTIMS:
        refuse_optimizer_structure(settings, name)


def layerwise_form(optim: Any, finetuning_args: Any) -> tuple[str, str, str] | None:
    """How the run asks for layer-wise GaLore or APOLLO (one optimizer per tensor, stepped in its gradient hook):
    (key, value, the value of its plain form): (``galore_layerwise``, ``true``, ``false``), the same for APOLLO, or
    HF's (``optim``, ``galore_adamw_layerwise``, ``galore_adamw``); None where it does not."""
    builds = own_optimizer(finetuning_args)
    if builds in ("galore", "apollo"):
        flag = f"{builds}_layerwise"
        return (flag, "true", "false") if getattr(finetuning_args, flag, False) else None
    name = str(getattr(optim, "value", optim))
    if builds is None and name.startswith(("galore_", "apollo_")) and name.endswith("_layerwise"):
        return "optim", name, name.removesuffix("_layerwise")
    return None


def refuse_layerwise(settings: Settings, training_args: Any, finetuning_args: Any) -> None:
    """What layer-wise GaLore / APOLLO cannot do with the module groups, refused before the weights load: PPO (its own
    scheduler never reaches the per-tensor optimizers), several processes (a tensor would step on its rank's
    gradient), ``reduce_lr_on_plateau`` and ``greedy`` (they step on an eval loss), accumulating gradients (each
    tensor steps in its hook after every backward pass: LLaMA-Factory and HF refuse it only when they build the
    optimizer), and resuming (the checkpoint holds the trainer's dummy optimizer, not the per-tensor optimizers'
    states)."""
    found = layerwise_form(getattr(training_args, "optim", ""), finetuning_args)
    if found is None:
        return
    key, value, plain_value = found
    form, plain = f"{key}: {value}", f"{key}: {plain_value}"
    if getattr(finetuning_args, "stage", None) == "ppo":
        raise ConfigError(
            "stage",
            "ppo",
            f"`stage: ppo` builds its LR scheduler itself (transformers' get_scheduler) over the trainer's optimizer "
            f"alone, so under `{form}` no tensor's own optimizer would follow the run's schedule",
            f"use `{plain}` under PPO, or remove the lf-multilr keys ({', '.join(settings.set_keys())})",
        )
    parallel = str(getattr(getattr(training_args, "parallel_mode", None), "value", ""))
    if parallel == "distributed":
        raise ConfigError(
            key,
            value,
            "each tensor's optimizer would step in its gradient hook on its own rank's gradient, before DDP averages "
            "it across the ranks (HF refuses its layer-wise forms under DDP, LLaMA-Factory its own flags)",
            f"use `{plain}` when training on several processes, or train on one",
        )
    scheduler = str(getattr(training_args.lr_scheduler_type, "value", training_args.lr_scheduler_type))
    if scheduler in ("reduce_lr_on_plateau", "greedy"):
        raise ConfigError(
            "lr_scheduler_type",
            scheduler,
            f"`{form}` gives each tensor a scheduler of its own, stepped without an eval loss, which `{scheduler}` "
            "needs at every step (stock fails there too)",
            f"use a scheduled lr_scheduler_type (e.g. cosine, linear, constant), or `{plain}`",
        )
    accumulation = int(getattr(training_args, "gradient_accumulation_steps", 1) or 1)
    if accumulation != 1:
        raise ConfigError(
            "gradient_accumulation_steps",
            accumulation,
            f"`{form}` steps each tensor's optimizer inside its gradient hook after every backward pass, so it "
            "cannot accumulate gradients (LLaMA-Factory and HF refuse it too, once the weights have loaded)",
            f"set `gradient_accumulation_steps: 1` (a larger `per_device_train_batch_size` instead), or use `{plain}`",
        )
    resume = getattr(training_args, "resume_from_checkpoint", None)
    if resume:
        raise ConfigError(
            "resume_from_checkpoint",
            resume,
            f"`{form}` keeps each tensor's optimizer state outside the checkpoint (the trainer saves only its dummy "
            "optimizer), so the resumed run would restart every tensor's Adam moments and GaLore / APOLLO projection "
            "from zero: its first steps would not be the steps the run was taking",
            f"train afresh (a new `output_dir`, or `overwrite_output_dir: true`), or train with `{plain}` from the "
            f"start, or remove the lf-multilr keys ({', '.join(settings.set_keys())})",
        )


def refuse_ppo_schedule(settings: Settings, finetuning_args: Any) -> None:
    """PPO builds its scheduler with ``transformers.get_scheduler`` itself, where lf-multilr's per-module start,
    warm-up and floor are never applied: those keys would silently do nothing there."""
    if getattr(finetuning_args, "stage", None) != "ppo":
        return
    gated = settings.scheduled()
    if gated:
        key, value = gated[0]
        steps = not key.endswith("min_lr") and float(value).is_integer()  # a step count, kept as a float by the keys
        raise ConfigError(
            key,
            int(value) if steps else value,
            "`stage: ppo` builds its LR scheduler itself (transformers' get_scheduler), so a module's start step, "
            "warm-up and floor would never be applied",
            "remove the start-step, warm-up and min_lr keys under PPO (module LRs and weight decays work there)",
        )


#: Per ``lr_scheduler_type`` that does not decay to an end: why a floor means nothing there, and the fix.
_DECAYING_FIX = "use a decaying lr_scheduler_type ({decaying})"
NOT_DECAYING: dict[str, tuple[str, str]] = {
    "constant": ("`lr_scheduler_type: {name}` never decays, so there is no floor to decay to", _DECAYING_FIX),
    "constant_with_warmup": (
        "`lr_scheduler_type: {name}` never decays after its warm-up, so there is no floor to decay to",
        _DECAYING_FIX,
    ),
    "inverse_sqrt": (
        "`lr_scheduler_type: {name}` decays without an end, so there is no end of decay to put a floor at",
        _DECAYING_FIX,
    ),
    "reduce_lr_on_plateau": (
        "`lr_scheduler_type: {name}` cuts the LR when the eval loss stalls, not on a schedule; its floor is "
        "`lr_scheduler_kwargs: {{min_lr: ...}}`, which lf-multilr gives each module in proportion to its LR",
        "set `lr_scheduler_kwargs: {{min_lr: ...}}`, or " + _DECAYING_FIX,
    ),
    "greedy": (
        "`lr_scheduler_type: {name}` moves the LR on the eval loss, not on a schedule; its floor is "
        "`lr_scheduler_kwargs: {{min_lr: ...}}`, which lf-multilr gives each module in proportion to its LR",
        "set `lr_scheduler_kwargs: {{min_lr: ...}}`, or " + _DECAYING_FIX,
    ),
}


UNKNOWN_DECAY = "`lr_scheduler_type: {name}` is not a schedule whose end of decay lf-multilr knows"


def refuse_floors(settings: Settings, scheduler_type: Any, learning_rate: float) -> None:
    """A floor (``<module>_min_lr``, an ``lr_groups`` entry's ``min_lr``) needs a schedule that decays to an end, and
    a module's floor cannot be above the module's LR (an entry's is checked against its own ``lr`` when it parses,
    and against the LR it inherits when the plan is built)."""
    floors = settings.floors()
    if not floors:
        return
    name = str(getattr(scheduler_type, "value", scheduler_type))
    if name not in DECAYING:
        key, value = floors[0]
        why, fix = NOT_DECAYING.get(name, (UNKNOWN_DECAY, _DECAYING_FIX))
        raise ConfigError(
            key, value, why.format(name=name), f"{fix.format(decaying=', '.join(DECAYING))}, or remove the key"
        )
    resolved = settings.resolve(learning_rate, 0.0)
    for module in settings.table.rows:
        floor, lr = settings.floor(module.name), resolved[module.name][0]
        if floor is not None and floor > lr:
            lr_key = key_name(module.name, "lr")
            source = f"`{lr_key}`" if settings.values.get(lr_key) is not None else "`learning_rate`, which it inherits"
            raise ConfigError(
                key_name(module.name, "min_lr"),
                floor,
                f"it is above the {module.noun}'s LR {lr:g} ({source}), and a floor is what the LR decays to",
                f"give a floor of at most {lr:g}, or raise the {module.noun}'s LR",
            )


def deepspeed_config(value: Any) -> dict[str, Any]:
    """A DeepSpeed config as given: a dict, inline JSON, or a path to a JSON file."""
    if isinstance(value, dict):
        return value
    if isinstance(value, str) and value.strip().startswith("{"):
        return json.loads(value)
    if isinstance(value, str) and value:
        with open(value, encoding="utf-8") as handle:
            return json.load(handle)
    return {}


def deepspeed_given(deepspeed: Any, environ: Mapping[str, str]) -> Any:
    """The DeepSpeed config a run uses: the ``deepspeed`` argument, else the one accelerate's launcher hands over
    (``accelerate launch --use_deepspeed --deepspeed_config_file FILE`` sets ``ACCELERATE_USE_DEEPSPEED`` and
    ``ACCELERATE_DEEPSPEED_CONFIG_FILE``, which HF's arguments read); None when there is none."""
    if deepspeed:
        return deepspeed
    if environ.get("ACCELERATE_USE_DEEPSPEED", "false").strip().lower() in _TRUE:
        path = environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE", "none")
        return None if path == "none" else path
    return None


def refuse_deepspeed_blocks(settings: Settings, deepspeed: Any) -> None:
    """A DeepSpeed config with an ``optimizer`` or ``scheduler`` block builds one flat group."""
    if not deepspeed:
        return
    config = deepspeed_config(deepspeed)
    for block in ("optimizer", "scheduler"):
        if block in config:
            raise refusal(
                settings,
                f"the DeepSpeed config {deepspeed!r} has a `{block}` block, and DeepSpeed then builds one flat param "
                "group and ignores the per-module ones",
                f"remove the `{block}` block from the DeepSpeed config (LLaMA-Factory's examples have none)",
            )


def refuse_unknown_model_type(settings: Settings, model_type: str | None, known: Iterable[str]) -> None:
    """A model type the composite-model registry does not know has no modules to tell apart."""
    raise refusal(
        settings,
        f"model type `{model_type}` is not in LLaMA-Factory's composite-model registry, so it has no "
        f"{settings.table.nouns()} to tell apart (a text-only model is all language model)",
        "for a text-only model set `learning_rate` instead; for a multimodal model the registry does not know, "
        "register it first (llamafactory.model.model_utils.visual._register_composite_model) "
        f"or use a registered type ({', '.join(sorted(known))})",
    )


@dataclass(frozen=True)
class Fsdp:
    """The FSDP settings a run will use: which version, whether FSDP1 keeps the original parameters, and where
    that was read (for messages)."""

    version: int
    use_orig_params: bool
    source: str


def fsdp_of(plugin_args: Mapping[str, Any] | None, environ: Mapping[str, str]) -> Fsdp | None:
    """The run's FSDP settings, or None without FSDP.

    transformers builds accelerate's FSDP plugin from the ``fsdp`` / ``fsdp_config`` training arguments
    (``TrainingArguments.fsdp_plugin_args``, ``use_orig_params`` defaulting to true); without them accelerate
    builds it from the variables ``accelerate launch`` sets from its config (``ACCELERATE_USE_FSDP``,
    ``FSDP_VERSION``, ``FSDP_USE_ORIG_PARAMS``, the latter defaulting to false).
    """
    if plugin_args is not None:
        return Fsdp(
            int(plugin_args.get("fsdp_version", 1)),
            bool(plugin_args.get("use_orig_params", True)),
            "`use_orig_params` under `fsdp_config` in the training arguments",
        )
    if environ.get("ACCELERATE_USE_FSDP", "false").lower() not in _TRUE:
        return None
    return Fsdp(
        int(environ.get("FSDP_VERSION", "1")),
        environ.get("FSDP_USE_ORIG_PARAMS", "false").lower() in _TRUE,
        "`fsdp_use_orig_params` in the accelerate config (FSDP_USE_ORIG_PARAMS="
        f"{environ.get('FSDP_USE_ORIG_PARAMS', 'unset')})",
    )


def refuse_flat(settings: Settings, fsdp: Fsdp | None) -> None:
    """Refuse FSDP1 without ``use_orig_params`` (read from the run's settings, before the model loads)."""
    if fsdp is not None and fsdp.version == 1 and not fsdp.use_orig_params:
        raise refusal(settings, f"{FLAT_WHY} ({fsdp.source})", FLAT_FIX)


def refuse_flat_parameters(settings: Settings, named_parameters: Iterable[tuple[str, Any]]) -> None:
    """Refuse a model whose parameters FSDP1 flattened (the check on the prepared model)."""
    flat = flat_parameters(named_parameters)
    if flat:
        raise refusal(settings, f"{FLAT_WHY} (the model holds {len(flat)}, e.g. `{flat[0]}`)", FLAT_FIX)


def flat_parameters(named_parameters: Iterable[tuple[str, Any]]) -> list[str]:
    """The names of FSDP1 ``FlatParameter`` s: tensors that flatten many parameters, of several modules at once."""
    return [name for name, param in named_parameters if getattr(param, "_is_flat_param", False)]


#: Why FSDP1 without ``use_orig_params`` is refused, and the fix (before the model loads and at optimizer time).
FLAT_WHY = (
    "FSDP1 without `use_orig_params` hands the optimizer one flattened tensor per wrapped block, which mixes "
    f"the modules' parameters, so there is no {BASE.nouns()} to give its own LR"
)
FLAT_FIX = (
    "set `fsdp_use_orig_params: true` in the accelerate config (or `use_orig_params: true` under `fsdp_config`), "
    "or use FSDP2 (`fsdp_version: 2`), or remove the lf-multilr keys"
)


#: The finetuning types whose base weights LLaMA-Factory freezes, training PEFT adapters on the layers its target
#: rule picks (``lora_target``) and full copies of the modules named in ``additional_target``; their names in messages.
ADAPTER_TYPES: dict[str, str] = {"lora": "LoRA", "oft": "OFT"}


def frozen_fix(module: Module, finetuning_type: str) -> str:
    """How to make ``module`` trainable under ``finetuning_type`` (for the error that refuses a frozen module)."""
    unfreeze = f"set `{module.freeze_flag}: false`" if module.freeze_flag else f"make the {module.noun} trainable"
    method = ADAPTER_TYPES.get(finetuning_type)
    if method is None:
        return unfreeze
    if module.lora_copy is None:
        return f"{unfreeze} so that {method} adapts it"
    return (
        f"under {method} the {module.noun} trains through adapters where `lora_target` reaches its linear layers "
        f"(with `{module.freeze_flag}: false`; LLaMA-Factory's `all` reaches them on some models only, such as "
        f"Qwen3-VL's mergers), or as a full copy in `additional_target` ({module.lora_copy})"
    )


def freezing_flag(module: Module, finetuning_args: Any) -> str | None:
    """The flag that freezes ``module`` in this config: its own, or, for a part of another module whose own flag is
    unset, that module's (LLaMA-Factory's ``freeze_vision_tower`` freezes the audio tower too)."""
    flag = module.freeze_flag
    if module.part_of is not None and flag is not None and getattr(finetuning_args, flag, None) is None:
        return TABLE[module.part_of].freeze_flag
    return flag


def refuse_absent_parts(settings: Settings, model_type: str, keys_of: Callable[[str], tuple[str, ...]]) -> None:
    """Refuse a part's key (the audio tower's, or its freeze flag) on a model type that has no such part: none of the
    registry's or the supplement's keys for ``model_type`` place a parameter in it (``keys_of``: the keys of a
    module of the run)."""
    for module in settings.table.parts():
        if keys_of(module.name):
            continue
        keys = settings.explicit(module.name)
        key, value = (keys[0], settings.values[keys[0]]) if keys else (module.freeze_flag, settings.flags[module.name])
        raise ConfigError(
            str(key),
            value,
            f"model type `{model_type}` has no {module.noun}: LLaMA-Factory's registry names none for it",
            "remove the key (the keys of the other modules work as before)",
        )


def refuse_frozen(settings: Settings, finetuning_args: Any, open_modules: Collection[str] = ()) -> None:
    """Refuse a key for a module that the config's own flags leave untrained.

    ``finetuning_args`` is anything with LLaMA-Factory's ``finetuning_type``, ``additional_target`` and ``freeze_*``
    attributes. ``open_modules`` are the modules with parts no set flag reaches (the supplement's placements, see
    :func:`lf_multilr.grouping.supplement.left_open`): their flag alone does not freeze them. Under LoRA or OFT a
    frozen module can still train as a full copy in ``additional_target``; whether its layers get adapters, and
    whether a copy matches them, is decided on the prepared model (before the weights load where the model's
    structure can be built on the meta device, else when the optimizer is built).
    """
    finetuning_type = finetuning_args.finetuning_type
    copies = finetuning_type in ADAPTER_TYPES and bool(finetuning_args.additional_target)
    for module in settings.table.by_order:
        keys = settings.explicit(module.name)
        flag = freezing_flag(module, finetuning_args)
        if keys and not copies and module.name not in open_modules and flag and getattr(finetuning_args, flag, False):
            fix = frozen_fix(module, finetuning_type)
            if flag != module.freeze_flag:  # a part whose own flag is unset: LLaMA-Factory's flag freezes it
                fix = (
                    f"set `{module.freeze_flag}: false` (while it is unset, `{flag}` freezes the {module.noun} "
                    "too, as in LLaMA-Factory)"
                )
            raise ConfigError(
                keys[0],
                settings.values[keys[0]],
                f"`{flag}: true` freezes the {module.name}, so its value would do nothing",
                f"{fix}, or remove the key",
            )
