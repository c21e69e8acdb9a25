"""Stand-ins for transformers 4.x (LLaMA-Factory 0.9.4 pins 4.57), which has no ``Trainer._clip_grad_norm`` or
``Trainer._get_grad_norm``: its training loop clips inline with ``self.accelerator.clip_grad_norm_``, the call whose
return value is HF's ``grad_norm``, and only when ``max_grad_norm > 0`` (otherwise it logs no ``grad_norm`` at all).

The per-module gradient norms are measured in that call, before it clips, for the trainer whose training loop is
running; with ``max_grad_norm: 0`` they are withheld like HF's own, and one warning says so.
"""

from __future__ import annotations

from functools import wraps
from typing import Any

from lf_multilr.config.settings import settings_of

from ._state import STATE, logger
from .metrics import measure
from .registry import config_model_type, model_config, module_map


def _warn_if_unmeasured(trainer: Any) -> None:
    finetuning_args = getattr(trainer, "finetuning_args", None)  # only LLaMA-Factory's trainers have it
    if finetuning_args is None or not getattr(finetuning_args, "log_module_metrics", False):
        return
    max_grad_norm = trainer.args.max_grad_norm
    if max_grad_norm is not None and max_grad_norm > 0:
        return
    multimodal = module_map(config_model_type(model_config(trainer.model))) is not None
    if multimodal or settings_of(finetuning_args).any_set:
        import transformers

        logger().warning_rank0(
            f"lf-multilr: grad_norm/<module> is not logged: transformers {transformers.__version__} measures no "
            f"gradient norm when max_grad_norm is {max_grad_norm} (it logs no grad_norm either); "
            "set max_grad_norm > 0 to see them."
        )


def wrap_inner_training_loop(original: Any) -> Any:
    """Remember which trainer's loop runs, so that its accelerator's clipping can be told apart."""

    @wraps(original)
    def _inner_training_loop(self: Any, *args: Any, **kwargs: Any) -> Any:
        _warn_if_unmeasured(self)
        running = STATE.running  # the list this loop joined (a revert meanwhile starts a new one)
        running.append(self)
        try:
            return original(self, *args, **kwargs)
        finally:
            running.remove(self)

    return _inner_training_loop


def wrap_accelerator_clip_grad_norm(original: Any) -> Any:
    """Measure the module norms before the running trainer's accelerator clips (``parameters`` is left untouched:
    the trainer passes a generator)."""

    @wraps(original)
    def clip_grad_norm_(self: Any, parameters: Any, max_norm: Any, *args: Any, **kwargs: Any) -> Any:
        trainer = STATE.running[-1] if STATE.running else None
        if trainer is not None and getattr(trainer, "accelerator", None) is self:
            measure(trainer)
        return original(self, parameters, max_norm, *args, **kwargs)

    return clip_grad_norm_
