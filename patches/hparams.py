"""The keys in LLaMA-Factory's argument parser, and the checks that run before any weight is loaded.

The keys' values are read and checked once, when LLaMA-Factory's parser builds its finetuning arguments
(``__post_init__`` of the keyed class), and the settings are kept on those arguments (``settings_of``) for the
optimizer factory, the plan and the web UI.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import sys
from dataclasses import field, make_dataclass
from functools import wraps
from typing import Any

from lf_multilr.config import backends
from lf_multilr.config.callbacks import callback_classes, names_of
from lf_multilr.config.checks import (
    ADAPTER_TYPES,
    deepspeed_given,
    freezing_flag,
    fsdp_of,
    own_optimizer,
    refusal,
    refuse_absent_parts,
    refuse_backends,
    refuse_deepspeed_blocks,
    refuse_flat,
    refuse_floors,
    refuse_frozen,
    refuse_layerwise,
    refuse_own_optimizers,
    refuse_ppo_schedule,
    refuse_structure_optim,
    refuse_unknown_model_type,
)
from lf_multilr.config.keys import CALLBACKS, FREEZE_FLAGS, KEYS, LR_GROUPS, SWITCHES
from lf_multilr.config.settings import Settings, keep, settings_of
from lf_multilr.errors import ConfigError
from lf_multilr.grouping.supplement import left_open

from . import _state, guard
from ._state import STATE
from .adapters import check_adapted
from .callbacks import add_to_run
from .registry import config_model_type, known_types, module_map


def keyed_class(base: type) -> type:
    """``base`` (LLaMA-Factory's FinetuningArguments) plus lf-multilr's keys, read and checked in ``__post_init__``."""
    if base in STATE.keyed_classes:
        return STATE.keyed_classes[base]

    def __post_init__(self: Any) -> None:
        base.__post_init__(self)  # type: ignore[attr-defined]
        settings = keep(self, Settings.read(self))
        for key, value in settings.values.items():
            setattr(self, key, value)
        callbacks = getattr(self, CALLBACKS.name)
        # imported and checked here, before any weight loads; added to the run being set up, if any
        classes = callback_classes(callbacks, os.environ)
        if classes:
            add_to_run(classes, callbacks)
        setattr(self, CALLBACKS.name, list(names_of(callbacks)) or None)
        if settings.any_set:  # before LLaMA-Factory's own checks, which may fail on a missing package first
            refuse_lost_targets(settings)
            refuse_backends(settings, backends_at_parse(self))
            refuse_own_optimizers(settings, self)
            refuse_ppo_schedule(settings, self)

    STATE.keyed_classes[base] = cls = _with_fields(base, key_fields(), __post_init__)
    return cls


def key_fields() -> list[tuple[str, Any, Any]]:
    """lf-multilr's keys as dataclass fields, in LLaMA-Factory's style (``None``: not set)."""
    fields: list[tuple[str, Any, Any]] = [
        (key.name, float | None, field(default=None, metadata={"help": key.help})) for key in KEYS
    ]
    fields += [(flag.name, bool | None, field(default=None, metadata={"help": flag.help})) for flag in FREEZE_FLAGS]
    fields += [
        (switch.name, bool, field(default=switch.default, metadata={"help": switch.help})) for switch in SWITCHES
    ]
    fields.append((LR_GROUPS.name, str | None, field(default=None, metadata={"help": LR_GROUPS.help})))
    fields.append((CALLBACKS.name, list[str] | None, field(default=None, metadata={"help": CALLBACKS.help})))
    return fields


def _with_fields(base: type, fields: list[tuple[str, Any, Any]], post_init: Any) -> type:
    cls = make_dataclass(
        base.__name__,
        fields,
        bases=(base,),
        namespace={"__post_init__": post_init, "__doc__": base.__doc__, "__module__": __name__},
    )
    cls.__qualname__ = base.__name__
    return cls


def args_list_shape(value: Any) -> str | None:
    """Why a parser's dataclass list is not the shape :func:`with_keys` takes, or None."""
    if not isinstance(value, list):
        return f"it is a {type(value).__name__}, no longer a list of argument classes"
    if value and not any(getattr(cls, "__name__", "") == "FinetuningArguments" for cls in value):
        return "its argument classes no longer include FinetuningArguments"
    return None


def dataclass_shape(value: Any) -> str | None:
    return None if dataclasses.is_dataclass(value) and isinstance(value, type) else "it is no longer a dataclass"


def refuse_lost_targets(settings: Settings) -> None:
    """Refuse the keys when a target they need is missing, changed or older than verified here."""
    lost = _state.keys_lost()
    if lost is not None:
        raise refusal(settings, *lost)


def own_hyper_parallel_trainer() -> bool:
    """Whether this LLaMA-Factory has a HyperParallelTrainer of its own (main), read from its files: importing it
    needs the hyper_parallel package."""
    spec = importlib.util.find_spec("llamafactory.train")
    folders = spec.submodule_search_locations or [] if spec is not None else []
    return any(os.path.isfile(os.path.join(folder, "hyper_parallel", "trainer.py")) for folder in folders)


def backends_at_parse(finetuning_args: Any) -> list[backends.Backend]:
    """The other back ends this run selects (:mod:`lf_multilr.config.backends`), as LLaMA-Factory tells them apart."""
    parser = sys.modules["llamafactory.hparams.parser"]
    return backends.backends_at_parse(
        os.environ,
        bool(getattr(finetuning_args, "use_hyper_parallel", False)),
        own_hyper_parallel_trainer(),
        bool(parser.is_mcore_adapter_available()),
        hasattr(parser, "_TRAIN_MBRIDGE_ARGS"),
    )


def with_keys(classes: list[type]) -> list[type]:
    """A copy of a parser's dataclass list with FinetuningArguments swapped for the keyed subclass."""
    return [keyed_class(cls) if cls.__name__ == "FinetuningArguments" else cls for cls in classes]


def read_config(model_args: Any) -> Any:
    """The model's config alone (``config.json``); None, with one warning, when it cannot be read without loading
    more (a config the hub must be asked for, remote code): then the same checks run on the loaded model."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(
            model_args.model_name_or_path,
            trust_remote_code=getattr(model_args, "trust_remote_code", False),
            cache_dir=getattr(model_args, "cache_dir", None),
            revision=getattr(model_args, "model_revision", "main"),
            token=getattr(model_args, "hf_hub_token", None),
        )
    except (OSError, ValueError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        _state.warn_once(
            f"the model type of `{model_args.model_name_or_path}` cannot be read before the model loads ({first}); "
            "the keys are checked against the model once it has loaded."
        )
        return None


def read_model_type(model_args: Any) -> str | None:
    """The model type from the model's ``config.json`` alone (:func:`read_config`); None where it cannot be read."""
    config = read_config(model_args)
    return None if config is None else config_model_type(config)


def frozen_modules(settings: Settings, finetuning_args: Any) -> set[str]:
    """The modules whose freeze flag the run sets (a part whose own flag is unset: the flag of the module it is part
    of, as in LLaMA-Factory)."""
    flags = {module.name: freezing_flag(module, finetuning_args) for module in settings.table.rows}
    return {name for name, flag in flags.items() if flag and getattr(finetuning_args, flag, False)}


def preflight(settings: Settings, model_args: Any, training_args: Any, finetuning_args: Any) -> None:
    """Everything that can be refused before the model loads (the run and ``lf-multilr plan`` alike)."""
    if own_optimizer(finetuning_args) != "muon":  # LLaMA-Factory's Muon takes no `optim`
        refuse_structure_optim(settings, getattr(training_args, "optim", ""))
    refuse_layerwise(settings, training_args, finetuning_args)
    refuse_floors(settings, training_args.lr_scheduler_type, float(training_args.learning_rate))
    refuse_deepspeed_blocks(settings, deepspeed_given(getattr(training_args, "deepspeed", None), os.environ))
    refuse_flat(settings, fsdp_of(getattr(training_args, "fsdp_plugin_args", None), os.environ))
    refuse_untrained(settings, model_args, training_args, finetuning_args)


def refuse_untrained(settings: Settings, model_args: Any, training_args: Any, finetuning_args: Any) -> None:
    """Refuse a module key for a module the run would not train, from the model's ``config.json`` alone: a type the
    registry does not know, a module its freeze flag freezes, and under LoRA or OFT a module that LLaMA-Factory's
    adapter setup leaves without an adapter or a copy (on the model built on the meta device)."""
    config = read_config(model_args) if settings.module_keys_set else None  # lr_groups need no modules
    model_type = None if config is None else config_model_type(config)
    if model_type is not None and module_map(model_type) is None:
        refuse_unknown_model_type(settings, model_type, known_types())
    refuse_parts(settings, model_type)
    # Where the supplement places parts of a module that no set flag reaches, the flags alone do not freeze all of
    # it: the prepared model decides.
    refuse_frozen(settings, finetuning_args, left_open(model_type or "", frozen_modules(settings, finetuning_args)))
    if config is not None and finetuning_args.finetuning_type in ADAPTER_TYPES:
        check_adapted(settings, config, model_args, training_args, finetuning_args)


def refuse_parts(settings: Settings, model_type: str | None) -> None:
    """Refuse an audio-tower key or ``freeze_audio_tower`` on a model type without an audio tower (``model_type``:
    as read before the model loads; None: not read)."""
    if model_type is None or not settings.table.parts():
        return
    mapping = module_map(model_type, settings.table)
    refuse_absent_parts(settings, model_type, mapping.keys_of if mapping is not None else lambda module: ())


def parser_keys() -> list[str]:
    """The keys LLaMA-Factory's training parser accepts (the fields of its argument classes, lf-multilr's aside when
    it is not applied), sorted. ``python -m lf_multilr.patches.parser_keys`` prints them."""
    parser = importlib.import_module("llamafactory.hparams.parser")
    return sorted({field.name for cls in parser._TRAIN_ARGS for field in dataclasses.fields(cls)})


def read_args(args: Any = None) -> Any:
    """The arguments as LLaMA-Factory reads them (a YAML or JSON file and ``key=value`` overrides from the command
    line, or the dict or list given)."""
    return sys.modules["llamafactory.hparams.parser"].read_args(args)


def raw_values(raw: Any) -> dict[str, Any]:
    """The arguments as given (a config's dict, or ``--key value`` pairs from the command line), unparsed."""
    if isinstance(raw, dict):
        return raw
    items = [str(item) for item in raw or ()]
    return {
        name[2:].replace("-", "_"): value
        for name, value in zip(items, [*items[1:], ""], strict=True)
        if name.startswith("--")
    }


def refuse_kt(raw: Any) -> None:
    """KTransformers (``use_kt``, a model argument) is refused before LLaMA-Factory parses, because its parser loads
    KTransformers' packages first."""
    values = raw_values(raw)
    if str(values.get("use_kt", "")).lower() not in ("true", "1", "yes"):
        return
    given = [key.name for key in KEYS if values.get(key.name) is not None]
    given += [LR_GROUPS.name] if values.get(LR_GROUPS.name) else []
    if given:
        raise ConfigError(given[0], values[given[0]], backends.KTRANSFORMERS.why(), backends.KTRANSFORMERS.fix)


def wrap_get_train_args(original: Any) -> Any:
    @wraps(original)
    def get_train_args(args: Any = None, *rest: Any, **kwargs: Any) -> Any:
        raw = read_args(args)
        refuse_kt(raw)
        parsed = original(raw, *rest, **kwargs)
        model_args, _, training_args, finetuning_args, _ = parsed
        settings = settings_of(finetuning_args)
        _state.warn_unverified()
        if not settings.any_set:
            if settings.table.parts():  # `freeze_audio_tower` alone: LLaMA-Factory's freezing, split
                lost = _state.keys_lost()
                if lost is not None:
                    flag = next(str(row.freeze_flag) for row in settings.table.parts())
                    raise ConfigError(flag, getattr(finetuning_args, flag), *lost)
                refuse_parts(settings, read_model_type(model_args))
            guard.disarm()
            return parsed
        preflight(settings, model_args, training_args, finetuning_args)
        if getattr(finetuning_args, "use_hyper_parallel", False) and training_args.resume_from_checkpoint:
            _state.warn_once(
                "resuming under hyper-parallel: its own loader restores the optimizer state, so lf-multilr cannot "
                "check that the checkpoint was saved for the same param groups; resume with the keys and freeze "
                "flags it was trained with."
            )
        guard.arm()
        return parsed

    return get_train_args
