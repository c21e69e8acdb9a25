"""``lf-multilr doctor``: versions, the verified range, the activation hook and the applied patches."""

from __future__ import annotations

import importlib.metadata
import site
import sys
from pathlib import Path

from lf_multilr import _boot

from . import applied, versions, why_stock
from .targets import TARGETS


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _pth_files() -> list[Path]:
    folders = [*site.getsitepackages(), site.getusersitepackages()]
    return [Path(folder) / "lf_multilr.pth" for folder in folders if (Path(folder) / "lf_multilr.pth").is_file()]


def report() -> tuple[list[str], bool]:
    """The lines to print, and whether everything is in order."""
    ok = True
    lines = [f"lf-multilr {_version('lf-multilr')}  (python {sys.version.split()[0]}, {sys.executable})"]
    lf = _version("llamafactory")
    verified = lf in versions.VERIFIED_LLAMAFACTORY
    ok &= verified
    lines.append(
        f"llamafactory {lf}: {'verified' if verified else 'NOT verified'} (verified: {versions.VERIFIED_RANGE})"
    )
    transformers = _version("transformers")
    lines.append(
        f"transformers {transformers}: "
        f"{'verified' if transformers in versions.CORE_TRANSFORMERS else 'not verified'} "
        f"(verified: {', '.join(versions.CORE_TRANSFORMERS)})"
    )
    lines.append(f"torch {_version('torch')}")
    pth = _pth_files()
    lines.append(f"activation hook (.pth): {', '.join(map(str, pth)) if pth else 'NOT installed'}")
    if _boot.disabled():
        lines.append(f"{_boot.DISABLE_ENV} is set: lf-multilr is off (stock LLaMA-Factory)")
        return lines, ok
    active = _boot.installed()
    ok &= active and bool(pth)
    lines.append(f"hook active in this interpreter: {'yes' if active else 'NO'}")
    try:
        import llamafactory.train.tuner  # noqa: F401 - importing LLaMA-Factory is what triggers the patches
        import llamafactory.webui.interface  # noqa: F401
    except Exception as error:  # noqa: BLE001 - report, do not crash
        lines.append(f"LLaMA-Factory failed to import: {type(error).__name__}: {error}")
        return lines, False
    done = set(applied())
    lines.append(f"patches applied: {len(done)} of {len(TARGETS)}")
    missed = False
    for target in TARGETS:
        if target.dotted in done:
            lines.append(f"  [x] {target.dotted}")
            continue
        reason = why_stock(target) if target.owner in sys.modules else "its module is not imported"
        missed |= reason is None
        lines.append(f"  [ ] {target.dotted}  ({reason or 'NOT patched: see the lf-multilr line above'})")
    ok &= not missed
    return lines, ok
