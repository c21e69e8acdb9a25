"""The run's extra callbacks: the ``transformers.TrainerCallback`` classes named by ``trainer_callbacks`` and
``LF_MULTILR_CALLBACKS`` (:mod:`lf_multilr.config.callbacks`) join the callbacks LLaMA-Factory hands its trainer.

LLaMA-Factory builds that list in ``llamafactory.train.tuner._training_function(config)``: it takes
``config["callbacks"]`` (``run_exp``'s ``callbacks``), appends its own, and passes the list to the stage's workflow,
which gives it to the trainer. The wrapper reads the run's arguments once, as LLaMA-Factory reads them, adds one
instance of each named class to that list, and hands the arguments it read on (LLaMA-Factory's ``read_args`` returns
arguments already read as they are), so the config is read once. With no name given, the list is LLaMA-Factory's own.
"""

from __future__ import annotations

import os
from functools import wraps
from typing import Any

from lf_multilr.config.callbacks import callback_classes
from lf_multilr.config.keys import CALLBACKS

from .hparams import raw_values, read_args


def wrap_training_function(original: Any) -> Any:
    @wraps(original)
    def _training_function(config: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        callbacks, raw = config.get("callbacks"), read_args(config.get("args"))
        if isinstance(callbacks, list):
            callbacks.extend(cls() for cls in callback_classes(raw_values(raw).get(CALLBACKS.name), os.environ))
        return original({**config, "args": raw}, *args, **kwargs)

    return _training_function
