"""Everything lf-multilr changes in LLaMA-Factory (installed as ``lf_multilr.patches``).

A target is decided when its trigger module has been imported; the boot hook reports each import through
:func:`on_import`. :mod:`lf_multilr.compat` decides from the installed versions and the target's shape
whether it applies (verified, or unverified with its verified shape) or stays stock (missing, changed, older than
verified, stood in for); every target left stock against expectations is named in one line, and an essential one
makes the keys refused. The decisions are kept for ``lf-multilr doctor`` and the run's one warning about unverified
versions.
"""

from __future__ import annotations

import sys

from lf_multilr import compat

from . import _patching, guard, versions
from ._state import STATE, warn_once
from .targets import TARGETS


def _stand_in_needed(target: _patching.Target) -> bool:
    """A stand-in applies where none of the targets it replaces exists (their owners imported)."""
    replaced = [other for other in TARGETS if other.dotted in target.instead_of]
    return all(other.owner in sys.modules and not other.exists() for other in replaced)


def _stood_in(target: _patching.Target) -> bool:
    """Whether a stand-in replaces ``target`` here."""
    return any(target.dotted in other.instead_of and _stand_in_needed(other) for other in TARGETS)


def facts_of(target: _patching.Target) -> compat.TargetFacts:
    """What is known of ``target`` here (its owner module is imported), for :func:`compat.decide`."""
    exists = target.exists()
    return compat.TargetFacts(
        target=target.dotted,
        package=versions.package_of(target.owner),
        installed=versions.installed_version(target.owner),
        verified=target.verified,
        role=target.role,
        essential=target.essential,
        stock_safe=target.stock_safe,
        optional=target.optional,
        exists=exists,
        mismatch=target.mismatch(target.resolve()[2]) if exists else None,
        stand_in=", ".join(target.instead_of),
        stand_in_needed=bool(target.instead_of) and _stand_in_needed(target),
        stood_in=_stood_in(target),
    )


def _imported(name: str, just_run: str | None) -> bool:
    """Whether module ``name`` has finished running (a module still being imported is only half there)."""
    module = sys.modules.get(name)
    if module is None:
        return False
    return name == just_run or not getattr(getattr(module, "__spec__", None), "_initializing", False)


def _apply_ready(just_run: str | None = None) -> None:
    lost: list[compat.Decision] = []
    for target in TARGETS:
        if _patching.is_applied(target):
            continue
        if not (_imported(target.trigger_module, just_run) and _imported(target.owner, just_run)):
            continue
        decision = STATE.decided[target.dotted] = compat.decide(facts_of(target))
        if decision.applies:
            _patching.apply(target)
        else:
            lost.append(decision)
    # The essential ones first: where targets share a line (a release older than verified), it says the keys are
    # refused, whichever target the table lists first.
    for decision in sorted(lost, key=lambda decision: not decision.essential):
        warning = decision.warning()
        if warning is not None:
            warn_once(*warning)


def decisions() -> list[compat.Decision]:
    """The decisions made so far (for the targets whose modules are imported), in table order."""
    return [STATE.decided[target.dotted] for target in TARGETS if target.dotted in STATE.decided]


def on_import(name: str) -> None:
    """Called right after a watched module ran."""
    if STATE.enabled:
        _apply_ready(name)


def enable() -> None:
    STATE.enabled = True
    _apply_ready()


def disable() -> None:
    """Revert every patch and forget what was decided and said: as in a fresh interpreter, switched off."""
    guard.disarm()
    _patching.revert_all()
    STATE.reset()
    STATE.enabled = False


def applied() -> list[str]:
    return [target.dotted for target in TARGETS if _patching.is_applied(target)]
