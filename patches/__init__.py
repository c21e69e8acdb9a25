"""Everything lf-multilr changes in LLaMA-Factory (installed as ``lf_multilr.patches``).

A target is applied when its trigger module has been imported; the boot hook reports each import through
:func:`on_import`. On an unverified LLaMA-Factory only the ``stock_safe`` targets apply (the keys exist and are
refused when set), and one line says so.
"""

from __future__ import annotations

import sys

from . import _patching, versions
from .targets import TARGETS

_enabled = True
_warned = False


def _warn_once(message: str) -> None:
    global _warned
    if not _warned:
        _warned = True
        print(f"lf-multilr: {message}", file=sys.stderr)


def _imported(name: str, just_run: str | None) -> bool:
    """Whether module ``name`` has finished running (a module still being imported is only half there)."""
    module = sys.modules.get(name)
    if module is None:
        return False
    return name == just_run or not getattr(getattr(module, "__spec__", None), "_initializing", False)


def _apply_ready(just_run: str | None = None) -> None:
    for target in TARGETS:
        if _patching.is_applied(target):
            continue
        if not (_imported(target.trigger_module, just_run) and _imported(target.owner, just_run)):
            continue
        if not target.stock_safe and not versions.llamafactory_verified():
            _warn_once(
                f"LLaMA-Factory {versions.llamafactory_version()} is outside the verified range "
                f"({versions.VERIFIED_RANGE}); training is stock and lf-multilr keys are refused."
            )
            continue
        try:
            _patching.apply(target)
        except RuntimeError as error:  # the target changed shape: leave it stock
            _warn_once(f"not patching {target.dotted}: {error}; that part of lf-multilr is inactive.")


def on_import(name: str) -> None:
    """Called right after a watched module ran."""
    if _enabled:
        _apply_ready(name)


def enable() -> None:
    global _enabled
    _enabled = True
    _apply_ready()


def disable() -> None:
    global _enabled
    _enabled = False
    _patching.revert_all()


def applied() -> list[str]:
    return [target.dotted for target in TARGETS if _patching.is_applied(target)]
