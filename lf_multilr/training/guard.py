"""Never silently without the groups: what the optimizer that takes a run's first step must hold.

When a run sets any lf-multilr key, the optimizer that actually steps (under DeepSpeed, accelerate or FSDP: the torch
optimizer inside their wrappers) must hold lf-multilr's param groups, in the order they were built, each at its
configured LR. Anything else (a trainer that built its optimizer another way, a back end that replaced it) would
train the modules at ``learning_rate`` without a word; this is the check that stops it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from lf_multilr.grouping.digests import describe
from lf_multilr.grouping.schema import LAYOUT, module_of, schedule_of


@dataclass(frozen=True)
class Expected:
    """lf-multilr's groups as its factory built them (or as a resumed checkpoint's optimizer state restored them):
    (name, layout digest, starting LR) per group."""

    groups: tuple[tuple[str, str, float], ...]

    @classmethod
    def of(cls, param_groups: Sequence[Mapping[str, Any]]) -> Expected:
        return cls(tuple((str(g["name"]), str(g[LAYOUT]), _start_lr(g)) for g in param_groups))


def _start_lr(group: Mapping[str, Any]) -> float:
    """The LR a group started from: what a scheduler scales (``initial_lr``), or ``lr`` before there is one."""
    return float(group.get("initial_lr", group.get("lr", math.nan)))


def missing_groups(expected: Expected | None, param_groups: Sequence[Mapping[str, Any]]) -> str | None:
    """Why ``param_groups`` (of the optimizer about to step) are not lf-multilr's groups; None when they are.

    Groups are matched by name and layout digest (their parameters may have been replaced by a back end's flat
    shards, as DeepSpeed ZeRO does), and by the LR they started from.
    """
    if expected is None:
        return f"it holds {describe(param_groups)}, and lf-multilr's factory built no groups in this run"
    held = [(g.get("name"), g.get(LAYOUT), _start_lr(g)) for g in param_groups]
    if [(name, layout) for name, layout, _ in held] != [(name, layout) for name, layout, _ in expected.groups]:
        built = ", ".join(name for name, _, _ in expected.groups)
        return f"it holds {describe(param_groups)}, where lf-multilr built {len(expected.groups)} groups: {built}"
    for (name, _, want), (_, _, have) in zip(expected.groups, held, strict=True):
        if not math.isclose(want, have, rel_tol=1e-6, abs_tol=0.0):
            return f"its group `{name}` starts at LR {have:.3e}, where lf-multilr built it at {want:.3e}"
    return None


def ungated(param_groups: Sequence[Mapping[str, Any]], step: int) -> str | None:
    """Why ``param_groups``, about to take optimizer step ``step`` (0-based), do not hold the per-module start the plan
    gave them; None when they do. A group whose module starts after ``step`` must be at LR 0: a scheduler that never
    applied the gate (one built without HF's ``Trainer.create_scheduler``) leaves it at its module's LR."""
    for group in param_groups:
        start, _ = schedule_of(group)
        lr = float(group.get("lr", 0.0))
        if step < start and lr != 0.0:
            module = module_of(group) or "its module"
            return (
                f"its group `{group.get('name')}` is at LR {lr:.3e} at step {step}, where `{module}_start_step: "
                f"{start}` holds it at 0 until step {start}: the LR scheduler that runs never applied lf-multilr's "
                "per-module start and warm-up"
            )
    return None


#: How to mend a run whose optimizer lacks the groups: on LLaMA-Factory's default engine, and on its v1 engine.
V0_FIX = (
    "train with LLaMA-Factory's own trainers (a trainer that overrides `create_optimizer` must build it with "
    "`create_custom_optimizer`, as LLaMA-Factory's do), or remove the lf-multilr keys"
)
V1_FIX = (
    "let the v1 engine build the optimizer from `optim_config: {name: multilr, ...}` (a trainer that overrides "
    "`_init_optimizer` must build it with `OptimizerPlugin(optim_config.name)`, as v1's BaseTrainer does), or remove "
    "`name: multilr` from `optim_config`"
)


def stop_message(why: str, built_by: str, fix: str = V0_FIX) -> str:
    """The error that stops the run."""
    return (
        f"lf-multilr: the optimizer about to take the first step does not hold lf-multilr's module groups: {why}. "
        f"It was built by {built_by}, so the modules would train at `learning_rate` and the lf-multilr keys would "
        f"do nothing. Fix: {fix}"
    )


def ungated_message(why: str) -> str:
    """The error that stops a run whose scheduler skipped the per-module start (see :func:`ungated`)."""
    return (
        f"lf-multilr: the optimizer about to take the first step holds lf-multilr's module groups, but {why}. Fix: "
        "train with LLaMA-Factory's own trainers (their schedulers go through HF's `Trainer.create_scheduler`), or "
        "remove the module start-step and warm-up keys"
    )
