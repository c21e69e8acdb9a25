"""Everything the patches hold in this interpreter, in one object (:data:`STATE`), and how they speak: LLaMA-Factory's
logger, and lines said once.

Patch-time state is one :class:`PatchState`: the patches applied and the decisions behind them, the first-step
check's arming, the per-trainer monitors, the lines already said. ``revert()`` puts LLaMA-Factory back and resets it;
tests that need a fresh interpreter's state call :meth:`PatchState.reset`.
"""

from __future__ import annotations

import sys
import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from lf_multilr import compat

if TYPE_CHECKING:
    from lf_multilr.training.guard import Expected
    from lf_multilr.training.metrics import GradNormMonitor

#: The logger lf-multilr writes to, under LLaMA-Factory's own (so its verbosity and rank-0 rules apply).
LOGGER_NAME = "llamafactory.lf_multilr"


@dataclass
class Applied:
    """One applied patch: where the name lives, and the objects before and after (``_patching`` reverts from it)."""

    #: The ``_patching.Target`` applied.
    target: Any
    container: Any
    name: str
    original: Any
    replacement: Any


@dataclass
class GuardState:
    """The first-step check (``patches.guard``): armed by a run that sets a key."""

    #: torch's global optimizer pre-step hook while armed, else None.
    handle: Any = None
    #: The groups lf-multilr's factory built for this run (None: none yet).
    expected: Expected | None = None
    #: The trainer whose scheduler was created last (handed over by the patched ``Trainer.create_scheduler``).
    trainer: weakref.ReferenceType[Any] | None = None

    def current_trainer(self) -> Any:
        return self.trainer() if self.trainer is not None else None


@dataclass
class PatchState:
    """What the patches hold, one field per concern."""

    #: Whether imports of watched modules patch them (``apply()``/``revert()``).
    enabled: bool = True
    #: The applied patches, by dotted target name, in the order applied (reverted in reverse).
    applied: dict[str, Applied] = field(default_factory=dict)
    #: The decision for each target whose modules are imported, by dotted name, in the order they were made.
    decided: dict[str, compat.Decision] = field(default_factory=dict)
    #: The topics of the lines said once.
    said: set[str] = field(default_factory=set)
    guard: GuardState = field(default_factory=GuardState)
    #: LLaMA-Factory's argument classes with lf-multilr's keys, by the class they extend (built once).
    keyed_classes: dict[type, type] = field(default_factory=dict)
    #: Each trainer's gradient-norm monitor (None: nothing to watch).
    monitors: weakref.WeakKeyDictionary[Any, GradNormMonitor | None] = field(default_factory=weakref.WeakKeyDictionary)
    #: Each trainer's module LRs as they were when HF read its ``learning_rate`` (the LR the step just taken used).
    step_lrs: weakref.WeakKeyDictionary[Any, dict[str, float]] = field(default_factory=weakref.WeakKeyDictionary)
    #: v1: each optimizer lf-multilr's plugin built, its per-module gradient-norm monitor.
    v1_monitors: weakref.WeakKeyDictionary[Any, GradNormMonitor] = field(default_factory=weakref.WeakKeyDictionary)
    #: v1: each such optimizer's entries measured before its last step (``lr/<module>``, ``grad_norm/<module>``).
    v1_measured: weakref.WeakKeyDictionary[Any, dict[str, float]] = field(default_factory=weakref.WeakKeyDictionary)
    #: transformers 4.x: the trainers whose training loop is running, innermost last.
    running: list[Any] = field(default_factory=list)
    #: The callbacks list of the run being set up (``patches/callbacks.py``), until its parsed arguments fill it.
    run_callbacks: list[Any] | None = None

    def reset(self) -> None:
        """Back to a fresh interpreter's state (the caller has reverted the patches and disarmed the guard)."""
        fresh = PatchState()
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(fresh, name))


STATE = PatchState()


def logger() -> Any:
    from llamafactory.extras import logging

    return logging.get_logger(LOGGER_NAME)


def warn_once(message: str, topic: str = "", every_rank: bool = True) -> None:
    """Say ``message`` once per ``topic`` (default: the message itself), prefixed with ``lf-multilr:``.

    ``every_rank``: on stderr, from every process, in one write (every rank may say it, on one shared pipe; it works
    before LLaMA-Factory's logging is set up). Otherwise as a warning of LLaMA-Factory's logger, from rank 0.
    """
    if (topic or message) in STATE.said:
        return
    STATE.said.add(topic or message)
    if every_rank:
        sys.stderr.write(f"lf-multilr: {message}\n")
    else:
        logger().warning_rank0(f"lf-multilr: {message}")


def keys_lost() -> tuple[str, str] | None:
    """(why, fix) when an essential target is lost here, so that setting a key must be refused; else None."""
    return compat.keys_lost(STATE.decided.values())


def warn_unverified() -> None:
    """The run's one line about targets applied on versions they were not verified on (if any)."""
    line = compat.unverified_line(STATE.decided.values())
    if line is not None:
        warn_once(line, topic="unverified")
