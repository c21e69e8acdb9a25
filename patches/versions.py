"""The LLaMA-Factory and transformers versions lf-multilr was verified with.

Two pinned environments verify them: ``.venv`` (``constraints.txt``: LLaMA-Factory 0.9.5, transformers 5.6.0) runs
the full test suite, ``.venv-lf094`` (``constraints-lf094.txt``: LLaMA-Factory 0.9.4, transformers 4.57.1) the
end-to-end ``core`` tests (``make test-compat``). Each target in ``targets.py`` names the versions it was verified
on; docs/compatibility.md has the matrix.
"""

from __future__ import annotations

import sys

#: LLaMA-Factory releases lf-multilr patches: its core targets (keys, checks, optimizer, logs, plots) were
#: verified end to end on each. Outside them only the keys exist, and they are refused.
VERIFIED_LLAMAFACTORY: tuple[str, ...] = ("0.9.4", "0.9.5")
VERIFIED_RANGE = ">=0.9.4,<=0.9.5"
#: LLaMA-Factory releases the full test suite ran on: a target verified only there (the web UI) stays stock on
#: the other verified releases.
FULL_SUITE_LLAMAFACTORY: tuple[str, ...] = ("0.9.5",)
#: transformers releases the core `Trainer` targets were verified on (4.57.1 under LLaMA-Factory 0.9.4).
CORE_TRANSFORMERS: tuple[str, ...] = ("4.57.1", "5.6.0")
#: transformers releases the full test suite ran on (targets verified only there, e.g. names 4.x lacks).
VERIFIED_TRANSFORMERS: tuple[str, ...] = ("5.6.0",)


def llamafactory_version() -> str | None:
    env = sys.modules.get("llamafactory.extras.env")
    return getattr(env, "VERSION", None)


def llamafactory_verified() -> bool:
    return llamafactory_version() in VERIFIED_LLAMAFACTORY


def transformers_version() -> str | None:
    module = sys.modules.get("transformers")
    return getattr(module, "__version__", None)


def installed_version(owner: str) -> str | None:
    """The installed version of the package that owns the module ``owner`` (LLaMA-Factory, transformers, ...)."""
    if owner.startswith("llamafactory"):
        return llamafactory_version()
    if owner.startswith("transformers"):
        return transformers_version()
    module = sys.modules.get(owner.split(".")[0])
    return getattr(module, "__version__", None)
