"""The keys lf-multilr adds to a torch param group: one schema, read the same way by every reader.

A param group lf-multilr builds is a plain dict (torch and HF copy, save and restore param groups as dicts), typed
here as :class:`ModuleGroup`. Besides torch's ``params``, ``lr`` and ``weight_decay`` it carries which module it
belongs to, its role inside the module, a digest of its parameter names, and what its LR is relative to. A group
without ``module`` is not lf-multilr's (a stock optimizer's, or one restored from a stock checkpoint).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NotRequired, TypedDict

import torch

#: The key that marks a group as lf-multilr's: the module (or custom group) it belongs to.
MODULE = "module"
#: The key that holds a digest of the group's parameter names, in order (see :mod:`.digests`).
LAYOUT = "layout"


class ModuleGroup(TypedDict):
    params: list[torch.Tensor]
    lr: float
    weight_decay: float
    #: ``module/role[/block]``: what logs, tables and messages call it.
    name: str
    #: The module (a row of :mod:`lf_multilr.modules`' table, or ``other``) or custom group it belongs to.
    module: str
    #: How the module is split: decay, no_decay (HF's rule), or lora_a, lora_b, lora_b_nodecay, embedding (LoRA+).
    role: str
    layout: str
    #: ``lr`` over the module's own LR (LoRA+'s ratio, layer-wise decay), or None for an LR of its own (LoRA+'s
    #: embedding LR). A scale of 0 is a real value.
    lr_scale: float | None
    #: The optimizer step the group starts training at, and its own warm-up (only when a module sets them).
    start_step: NotRequired[int]
    warmup_steps: NotRequired[int | None]
    #: The LR the group decays to (only when its module or custom group sets a floor, ``min_lr``).
    min_lr: NotRequired[float]


def is_ours(group: Mapping[str, Any]) -> bool:
    """Whether lf-multilr built this group."""
    return MODULE in group


def module_of(group: Mapping[str, Any]) -> str | None:
    """The module (or custom group) of one of lf-multilr's groups; None for any other group."""
    module = group.get(MODULE)
    return None if module is None else str(module)


def ours(groups: Any) -> list[Mapping[str, Any]]:
    """lf-multilr's groups among an optimizer's ``param_groups``."""
    return [group for group in groups if is_ours(group)]


def module_lr(group: Mapping[str, Any]) -> float | None:
    """The LR of the group's module that this group's LR derives from, or None when the group's LR is its own."""
    scale = group.get("lr_scale")
    if scale is None or scale == 0:  # an LR of its own, or a scale that keeps nothing of the module's LR
        return None
    return float(group["lr"]) / float(scale)


def schedule_of(group: Mapping[str, Any]) -> tuple[int, int | None]:
    """(start step, warm-up steps or None) of a group; (0, None) when its module follows the run's schedule."""
    return int(group.get("start_step") or 0), group.get("warmup_steps")


def floor_of(group: Mapping[str, Any]) -> float | None:
    """The LR a group decays to, or None when it follows the run's end of decay."""
    floor = group.get("min_lr")
    return None if floor is None else float(floor)
