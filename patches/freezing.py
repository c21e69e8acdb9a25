"""Freezing the audio tower apart from the vision tower (``freeze_audio_tower``) in LLaMA-Factory's own freezing.

LLaMA-Factory's registry files every audio encoder under the vision keys, so its ``freeze_vision_tower`` freezes
both towers. When a config sets ``freeze_audio_tower`` (true or false), the keys of the audio tower (the table's
audio row: the registry's vision keys that start with ``audio_tower``, ``apm`` ...) are frozen by that flag alone,
and ``freeze_vision_tower`` freezes the rest of the vision keys. Unset, LLaMA-Factory's freezing is untouched.
"""

from __future__ import annotations

from functools import wraps
from typing import Any

from lf_multilr.modules import TABLE

from ._state import logger
from .registry import module_map


def _split(config: Any, finetuning_args: Any) -> list[tuple[str, bool, set[str], set[str]]]:
    """Per part of a module whose own flag is set: (its flag, its value, its registry keys, the keys that other
    frozen modules hold too)."""
    mapping = module_map(getattr(config, "model_type", None), TABLE)
    found = []
    for part in TABLE.parts():
        own = getattr(finetuning_args, str(part.freeze_flag), None)
        keys = set(mapping.keys[part.name]) if mapping is not None else set()
        if own is None or not keys:
            continue
        held = {
            key
            for row in TABLE.rows
            if row.name not in (part.name, part.part_of) and getattr(finetuning_args, str(row.freeze_flag), False)
            for key in mapping.keys[row.name]  # type: ignore[union-attr]
        }
        found.append((str(part.freeze_flag), bool(own), keys, held))
    return found


def wrap_get_forbidden_modules(original: Any) -> Any:
    @wraps(original)
    def get_forbidden_modules(config: Any, finetuning_args: Any) -> set[str]:
        forbidden: set[str] = original(config, finetuning_args)
        for flag, own, keys, held in _split(config, finetuning_args):
            forbidden -= keys - held  # what `freeze_vision_tower` froze of them
            if own:
                forbidden |= keys
            logger().info_rank0(
                f"lf-multilr: `{flag}: {str(own).lower()}`: {', '.join(sorted(keys))} "
                f"{'frozen' if own else 'trainable'} by this flag alone."
            )
        return forbidden

    return get_forbidden_modules


def _linear_names(model: Any, keys: set[str], excluded: set[str]) -> set[str]:
    """The last name part of every linear layer under ``keys`` and under none of ``excluded``, by LLaMA-Factory's rule
    for ``lora_target: all`` (``find_all_linear_modules``)."""
    found = set()
    for name, module in model.named_modules():
        kind = module.__class__.__name__
        if "Linear" not in kind or "Embedding" in kind:
            continue
        if any(key in name for key in keys) and not any(key in name for key in excluded):
            found.add(name.split(".")[-1])
    return found


def wrap_patch_target_modules(original: Any) -> Any:
    """``lora_target: all``: LLaMA-Factory collects the linear layers' names with ``freeze_vision_tower`` alone, which
    leaves out the layer names only an audio tower has when ``freeze_audio_tower: false`` trains it; they are added
    (the projector's aside, as LLaMA-Factory leaves them out), and the forbidden keys above keep the frozen tower's
    layers out of the targets."""

    @wraps(original)
    def patch_target_modules(model: Any, finetuning_args: Any, target_modules: list[str]) -> list[str]:
        target = list(getattr(finetuning_args, "lora_target", []) or [])
        if target == ["all"] and getattr(finetuning_args, "freeze_vision_tower", False):
            mapping = module_map(getattr(model.config, "model_type", None), TABLE)
            projector = set(mapping.keys["multi_modal_projector"]) if mapping is not None else set()
            trained = [keys for _, own, keys, _ in _split(model.config, finetuning_args) if not own]
            for keys in trained:
                target_modules = [*target_modules, *sorted(_linear_names(model, keys, projector) - set(target_modules))]
        return list(original(model, finetuning_args, target_modules))

    return patch_target_modules
