"""A :class:`GroupPlan` as data (``lf-multilr plan --json``)."""

from __future__ import annotations

from typing import Any

from lf_multilr.grouping.plan import GroupPlan, numel


def plan_to_dict(plan: GroupPlan) -> dict[str, Any]:
    """``{"model_type", "modules": {name: {...}}, "param_groups": [...], "frozen", "warnings"}``; each param group
    names its tensors (``params``: the parameter names, wrapper prefixes removed). A module or group with a floor
    carries it as ``min_lr``.

    A trainable module counts what trains (with LoRA: the adapter matrices and copies); a frozen one what it holds.
    """
    modules = {}
    for name, row in plan.rows.items():
        if row.tensors == 0:
            continue
        modules[name] = {
            "num_tensors": row.trainable_tensors if row.trainable else row.tensors,
            "num_params": row.trainable_params if row.trainable else row.params,
            "trainable": row.trainable,
            "lr": row.lr,
            "weight_decay": row.weight_decay,
        }
        if row.min_lr is not None:  # only where a floor is set: a config without one plans as before
            modules[name]["min_lr"] = row.min_lr
    groups = [
        {
            "name": group["name"],
            "module": group["module"],
            "lr": group["lr"],
            "weight_decay": group["weight_decay"],
            "num_tensors": len(group["params"]),
            "num_params": sum(numel(p) for p in group["params"]),
            "layout": group["layout"],
            "params": plan.names_of(group),
            **({"min_lr": group["min_lr"]} if "min_lr" in group else {}),
        }
        for group in plan.param_groups
    ]
    tensors, params = plan.frozen
    return {
        "model_type": plan.model_type,
        "modules": modules,
        "param_groups": groups,
        "frozen": {"num_tensors": tensors, "num_params": params},
        "warnings": list(plan.warnings),
    }
