"""The run-time check that the optimizer which steps holds lf-multilr's groups (see :mod:`lf_multilr.training.guard`).

Armed by the argument parser when a run sets a key. The check runs where every HF training loop (and PPO's) tells
its callbacks that training begins, when the optimizer is final and wrapped (``CallbackHandler.on_train_begin``,
just before the first step): the loop has handed its callback handler the optimizer, which is unwrapped to the torch
optimizer that really steps (accelerate's ``AcceleratedOptimizer``, DeepSpeed's wrappers and ZeRO optimizer all hold
it as ``.optimizer``). A loop that never calls it is caught at its first step instead, through torch's global
optimizer pre-step hook: the step is the run's when its optimizer is the one inside the trainer that the patched
``Trainer.create_scheduler`` handed over. Either way the hook is removed after the check, so later steps cost
nothing; other optimizers stepping in the same process are not the run's."""

from __future__ import annotations

import weakref
from functools import wraps
from typing import Any

from torch.optim.optimizer import register_optimizer_step_pre_hook

from lf_multilr.training.guard import Expected, missing_groups, stop_message, ungated, ungated_message
from lf_multilr.training.layerwise import stepping_groups

from ._state import STATE


def arm() -> None:
    """Check the first step of this run (the parser calls it for a run that sets a key)."""
    STATE.guard.expected = None
    STATE.guard.trainer = None  # an earlier run's, which never reached its check
    if STATE.guard.handle is None:
        STATE.guard.handle = register_optimizer_step_pre_hook(_check)


def disarm() -> None:
    guard = STATE.guard
    guard.expected = None
    guard.trainer = None
    if guard.handle is not None:
        guard.handle.remove()
        guard.handle = None


def expect(param_groups: Any) -> None:
    """Record the groups lf-multilr's factory built for this run."""
    if STATE.guard.handle is not None:
        STATE.guard.expected = Expected.of(param_groups)


def armed() -> bool:
    return STATE.guard.handle is not None


def hand_over(trainer: Any) -> None:
    """Hand over the trainer that is about to train (the patched ``Trainer.create_scheduler`` calls this): the one
    whose optimizer the check looks at, and whose class the message names."""
    if STATE.guard.handle is not None:
        STATE.guard.trainer = weakref.ref(trainer)


def built_by(trainer: Any, optimizer: Any, expected: Expected | None) -> str:
    """Who built the optimizer that steps, as far as can be told."""
    kind = f"a {type(optimizer).__module__}.{type(optimizer).__qualname__}"
    if expected is not None:
        return f"{kind} that is not the one lf-multilr's factory built (something replaced it after create_optimizer)"
    if trainer is None:
        return f"{kind}, from code that never called LLaMA-Factory's create_custom_optimizer (which lf-multilr patches)"
    create = type(trainer).create_optimizer
    where = f"{getattr(create, '__module__', '?')}.{getattr(create, '__qualname__', 'create_optimizer')}"
    return (
        f"{kind} from `{where}` of the trainer `{type(trainer).__qualname__}`, which never called LLaMA-Factory's "
        "create_custom_optimizer (the factory lf-multilr patches)"
    )


def innermost(optimizer: Any) -> Any:
    """The optimizer inside accelerate's and DeepSpeed's wrappers (each holds the next as ``.optimizer``)."""
    while getattr(getattr(optimizer, "optimizer", None), "param_groups", None) is not None:
        optimizer = optimizer.optimizer
    return optimizer


def stepping(optimizer: Any) -> list[Any]:
    """The param groups that step, inside accelerate's and DeepSpeed's wrappers (a layer-wise run's: its per-tensor
    optimizers')."""
    return stepping_groups(innermost(optimizer))


def _verify(trainer: Any, optimizer: Any, step: int) -> None:
    """Stop the run unless ``optimizer`` holds the groups lf-multilr built, at their LRs, and every module that starts
    later than ``step`` (the optimizer step about to be taken) at LR 0."""
    expected = STATE.guard.expected
    groups = stepping(optimizer)
    why = missing_groups(expected, groups)
    disarm()
    if why is not None:
        raise RuntimeError(stop_message(why, built_by(trainer, optimizer, expected)))
    gate = ungated(groups, step)
    if gate is not None:
        raise RuntimeError(ungated_message(gate))


def _check(optimizer: Any, args: Any, kwargs: Any) -> None:
    """The fallback, at a step: for loops that never announce that training begins. The step is the run's when the
    optimizer is the one inside the handed-over trainer's."""
    trainer = STATE.guard.current_trainer()
    held = getattr(trainer, "optimizer", None)
    if held is not None and innermost(held) is optimizer:
        _verify(trainer, optimizer, int(getattr(getattr(trainer, "state", None), "global_step", 0) or 0))


def wrap_on_train_begin(original: Any) -> Any:
    """Every HF training loop (and PPO's) hands its callback handler the optimizer before announcing that training
    begins: check the one inside it."""

    @wraps(original)
    def on_train_begin(self: Any, args: Any, state: Any, control: Any, *rest: Any, **kwargs: Any) -> Any:
        optimizer = getattr(self, "optimizer", None)
        if STATE.guard.handle is not None and optimizer is not None:
            _verify(STATE.guard.current_trainer(), innermost(optimizer), int(getattr(state, "global_step", 0) or 0))
        return original(self, args, state, control, *rest, **kwargs)

    return on_train_begin
