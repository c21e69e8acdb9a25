"""The run's extra callbacks: the ``transformers.TrainerCallback`` classes named by ``trainer_callbacks`` and
``LF_MULTILR_CALLBACKS`` (:mod:`lf_multilr.config.callbacks`) join the callbacks LLaMA-Factory hands its trainer.

LLaMA-Factory builds that list in ``llamafactory.train.tuner._training_function(config)``: it takes
``config["callbacks"]`` (``run_exp``'s ``callbacks``), parses the run's arguments, appends its own callbacks, and passes
the list to the stage's workflow, which gives it to the trainer. The wrapper hands that list over (``STATE``) for the
call; the run's arguments, parsed once by LLaMA-Factory's own parser, add one instance of each named class to it
(:func:`add_to_run`, called from the keyed ``FinetuningArguments``), so whatever the config's form (a YAML file,
``key=value`` overrides, ``--key value ...`` on the command line), the names are the parsed ones. Where the target is
left stock here, naming a callback is refused: it would never run.
"""

from __future__ import annotations

import os
from functools import wraps
from typing import Any

from lf_multilr.compat import RECOMMENDED
from lf_multilr.config.keys import CALLBACKS, CALLBACKS_ENV
from lf_multilr.errors import ConfigError

from ._state import STATE

#: The patch target: where LLaMA-Factory builds a run's callbacks.
OWNER, NAME = "llamafactory.train.tuner", "_training_function"
TARGET = f"{OWNER}.{NAME}"


def wrap_training_function(original: Any) -> Any:
    @wraps(original)
    def _training_function(config: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        callbacks = config.get("callbacks")
        STATE.run_callbacks = callbacks if isinstance(callbacks, list) else None
        try:
            return original(config, *args, **kwargs)
        finally:
            STATE.run_callbacks = None

    return _training_function


def add_to_run(classes: tuple[type, ...], key_value: Any) -> None:
    """The parsed arguments name ``classes``: refuse them where nothing would add them to the run; add one instance
    of each to the run being set up (once: the list is consumed)."""
    decision = STATE.decided.get(TARGET)
    if decision is not None and not decision.applies:
        key, value = (CALLBACKS.name, key_value) if key_value else (CALLBACKS_ENV, os.environ.get(CALLBACKS_ENV))
        raise ConfigError(
            key,
            value,
            f"`{TARGET}` ({decision.role}) is not patched: {decision.why()}, so the callbacks would never run",
            f"use a verified pair ({RECOMMENDED}), or remove `{CALLBACKS.name}` and unset {CALLBACKS_ENV}",
        )
    if STATE.run_callbacks is not None:
        STATE.run_callbacks.extend(cls() for cls in classes)
        STATE.run_callbacks = None
