"""The keys in LLaMA-Factory's argument parser, and the checks that run before any weight is loaded."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import sys
from dataclasses import field, make_dataclass
from functools import wraps
from typing import Any

from lf_multilr import engines
from lf_multilr.distributed import fsdp_of, refuse_flat
from lf_multilr.errors import ConfigError
from lf_multilr.keys import KEYS, LR_GROUPS, SWITCHES, Settings, refuse_frozen
from lf_multilr.supplement import rules_for

from . import _state, guard
from .registry import config_model_type, known_types, module_map

#: LLaMA-Factory flags that build an optimizer of their own, which would silently drop the module groups.
OWN_OPTIMIZER_FLAGS: tuple[str, ...] = ("use_galore", "use_apollo", "use_badam", "use_adam_mini", "use_muon")

_classes: dict[type, type] = {}


def keyed_class(base: type) -> type:
    """``base`` (LLaMA-Factory's FinetuningArguments) plus lf-multilr's keys, checked in ``__post_init__``."""
    if base in _classes:
        return _classes[base]

    def __post_init__(self: Any) -> None:
        base.__post_init__(self)  # type: ignore[attr-defined]
        settings = Settings.read(self)
        for key, value in settings.values.items():
            setattr(self, key, value)
        if settings.any_set:  # before LLaMA-Factory's own checks, which may fail on a missing package first
            refuse_lost_targets(settings)
            refuse_engines(settings, engines_at_parse(self))
            refuse_own_optimizers(settings, self)

    _classes[base] = cls = _with_fields(base, key_fields(), __post_init__)
    return cls


def key_fields() -> list[tuple[str, Any, Any]]:
    """lf-multilr's keys as dataclass fields, in LLaMA-Factory's style (``None``: not set)."""
    fields: list[tuple[str, Any, Any]] = [
        (key.name, float | None, field(default=None, metadata={"help": key.help})) for key in KEYS
    ]
    fields += [
        (switch.name, bool, field(default=switch.default, metadata={"help": switch.help})) for switch in SWITCHES
    ]
    fields.append((LR_GROUPS.name, str | None, field(default=None, metadata={"help": LR_GROUPS.help})))
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


def with_v1_refusal(base: type) -> type:
    """The v1 engine's ``TrainingArguments`` (``USE_V1=1``) with lf-multilr's keys, refused when set: that engine
    builds its optimizer through its own plugin registry, so the keys would otherwise be unknown keys there, or be
    dropped silently under ``ALLOW_EXTRA_KEYS``."""
    if base in _classes:
        return _classes[base]

    def __post_init__(self: Any) -> None:
        base.__post_init__(self)  # type: ignore[attr-defined]
        settings = Settings.read(self)
        if settings.any_set:
            refuse_engines(settings, [engines.V1])

    _classes[base] = cls = _with_fields(base, key_fields(), __post_init__)
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
    lost = _state.refusal()
    if lost is not None:
        key, value = first_set(settings)
        raise ConfigError(key, value, *lost)


def own_hyper_parallel_trainer() -> bool:
    """Whether this LLaMA-Factory has a HyperParallelTrainer of its own (main), read from its files: importing it
    needs the hyper_parallel package."""
    spec = importlib.util.find_spec("llamafactory.train")
    folders = spec.submodule_search_locations or [] if spec is not None else []
    return any(os.path.isfile(os.path.join(folder, "hyper_parallel", "trainer.py")) for folder in folders)


def engines_at_parse(finetuning_args: Any) -> list[engines.Engine]:
    """The other back ends this run selects (see :mod:`lf_multilr.engines`), as LLaMA-Factory tells them apart."""
    parser = sys.modules["llamafactory.hparams.parser"]
    return engines.engines_at_parse(
        os.environ,
        bool(getattr(finetuning_args, "use_hyper_parallel", False)),
        own_hyper_parallel_trainer(),
        bool(parser.is_mcore_adapter_available()),
        hasattr(parser, "_TRAIN_MBRIDGE_ARGS"),
    )


def refuse_engines(settings: Settings, found: list[engines.Engine]) -> None:
    if found:
        key, value = first_set(settings)
        raise ConfigError(key, value, found[0].why(), found[0].fix)


def with_keys(classes: list[type]) -> list[type]:
    """A copy of a parser's dataclass list with FinetuningArguments swapped for the keyed subclass."""
    return [keyed_class(cls) if cls.__name__ == "FinetuningArguments" else cls for cls in classes]


def first_set(settings: Settings) -> tuple[str, Any]:
    key = settings.set_keys()[0]
    return key, settings.value_of(key)


def refuse_own_optimizers(settings: Settings, finetuning_args: Any) -> None:
    for flag in OWN_OPTIMIZER_FLAGS:
        if getattr(finetuning_args, flag, False):
            key, value = first_set(settings)
            raise ConfigError(
                key,
                value,
                f"`{flag}: true` builds an optimizer of its own, which would drop the per-module groups",
                f"remove `{flag}` or the lf-multilr keys ({', '.join(settings.set_keys())})",
            )


def _deepspeed_config(value: Any) -> dict[str, Any]:
    if isinstance(value, dict):
        return value
    if isinstance(value, str) and value.strip().startswith("{"):
        return json.loads(value)
    if isinstance(value, str):
        with open(value, encoding="utf-8") as handle:
            return json.load(handle)
    return {}


def refuse_deepspeed_blocks(settings: Settings, training_args: Any) -> None:
    if not getattr(training_args, "deepspeed", None):
        return
    config = _deepspeed_config(training_args.deepspeed)
    for block in ("optimizer", "scheduler"):
        if block in config:
            key, value = first_set(settings)
            raise ConfigError(
                key,
                value,
                f"the DeepSpeed config {training_args.deepspeed!r} has a `{block}` block, and DeepSpeed then builds "
                "one flat param group and ignores the per-module ones",
                f"remove the `{block}` block from the DeepSpeed config (LLaMA-Factory's examples have none)",
            )


def _read_model_type(model_args: Any) -> str | None:
    """The model type from the model's config.json alone, or None when it cannot be read without loading more."""
    try:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(
            model_args.model_name_or_path,
            trust_remote_code=getattr(model_args, "trust_remote_code", False),
            cache_dir=getattr(model_args, "cache_dir", None),
            revision=getattr(model_args, "model_revision", "main"),
            token=getattr(model_args, "hf_hub_token", None),
        )
    except Exception:  # noqa: BLE001 - the optimizer-time check still runs on the loaded model
        return None
    return config_model_type(config)


def preflight(settings: Settings, model_args: Any, training_args: Any, finetuning_args: Any) -> None:
    """Everything that can be refused before the model loads."""
    key, value = first_set(settings)
    refuse_deepspeed_blocks(settings, training_args)
    refuse_flat(key, value, fsdp_of(getattr(training_args, "fsdp_plugin_args", None), os.environ))
    model_type = _read_model_type(model_args) if settings.module_keys_set else None  # lr_groups need no modules
    if model_type is not None and module_map(model_type) is None:
        raise ConfigError(
            key,
            value,
            f"model type `{model_type}` is not in LLaMA-Factory's composite-model registry, so it has no vision "
            "tower, projector or language model to tell apart (a text-only model is all language model)",
            "for a text-only model set `learning_rate` instead; for a multimodal model the registry does not know, "
            "register it first (llamafactory.model.model_utils.visual._register_composite_model) "
            f"or use a registered type ({', '.join(known_types())})",
        )
    # Where the registry misses parts of a module, its freeze flag does not freeze all of it: the optimizer-time
    # check on the prepared model decides.
    unreachable = {rule.module for rule in rules_for(model_type or "") if not rule.registry}
    refuse_frozen(settings, finetuning_args, unreachable)


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
        raise ConfigError(given[0], values[given[0]], engines.KTRANSFORMERS.why(), engines.KTRANSFORMERS.fix)


def wrap_get_train_args(original: Any) -> Any:
    @wraps(original)
    def get_train_args(args: Any = None, *rest: Any, **kwargs: Any) -> Any:
        raw = sys.modules["llamafactory.hparams.parser"].read_args(args)
        refuse_kt(raw)
        parsed = original(raw, *rest, **kwargs)
        model_args, _, training_args, finetuning_args, _ = parsed
        settings = Settings.read(finetuning_args)
        _state.warn_unverified()
        if not settings.any_set:
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
