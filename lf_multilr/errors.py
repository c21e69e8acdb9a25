"""The one error lf-multilr raises for bad configuration."""

from __future__ import annotations

from typing import Any


class ConfigError(ValueError):
    """A configuration lf-multilr refuses, phrased as key, value, why and fix.

    It subclasses ``ValueError`` because LLaMA-Factory reports its own argument errors that way.
    """

    def __init__(self, key: str, value: Any, why: str, fix: str) -> None:
        self.key, self.value, self.why, self.fix = key, value, why, fix
        super().__init__(f"lf-multilr: `{key}: {value!r}` is refused: {why}. Fix: {fix}")
