"""LLaMA-Factory's composite-model registry, read into lf-multilr's :class:`ModuleMap` with its supplement."""

from __future__ import annotations

from typing import Any

from lf_multilr.grouping.placement import ModuleMap
from lf_multilr.grouping.supplement import rules_for
from lf_multilr.modules import BASE, RegistryEntry, Table


def _composite_models() -> dict[str, Any]:
    # LLaMA-Factory's package checks first: on transformers > 5.3 they mend `_is_package_available`, which trl reads
    # when it is first imported; `llamafactory.model` imports trl before them, and a trl imported that way later
    # fails to import its DPO trainer (`No module named 'mergekit'`).
    import llamafactory.extras.packages  # noqa: F401
    from llamafactory.model.model_utils.visual import COMPOSITE_MODELS

    return COMPOSITE_MODELS


def known_types() -> list[str]:
    return sorted(_composite_models())


def module_map(model_type: str | None, table: Table = BASE) -> ModuleMap | None:
    """The registry's keys for ``model_type`` and the supplement's rules for the run's modules (``table``: the
    settings'), or None when the registry does not know it."""
    entry = _composite_models().get(model_type or "")
    if entry is None:
        return None
    projector = getattr(entry, "projector_keys", None)
    if projector is None:  # LLaMA-Factory < 0.9.5 has a single `projector_key`
        projector = [entry.projector_key]
    keys = RegistryEntry(tuple(projector), tuple(entry.vision_model_keys), tuple(entry.language_model_keys))
    return ModuleMap.from_registry(str(model_type), keys, rules_for(str(model_type)), table)


def config_model_type(config: Any) -> str | None:
    """The model type LLaMA-Factory will see: the config's own, or a registered sub-config's (omni thinkers)."""
    model_type = getattr(config, "model_type", None)
    if model_type in _composite_models():
        return model_type
    thinker_type = getattr(getattr(config, "thinker_config", None), "model_type", None)
    return thinker_type if thinker_type in _composite_models() else model_type


def model_config(model: Any) -> Any:
    """The HF config of a model, through PEFT and value-head wrappers."""
    config = getattr(model, "config", None)
    if config is None and hasattr(model, "pretrained_model"):
        config = getattr(model.pretrained_model, "config", None)
    return config
