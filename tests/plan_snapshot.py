"""The param groups lf-multilr plans for every zoo type, as data: what ``tests/plan_snapshot.json`` holds.

``PYTHONPATH=. python tests/plan_snapshot.py`` rewrites the file from the code on the path. It was written by the code
before per-stack layer decay and ``language_model_lr_layer_decay``; ``tests/test_models.py`` compares today's plans
with it, so a config without the new key plans bit-for-bit the same groups (names, members in order, LRs, weight
decays).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

FILE = Path(__file__).with_name("plan_snapshot.json")

#: The configs snapshotted: module LRs and a weight decay; and the same with the vision tower's layer decay.
CONFIGS: dict[str, dict[str, float]] = {
    "modules": {
        "vision_tower_lr": 1.0e-5,
        "multi_modal_projector_lr": 1.0e-4,
        "language_model_lr": 2.0e-5,
        "vision_tower_weight_decay": 0.1,
    },
    "vision decay": {"vision_tower_lr": 1.0e-5, "language_model_lr": 2.0e-5, "vision_tower_lr_layer_decay": 0.8},
}


def snapshot(model_type: str, values: dict[str, float]) -> list[dict[str, Any]]:
    """The groups of ``model_type``'s zoo model (every tensor trainable) under ``values``."""
    from lf_multilr.config.keys import KEY_NAMES
    from lf_multilr.config.settings import Settings
    from lf_multilr.grouping.plan import build_plan
    from lf_multilr.patches.registry import module_map
    from tools import zoo

    net = zoo.build(model_type)
    net.requires_grad_(True)
    decay = {name for name, tensor in net.named_parameters() if tensor.ndim >= 2}
    settings = Settings({**dict.fromkeys(KEY_NAMES), **values})
    plan = build_plan(net.named_parameters(), module_map(model_type), settings, 1.0e-3, 0.01, decay)
    return [
        {
            "name": group["name"],
            "lr": group["lr"],
            "weight_decay": group["weight_decay"],
            "lr_scale": group["lr_scale"],
            "tensors": len(group["params"]),
            "layout": group["layout"],
        }
        for group in plan.param_groups
    ]


def main() -> None:
    from tools import zoo

    lines = []  # one group a line, so that a change reads group by group
    for name, values in CONFIGS.items():
        types = [
            f"  {json.dumps(t)}: [\n"
            + ",\n".join(f"   {json.dumps(group, sort_keys=True)}" for group in snapshot(t, values))
            + "\n  ]"
            for t in sorted(zoo.CONFIGS)
        ]
        lines.append(f" {json.dumps(name)}: {{\n" + ",\n".join(types) + "\n }")
    FILE.write_text("{\n" + ",\n".join(lines) + "\n}\n")


if __name__ == "__main__":
    main()
