"""The LLaMA-Factory and transformers versions lf-multilr was verified with."""

from __future__ import annotations

import sys

#: LLaMA-Factory releases every patch target was verified against (tests run on them).
VERIFIED_LLAMAFACTORY: tuple[str, ...] = ("0.9.5",)
VERIFIED_RANGE = "==0.9.5"
#: transformers releases the `Trainer.log` target was verified against.
VERIFIED_TRANSFORMERS: tuple[str, ...] = ("5.6.0",)


def llamafactory_version() -> str | None:
    env = sys.modules.get("llamafactory.extras.env")
    return getattr(env, "VERSION", None)


def llamafactory_verified() -> bool:
    return llamafactory_version() in VERIFIED_LLAMAFACTORY
