"""Everything lf-multilr changes in LLaMA-Factory (installed as ``lf_multilr.patches``).

A target is applied when its trigger module has been imported; the boot hook reports each import through
:func:`on_import`. On an unverified LLaMA-Factory only the ``stock_safe`` targets apply (the keys exist and are
refused when set), and one line says so. On a verified one, a LLaMA-Factory target verified on other releases only
(the web UI on 0.9.4) stays stock, a target the installed version lacks is replaced by its stand-in where it has
one (transformers 4.x), and one line names whatever else stays stock: never a silent gap.
"""

from __future__ import annotations

import sys

from . import _patching, versions
from .targets import TARGETS

_enabled = True
_warned: set[str] = set()


def _warn_once(message: str, topic: str = "") -> None:
    """One line on stderr per ``topic`` (default: the message itself)."""
    if (topic or message) not in _warned:
        _warned.add(topic or message)
        sys.stderr.write(f"lf-multilr: {message}\n")  # one write: every rank may say it, on one shared pipe


def _stood_in(target: _patching.Target) -> bool:
    """Whether a stand-in replaces ``target`` here (every name it stands in for is missing)."""
    return any(
        target.dotted in other.instead_of and _stand_in_applies(other) for other in TARGETS if other is not target
    )


def _stand_in_applies(target: _patching.Target) -> bool:
    """A stand-in applies where none of the targets it replaces exists (their owners imported)."""
    replaced = [other for other in TARGETS if other.dotted in target.instead_of]
    return all(other.owner in sys.modules and not other.exists() for other in replaced)


def _package(owner: str) -> str:
    return "LLaMA-Factory" if owner.startswith("llamafactory") else owner.split(".")[0]


def _major(version: str | None) -> str:
    return (version or "").split(".")[0]


def _in_scope(target: _patching.Target) -> bool:
    """A LLaMA-Factory target applies on the releases it was verified on; a transformers (or accelerate) one on
    the major versions it was verified on, its shape checked (LLaMA-Factory 0.9.5 also runs on transformers 4.55+)."""
    installed = versions.installed_version(target.owner)
    if target.owner.startswith("llamafactory"):
        return installed in target.verified
    return _major(installed) in {_major(version) for version in target.verified}


def why_stock(target: _patching.Target) -> str | None:
    """Why ``target`` is (rightly) left stock in this interpreter, or None when it should be patched.

    Call it once the target's owner is imported.
    """
    if not target.stock_safe and not versions.llamafactory_verified():
        return f"LLaMA-Factory {versions.llamafactory_version()} is outside the verified range"
    package = _package(target.owner)
    if not target.exists() and _stood_in(target):
        return f"{package} {versions.installed_version(target.owner)} has no such name; a stand-in does its part"
    if target.instead_of and not _stand_in_applies(target):
        return f"stands in for {', '.join(target.instead_of)}, which this version has"
    if not target.stock_safe and not _in_scope(target):
        return f"verified on {package} {', '.join(target.verified)} only"
    return None


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
        version = versions.llamafactory_version()
        if not target.stock_safe and not versions.llamafactory_verified():
            _warn_once(
                f"LLaMA-Factory {version} is outside the verified range "
                f"({versions.VERIFIED_RANGE}); training is stock and lf-multilr keys are refused.",
                topic="range",
            )
            continue
        reason = why_stock(target)
        if reason is not None:
            if reason.startswith("verified on"):
                package = _package(target.owner)
                _warn_once(
                    f"on {package} {versions.installed_version(target.owner)}, {target.dotted} and the other "
                    f"targets {reason} stay stock (`lf-multilr doctor` lists them).",
                    topic=f"scope {package} {target.verified}",
                )
            continue
        if not target.exists():
            if versions.llamafactory_verified():  # outside the range the one line above already said it all
                _warn_once(
                    f"not patching {target.dotted}: {target.owner.split('.')[0]} "
                    f"{versions.installed_version(target.owner)} has no such name; that part of lf-multilr is "
                    "inactive."
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
