"""``trainer_callbacks`` and ``LF_MULTILR_CALLBACKS``: the ``transformers.TrainerCallback`` classes lf-multilr adds to a
run, named as ``module:Class`` or ``module.Class``.

Names are parsed and their classes imported once, at the edge (when the run's arguments are read), so that a name
that does not import, or names no ``TrainerCallback``, is refused before any model weight loads. The environment
variable serves programs that start runs (``lf-multilr sweep`` hands its trial callback to its runs this way); the key
serves a config. Both may be set: the variable's classes come first, and a class named twice is added once.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from lf_multilr.config.keys import CALLBACKS, CALLBACKS_ENV
from lf_multilr.errors import ConfigError

_FIX = "name a `transformers.TrainerCallback` subclass as `module:Class` or `module.Class`, importable in the run"


def names_of(value: Any, key: str = CALLBACKS.name) -> tuple[str, ...]:
    """The class names in a key's value: a list of names, or one string of comma-separated names; () when unset."""
    if value is None:
        return ()
    if isinstance(value, str):
        items: list[Any] = value.split(",")
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        raise ConfigError(key, value, f"it is a {type(value).__name__}, not a list of class names", _FIX)
    if not all(isinstance(item, str) for item in items):
        raise ConfigError(key, value, "it holds something other than class names", _FIX)
    return tuple(item.strip() for item in items if item.strip())


def load(name: str, key: str, value: Any) -> type:
    """The class ``name`` names; a :class:`ConfigError` on ``key: value`` when it cannot be the run's callback."""
    from transformers import TrainerCallback

    module, sep, attribute = name.partition(":") if ":" in name else name.rpartition(".")
    if not sep or not module or not attribute:
        raise ConfigError(key, value, f"`{name}` is not a `module:Class` or `module.Class` name", _FIX)
    try:
        found: Any = importlib.import_module(module)
        for part in attribute.split("."):
            found = getattr(found, part)
    except (ImportError, AttributeError) as error:
        raise ConfigError(key, value, f"`{name}` does not import ({type(error).__name__}: {error})", _FIX) from None
    if not (isinstance(found, type) and issubclass(found, TrainerCallback)):
        raise ConfigError(key, value, f"`{name}` is {found!r}, not a TrainerCallback subclass", _FIX)
    return found


def callback_classes(key_value: Any, environ: Mapping[str, str]) -> tuple[type, ...]:
    """The classes the environment variable, then the key, name (each once), imported and checked."""
    named = [(CALLBACKS_ENV, environ.get(CALLBACKS_ENV)), (CALLBACKS.name, key_value)]
    found: list[type] = []
    for key, value in named:
        for name in names_of(value, key):
            cls = load(name, key, value)
            if cls not in found:
                found.append(cls)
    return tuple(found)
