"""The installed versions of the packages lf-multilr patches, as the imported modules report them."""

from __future__ import annotations

import sys


def llamafactory_version() -> str | None:
    env = sys.modules.get("llamafactory.extras.env")
    return getattr(env, "VERSION", None)


def transformers_version() -> str | None:
    module = sys.modules.get("transformers")
    return getattr(module, "__version__", None)


def package_of(owner: str) -> str:
    """The package that owns the module ``owner``, as people name it."""
    return "LLaMA-Factory" if owner.startswith("llamafactory") else owner.split(".")[0]


def installed_version(owner: str) -> str | None:
    """The installed version of the package that owns the module ``owner`` (LLaMA-Factory, transformers, ...)."""
    if owner.startswith("llamafactory"):
        return llamafactory_version()
    if owner.startswith("transformers"):
        return transformers_version()
    module = sys.modules.get(owner.split(".")[0])
    return getattr(module, "__version__", None)
