"""The run-time check that the optimizer which steps holds lf-multilr's groups (see :mod:`lf_multilr.training.guard`).

Armed by the argument parser when a run sets a key. The check runs where every HF training loop (and PPO's) tells
its callbacks that training begins, when the optimizer is final and wrapped (``CallbackHandler.on_train_begin``,
just before the first step): the trainer's optimizer is unwrapped to the torch optimizer that really steps
(accelerate's ``AcceleratedOptimizer``, DeepSpeed's wrappers and ZeRO optimizer all hold it as ``.optimizer``).
A loop that never calls it is caught at its first step instead, through torch's global optimizer pre-step hook,
which sees the optimizer that steps whatever built it. Either way the hook is removed after the check, so later
steps cost nothing; steps outside any trainer (other code in the same process) are not the run's.
"""

from __future__ import annotations

import sys
from functools import wraps
from typing import Any

from torch.optim.optimizer import register_optimizer_step_pre_hook

from lf_multilr.training.guard import Expected, missing_groups, refusal

_handle: Any = None
_expected: Expected | None = None


def arm() -> None:
    """Check the first step of this run (the parser calls it for a run that sets a key)."""
    global _handle, _expected
    _expected = None
    if _handle is None:
        _handle = register_optimizer_step_pre_hook(_check)


def disarm() -> None:
    global _handle, _expected
    _expected = None
    if _handle is not None:
        _handle.remove()
        _handle = None


def expect(param_groups: Any) -> None:
    """Record the groups lf-multilr's factory built for this run."""
    global _expected
    if _handle is not None:
        _expected = Expected.of(param_groups)


def armed() -> bool:
    return _handle is not None


def _trainer_on_stack() -> Any:
    """The ``transformers.Trainer`` whose code is running further up the stack, or None."""
    trainer_cls = getattr(sys.modules.get("transformers.trainer"), "Trainer", None)
    if trainer_cls is None:
        return None
    frame = sys._getframe(1)
    while frame is not None:
        candidate = frame.f_locals.get("self")
        if isinstance(candidate, trainer_cls):
            return candidate
        frame = frame.f_back  # type: ignore[assignment]
    return None


def built_by(trainer: Any, optimizer: Any, expected: Expected | None) -> str:
    """Who built the optimizer that steps, as far as can be told."""
    kind = f"a {type(optimizer).__module__}.{type(optimizer).__qualname__}"
    if expected is not None:
        return f"{kind} that is not the one lf-multilr's factory built (something replaced it after create_optimizer)"
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


def _verify(trainer: Any, optimizer: Any) -> None:
    why = missing_groups(_expected, optimizer.param_groups)
    expected = _expected
    disarm()
    if why is not None:
        raise RuntimeError(refusal(why, built_by(trainer, optimizer, expected)))


def _check(optimizer: Any, args: Any, kwargs: Any) -> None:
    """The fallback, at a step: for loops that never announce that training begins."""
    trainer = _trainer_on_stack()
    if trainer is not None:
        _verify(trainer, optimizer)


def wrap_on_train_begin(original: Any) -> Any:
    @wraps(original)
    def on_train_begin(self: Any, args: Any, state: Any, control: Any, *rest: Any, **kwargs: Any) -> Any:
        if _handle is not None:
            trainer = _trainer_on_stack()
            optimizer = getattr(trainer, "optimizer", None)
            if optimizer is not None:
                _verify(trainer, innermost(optimizer))
        return original(self, args, state, control, *rest, **kwargs)

    return on_train_begin
