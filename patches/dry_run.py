"""``lf-multilr plan``: the module table a run would use, from the config alone.

The config is parsed by LLaMA-Factory's own parser (with lf-multilr's keys), checked by the same pre-load checks
as a run, and the model is built by LLaMA-Factory's own ``load_model`` on the meta device (``train_from_scratch``:
from ``config.json``, no weights), so freezing, LoRA adapters, ``additional_target`` copies and value heads come
out as in the run. Then the same grouping and checks as the run's optimizer. Under ``USE_V1=1`` the v1 engine's
parser and optimizer plugin do the same (``patches/v1.py``).
"""

from __future__ import annotations

import copy
import os
import sys
from types import SimpleNamespace
from typing import Any

import torch

from lf_multilr.config import backends
from lf_multilr.config.settings import settings_of
from lf_multilr.grouping.plan import GroupPlan

from .hparams import preflight, refuse_kt
from .optimizer import plan_for

#: Settings that need a GPU, a launcher or real weights, and do not change which parameters train or how.
PLAN_OVERRIDES: dict[str, Any] = {
    "bf16": False,
    "fp16": False,
    "pure_bf16": False,
    "deepspeed": None,
    "use_cpu": True,
    "report_to": "none",
    "quantization_bit": None,
    "resize_vocab": False,
}


def read_config(argv: list[str]) -> dict[str, Any]:
    """CONFIG.yaml plus ``key=value`` overrides, read exactly as ``llamafactory-cli train`` reads them."""
    from llamafactory.hparams import read_args

    saved = sys.argv
    sys.argv = ["lf-multilr", *argv]
    try:
        return dict(read_args())
    finally:
        sys.argv = saved


def as_the_run_has_them(training_args: Any, config: dict[str, Any]) -> Any:
    """The parsed training arguments with what the plan had to switch off (see ``PLAN_OVERRIDES``) as the run will
    have it, for the checks: the DeepSpeed config is read, not started."""
    checked = copy.copy(training_args)
    checked.deepspeed = config.get("deepspeed")
    return checked


def make_plan(config: dict[str, Any]) -> GroupPlan:
    """The checked plan of the run ``config`` describes. Raises the run's ConfigError for bad input."""
    import lf_multilr

    lf_multilr.apply()
    from llamafactory.hparams.parser import _parse_train_args
    from llamafactory.model import load_model

    if backends.env_enabled(os.environ, "USE_V1"):  # LLaMA-Factory's v1 engine reads its own keys
        from .v1 import make_plan as make_v1_plan

        return make_v1_plan(config)
    refuse_kt(config)
    model_args, _, training_args, finetuning_args, _ = _parse_train_args({**config, **PLAN_OVERRIDES})
    settings = settings_of(finetuning_args)
    if settings.any_set:  # the run's own checks, on the run's own arguments
        preflight(settings, model_args, as_the_run_has_them(training_args, config), finetuning_args)
    model_args.train_from_scratch = True
    # The tokenizer only matters for resizing the vocabulary (off here) and for registering remote-code classes.
    tokenizer = SimpleNamespace(init_kwargs={})
    with torch.device("meta"):
        model = load_model(tokenizer, model_args, finetuning_args, True, finetuning_args.stage in ("rm", "ppo"))
    return plan_for(model, training_args, finetuning_args, settings)
