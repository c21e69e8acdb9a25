"""The mechanics of patching: replace a name in its owner and in every module that imported it directly,
remember the original, and put it back exactly on revert (in reverse order, never with ``importlib.reload``)."""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ._state import STATE, Applied


@dataclass(frozen=True)
class Target:
    """One place lf-multilr touches.

    ``owner.attr`` is replaced by ``patch(original)``; ``importers`` are the modules that bound the name with
    ``from owner import attr`` and are rebound too. The patch is applied when ``trigger`` (default: owner) is
    imported, if the name resolves with the ``signature`` it was written for (see :mod:`lf_multilr.compat`).
    ``verified`` are the versions of the owner's package it was verified on; ``role`` says what lf-multilr does
    through it; an ``essential`` one is needed for the keys to work at all (lost, they are refused). ``stock_safe``
    targets also apply on releases older than verified (they only add the keys and refuse them); ``optional`` ones
    may be missing, or older than verified, without loss (another engine's parser, 0.9.5's v1 engine). ``instead_of``
    names the targets this one stands in for: it applies only where none of them exists (transformers 4.x measures the
    gradient norm inline).
    """

    owner: str
    attr: str
    patch: Callable[[Any], Any]
    role: str
    importers: tuple[str, ...] = ()
    signature: tuple[str, ...] | None = None
    trigger: str = ""
    essential: bool = False
    stock_safe: bool = False
    optional: bool = False
    verified: tuple[str, ...] = ()
    instead_of: tuple[str, ...] = ()
    #: For a target that is no function: why an object does not have the shape the patch takes, or None.
    shape: Callable[[Any], str | None] | None = None

    @property
    def dotted(self) -> str:
        return f"{self.owner}.{self.attr}"

    @property
    def trigger_module(self) -> str:
        return self.trigger or self.owner

    def exists(self) -> bool:
        """Whether ``owner.attr`` is there in the imported owner module (a version may lack it)."""
        try:
            self.resolve()
        except (KeyError, AttributeError):
            return False
        return True

    def resolve(self) -> tuple[Any, str, Any]:
        """(container, attribute name, current object) in the imported owner module."""
        container: Any = sys.modules[self.owner]
        *path, name = self.attr.split(".")
        for part in path:
            container = getattr(container, part)
        current = container.__dict__[name] if isinstance(container, type) else getattr(container, name)
        return container, name, current

    def mismatch(self, original: Any) -> str | None:
        """Why ``original`` does not have the shape this patch was written for, or None."""
        if self.shape is not None:
            return self.shape(original)
        if self.signature is None:
            return None
        try:
            names = tuple(inspect.signature(original).parameters)
        except (TypeError, ValueError):
            return "it is no longer a function"
        if names[: len(self.signature)] != self.signature:
            return f"it takes ({', '.join(names)}) where lf-multilr expects ({', '.join(self.signature)}, ...)"
        return None


def is_applied(target: Target) -> bool:
    return target.dotted in STATE.applied


def original_of(target: Target) -> Any:
    return STATE.applied[target.dotted].original


def apply(target: Target) -> None:
    """Patch ``target`` (its owner must be imported). Idempotent; raises if the target's shape changed."""
    if target.dotted in STATE.applied:
        return
    container, name, original = target.resolve()
    problem = target.mismatch(original)
    if problem:
        raise RuntimeError(problem)
    replacement = target.patch(original)
    setattr(container, name, replacement)
    for importer in target.importers:
        module = sys.modules.get(importer)
        if module is not None and getattr(module, name, None) is original:
            setattr(module, name, replacement)
    STATE.applied[target.dotted] = Applied(target, container, name, original, replacement)


def revert_all() -> None:
    """Put every original back, last patch first."""
    for applied in reversed(list(STATE.applied.values())):
        setattr(applied.container, applied.name, applied.original)
        for importer in applied.target.importers:
            module = sys.modules.get(importer)
            if module is not None and getattr(module, applied.name, None) is applied.replacement:
                setattr(module, applied.name, applied.original)
    STATE.applied.clear()
