"""What a training log records per module: ``lr/<module>`` for every module that has a param group."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

PREFIXES: tuple[str, ...] = ("lr/", "grad_norm/")


def module_lrs(param_groups: Iterable[Mapping[str, Any]]) -> dict[str, float]:
    """The current LR of each module, read from its first group with an lr relative to the module's.

    Groups that lf-multilr did not build carry no ``module`` key and are ignored, so a stock optimizer
    yields ``{}``.
    """
    lrs: dict[str, float] = {}
    absolute: dict[str, float] = {}
    for group in param_groups:
        module = group.get("module")
        if module is None or module in lrs:
            continue
        scale = group.get("lr_scale")
        if scale:
            lrs[module] = float(group["lr"]) / scale
        else:
            absolute.setdefault(module, float(group["lr"]))
    for module, lr in absolute.items():
        lrs.setdefault(module, lr)
    return {f"lr/{module}": lr for module, lr in lrs.items()}


def module_entries(logs: Mapping[str, Any]) -> dict[str, Any]:
    """The per-module entries of one log record."""
    return {key: value for key, value in logs.items() if key.startswith(PREFIXES)}
