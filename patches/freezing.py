"""Freezing the audio tower apart from the vision tower (``freeze_audio_tower``) in LLaMA-Factory's own freezing.

LLaMA-Factory's registry files every audio encoder under the vision keys, so its ``freeze_vision_tower`` freezes
both towers. When a config sets ``freeze_audio_tower`` (true or false), the keys of the audio tower (the table's
audio row: the registry's vision keys that start with ``audio_tower``, ``apm`` ...) are frozen by that flag alone,
and ``freeze_vision_tower`` freezes the rest of the vision keys. Unset, LLaMA-Factory's freezing is untouched.
"""

from __future__ import annotations

import sys
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


def wrap_patch_target_modules(original: Any) -> Any:
    """``lora_target: all``: LLaMA-Factory collects the linear layers' names with ``freeze_vision_tower`` alone, which
    leaves out every layer name of an audio tower that ``freeze_audio_tower: false`` trains; with that flag set the
    names are collected from the whole model, and the forbidden keys above drop the frozen tower's."""

    @wraps(original)
    def patch_target_modules(model: Any, finetuning_args: Any, target_modules: list[str]) -> list[str]:
        target = list(getattr(finetuning_args, "lora_target", []) or [])
        split = _split(model.config, finetuning_args)
        if (
            target == ["all"]
            and not getattr(finetuning_args, "use_llama_pro", False)
            and getattr(finetuning_args, "freeze_vision_tower", False)
            and any(not own for _, own, _, _ in split)
        ):
            misc = sys.modules["llamafactory.model.model_utils.misc"]
            target_modules = misc.find_all_linear_modules(model, False)
        return list(original(model, finetuning_args, target_modules))

    return patch_target_modules
