"""What LoRA and OFT train, decided before the weights load: LLaMA-Factory's own adapter setup on the model's structure.

Under LoRA and OFT LLaMA-Factory freezes the base weights and trains adapters on the layers its target rule picks
(``lora_target``, its ``all`` with the freeze flags, ``patch_target_modules``) plus full copies of the modules named in
``additional_target``. Which of a module's layers that reaches depends on the model's layer names (``all`` reaches
Qwen3-VL's mergers but not Qwen2-VL's), so the config's flags alone cannot say whether a module trains. Here the model
is built from its ``config.json`` on the meta device (no weights, no memory), LLaMA-Factory's ``init_adapter`` prepares
it as the run will, and the module keys are checked on what it trains, with the message of the check on the model
that steps.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

import torch

from lf_multilr.config.settings import Settings
from lf_multilr.grouping.checks import check_modules

from . import _state
from .optimizer import build_for

#: LLaMA-Factory's model classes, in the order its loader tries them for a config (``load_model``; 0.9.4 tries
#: ``AutoModelForVision2Seq`` second, which transformers 5 no longer has).
_LOAD_CLASSES = (
    "AutoModelForImageTextToText",
    "AutoModelForVision2Seq",
    "AutoModelForSeq2SeqLM",
    "AutoModelForTextToWaveform",
    "AutoModelForCausalLM",
)
#: Model types whose loaded model LLaMA-Factory replaces by its ``thinker``.
_THINKERS = ("qwen2_5_omni", "qwen3_omni_moe")


def structure_on_meta(config: Any, trust_remote_code: bool) -> torch.nn.Module:
    """The model ``config`` describes, built on the meta device with the class LLaMA-Factory's loader picks."""
    import transformers

    classes = [getattr(transformers, name) for name in _LOAD_CLASSES if hasattr(transformers, name)]
    with torch.device("meta"):
        for auto in classes:
            try:
                model = auto.from_config(config, trust_remote_code=trust_remote_code)
            except ValueError:  # not a config of this auto class: the loader's next choice
                continue
            return model.thinker if getattr(config, "model_type", None) in _THINKERS else model
    raise ValueError(f"no model class of LLaMA-Factory's loader builds `{getattr(config, 'model_type', None)}`")


def prepared_on_meta(config: Any, model_args: Any, finetuning_args: Any) -> torch.nn.Module | None:
    """The model as LLaMA-Factory's adapter setup prepares it for training, on the meta device; None where the
    structure alone does not decide what trains (an adapter resumed from disk keeps its own targets) or the model
    cannot be built so (DeepSpeed ZeRO-3 builds it partitioned; unsloth builds its own)."""
    from llamafactory.model.adapter import init_adapter
    from transformers.integrations import is_deepspeed_zero3_enabled

    if model_args.adapter_name_or_path or getattr(model_args, "use_unsloth", False) or is_deepspeed_zero3_enabled():
        return None
    model = structure_on_meta(config, bool(getattr(model_args, "trust_remote_code", False)))
    prepared = copy.copy(finetuning_args)  # init_adapter may add the embeddings to `additional_target`
    prepared.pissa_init = False  # PiSSA's initial SVD needs the weights; the adapted layers are the same
    library = logging.getLogger("llamafactory")
    level = library.level
    library.setLevel(logging.ERROR)  # the run says it all again when it loads the model
    try:
        return init_adapter(model.config, model, model_args, prepared, True)
    finally:
        library.setLevel(level)


def check_adapted(settings: Settings, config: Any, model_args: Any, training_args: Any, finetuning_args: Any) -> None:
    """Refuse, before the weights load, a module key whose module LoRA or OFT leaves with nothing trainable."""
    try:
        model = prepared_on_meta(config, model_args, finetuning_args)
    except Exception as error:  # noqa: BLE001 - any failure to build the structure leaves the check to the optimizer
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        _state.warn_once(
            f"what {finetuning_args.finetuning_type} trains cannot be worked out before the weights load ({first}); "
            "the keys are checked on the prepared model when the optimizer is built."
        )
        return
    if model is not None:
        check_modules(build_for(model, training_args, finetuning_args, settings), finetuning_args.finetuning_type)
