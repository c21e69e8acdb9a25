"""The run-time check that the optimizer which steps holds lf-multilr's groups (see :mod:`lf_multilr.guard`).

Armed by the argument parser when a run sets a key, it watches every torch optimizer's ``step`` through torch's
global pre-step hook, so it sees the optimizer that really steps whatever built it and whatever wraps it
(accelerate's ``AcceleratedOptimizer``, DeepSpeed's ZeRO optimizer and FSDP all end in a torch optimizer's step).
The first step taken inside a ``transformers.Trainer`` is checked; then the hook is removed, so later steps cost
nothing. Steps outside any trainer (other code in the same process) are not the run's and are left alone.
"""

from __future__ import annotations

import sys
from typing import Any

from torch.optim.optimizer import register_optimizer_step_pre_hook

from lf_multilr.guard import Expected, missing_groups, refusal

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


def _check(optimizer: Any, args: Any, kwargs: Any) -> None:
    trainer = _trainer_on_stack()
    if trainer is None:
        return
    why = missing_groups(_expected, optimizer.param_groups)
    expected = _expected
    disarm()
    if why is not None:
        raise RuntimeError(refusal(why, built_by(trainer, optimizer, expected)))
