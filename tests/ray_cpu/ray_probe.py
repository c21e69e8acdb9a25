"""For tests only: a callback (``LF_MULTILR_CALLBACKS=ray_probe:Probe``) with which each training process writes what
its optimizer holds and how far one optimizer step moved each tensor, to ``OUTPUT_DIR/probe-rank{RANK}.json``.

Read in the process that trains: the param groups of the optimizer that steps (each group's name, module, LR and
parameter names), each parameter's max |dW| after the first step, the process's rank and world size, and the Ray actor
it runs in (none outside Ray)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback


def ray_actor() -> str | None:
    try:
        import ray
    except ImportError:
        return None
    return ray.get_runtime_context().get_actor_id() if ray.is_initialized() else None


class Probe(TrainerCallback):
    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, optimizer: Any = None, **_: Any):
        names = {id(param): name for name, param in model.named_parameters()}
        self.before = {name: param.detach().clone() for name, param in model.named_parameters()}
        self.groups = [
            {
                "name": group.get("name"),
                "module": group.get("module"),
                "lr": group["lr"],
                "params": [names[id(param)] for param in group["params"]],
            }
            for group in optimizer.param_groups
        ]

    def on_step_end(self, args: Any, state: Any, control: Any, model: Any = None, **_: Any):
        if state.global_step != 1:
            return
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        report = {
            "rank": rank,
            "world_size": torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1,
            "pid": os.getpid(),
            "ray_actor": ray_actor(),
            "groups": self.groups,
            "steps": {
                name: (param.detach() - self.before[name]).abs().max().item()
                for name, param in model.named_parameters()
            },
        }
        Path(args.output_dir).mkdir(parents=True, exist_ok=True)
        (Path(args.output_dir) / f"probe-rank{rank}.json").write_text(json.dumps(report))
