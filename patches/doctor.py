"""``lf-multilr doctor``: versions, the activation hook, and what became of every patch target."""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import site
import sys
from pathlib import Path
from typing import Any

from lf_multilr import _boot, compat

from . import _state, applied
from .targets import TARGETS

#: What doctor imports, so that every target is decided: the training modules, LlamaBoard, the v1 engine's parser,
#: plugin registries and trainer.
ENTRY_MODULES = (
    "llamafactory.train.tuner",
    "llamafactory.webui.interface",
    "llamafactory.v1.config.arg_parser",
    "llamafactory.v1.plugins.trainer_plugins.optimizers.optimizer",
    "llamafactory.v1.plugins.trainer_plugins.lr_scheduler",
    "llamafactory.v1.core.base_trainer",
)


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _pth_files() -> list[Path]:
    folders = [*site.getsitepackages(), site.getusersitepackages()]
    return [Path(folder) / "lf_multilr.pth" for folder in folders if (Path(folder) / "lf_multilr.pth").is_file()]


def _import_entries() -> str | None:
    """Import what triggers every target; the error when LLaMA-Factory cannot be imported."""
    for name in ENTRY_MODULES:
        try:
            found = importlib.util.find_spec(name) is not None
        except ModuleNotFoundError:
            found = False
        if not found and name != ENTRY_MODULES[0]:
            continue  # a part this release does not have (its targets are optional)
        try:
            importlib.import_module(name)
        except Exception as error:  # noqa: BLE001 - report, do not crash
            return f"{type(error).__name__}: {error}"
    return None


def _line(decision: compat.Decision | None, target: Any) -> str:
    if decision is None:
        why = "stock: this release has no such module and needs none" if target.optional else "NOT decided"
        return f"  [ ] {target.dotted}  ({why})"
    mark = "x" if decision.applies else " "
    return f"  [{mark}] {target.dotted}  ({decision.status()})"


def report() -> tuple[list[str], bool]:
    """The lines to print, and whether everything is in order (nothing refused or broken)."""
    lines = [f"lf-multilr {_version('lf-multilr')}  (python {sys.version.split()[0]}, {sys.executable})"]
    lines.append(
        f"llamafactory {_version('llamafactory')}, transformers {_version('transformers')}, "
        f"accelerate {_version('accelerate')}, torch {_version('torch')}"
    )
    pth = _pth_files()
    lines.append(f"activation hook (.pth): {', '.join(map(str, pth)) if pth else 'NOT installed'}")
    if _boot.disabled():
        lines.append(f"{_boot.DISABLE_ENV} is set: lf-multilr is off (stock LLaMA-Factory)")
        return lines, True
    active = _boot.installed()
    ok = active and bool(pth)
    lines.append(f"hook active in this interpreter: {'yes' if active else 'NO'}")
    failed = _import_entries()
    if failed is not None:
        lines.append(f"LLaMA-Factory failed to import: {failed}")
        return lines, False
    decisions = [_state.STATE.decided.get(target.dotted) for target in TARGETS]
    made = [decision for decision in decisions if decision is not None]
    unverified = sum(decision.verdict is compat.Verdict.UNVERIFIED for decision in made)
    lines.append(
        f"patch targets: {len(applied())} of {len(TARGETS)} applied ({unverified} unverified here, their signatures "
        "matching); the rest stock"
    )
    lines.extend(_line(decision, target) for decision, target in zip(decisions, TARGETS, strict=True))
    broken = [decision for decision in made if decision.broken]
    undecided = [target for decision, target in zip(decisions, TARGETS, strict=True) if decision is None]
    ok = ok and all(target.optional for target in undecided)
    if broken:
        refused = compat.keys_lost(made)
        lines.append(
            f"{len(broken)} targets need attention"
            + (f"; lf-multilr keys are refused here: {refused[0]}" if refused else "")
        )
    return lines, ok and not broken
