"""Per-module entries in every log: the trainer's log history and report_to integrations (``Trainer.log``),
LLaMA-Factory's ``trainer_log.jsonl`` (``LogCallback.on_log``), and the per-module gradient norms, measured
where HF measures ``grad_norm`` (``Trainer._clip_grad_norm``, or ``Trainer._get_grad_norm`` when nothing clips)."""

from __future__ import annotations

from functools import wraps
from typing import Any

from lf_multilr.config.settings import settings_of
from lf_multilr.grouping.schema import ours
from lf_multilr.reports.plots import plot_module_metrics
from lf_multilr.training.metrics import GradNormMonitor, Reduce, module_entries, module_lrs, will_log

from ._state import STATE, warn_once
from .distributed import sharded_norms
from .guard import innermost, stepping
from .registry import config_model_type, model_config, module_map


def _sharding(trainer: Any) -> tuple[Reduce | None, str | None]:
    """How this trainer's per-module gradient norms are made whole across ranks: (a reducer or None; None, or why
    they cannot be). DDP's gradients are whole on every rank; FSDP2's are DTensors, whose norms are global; FSDP1's
    with ``use_orig_params`` are pieces whose squares add up; DeepSpeed keeps them in its own partitioned buffers. A
    layer-wise optimizer (one per tensor, stepped in the gradient hooks) leaves no gradient to measure."""
    if getattr(innermost(getattr(trainer, "optimizer", None)), "optimizer_dict", None) is not None:
        return None, "layer-wise GaLore / APOLLO steps and clears each gradient inside the backward pass"
    kind = str(getattr(getattr(trainer, "accelerator", None), "distributed_type", ""))
    if "DEEPSPEED" in kind:
        return None, (
            "under DeepSpeed each rank holds only a partition of the gradients, in DeepSpeed's own buffers; a piece's "
            "norm is not the module's"
        )
    if "FSDP" in kind:
        return sharded_norms(trainer.model)
    return None, None


def monitor_of(trainer: Any) -> GradNormMonitor | None:
    """The trainer's monitor, built on first use; None when this is no multimodal LLaMA-Factory run to watch."""
    if trainer in STATE.monitors:
        return STATE.monitors[trainer]
    monitor = None
    finetuning_args = getattr(trainer, "finetuning_args", None)  # only LLaMA-Factory's trainers have it
    if finetuning_args is not None and getattr(finetuning_args, "log_module_metrics", False):
        table = settings_of(finetuning_args).table
        mapping = module_map(config_model_type(model_config(trainer.model)), table)
        optimizer = getattr(trainer, "optimizer", None)
        groups = ours(stepping(optimizer)) if optimizer is not None else []
        reduce, withheld = _sharding(trainer) if mapping is not None or groups else (None, None)
        if withheld is not None:
            warn_once(
                f"per-module gradient norms are not logged: {withheld}.",
                every_rank=False,
            )
        elif groups:
            monitor = GradNormMonitor.of_groups(groups, reduce)
        elif mapping is not None:
            monitor = GradNormMonitor.of_model(trainer.model.named_parameters(), mapping, reduce)
    STATE.monitors[trainer] = monitor
    return monitor


def measure(trainer: Any) -> None:
    """Measure the trainer's per-module gradient norms if the step being taken ends in a log."""
    monitor = monitor_of(trainer)
    if monitor is not None and will_log(trainer.args, trainer.state):
        monitor.measure(trainer.state.global_step + 1)


def wrap_clip_grad_norm(original: Any) -> Any:
    @wraps(original)
    def _clip_grad_norm(self: Any, model: Any, *args: Any, **kwargs: Any) -> Any:
        measure(self)  # before clipping: HF's grad_norm is the pre-clip norm
        return original(self, model, *args, **kwargs)

    return _clip_grad_norm


def wrap_get_grad_norm(original: Any) -> Any:
    @wraps(original)
    def _get_grad_norm(self: Any, model: Any, grad_norm: Any = None, *args: Any, **kwargs: Any) -> Any:
        if grad_norm is None:  # nothing clipped: HF measures here
            measure(self)
        return original(self, model, grad_norm, *args, **kwargs)

    return _get_grad_norm


def wrap_get_learning_rate(original: Any) -> Any:
    """HF reads the step's ``learning_rate`` between the optimizer step and the scheduler step: read the modules'
    LRs at the same moment, so that ``lr/<module>`` is the LR the step used, like ``learning_rate``."""

    @wraps(original)
    def _get_learning_rate(self: Any, *args: Any, **kwargs: Any) -> Any:
        value = original(self, *args, **kwargs)
        optimizer = getattr(self, "optimizer", None)
        if optimizer is not None and will_log(self.args, self.state):
            STATE.step_lrs[self] = module_lrs(stepping(optimizer))
        return value

    return _get_learning_rate


def wrap_trainer_log(original: Any) -> Any:
    """Add ``lr/<module>`` and ``grad_norm/<module>`` to every training log record, before HF stores and reports it."""

    @wraps(original)
    def log(self: Any, logs: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        optimizer = getattr(self, "optimizer", None)
        lrs = STATE.step_lrs.pop(self, None)
        if optimizer is not None and "learning_rate" in logs:
            logs.update(lrs if lrs is not None else module_lrs(stepping(optimizer)))
        monitor = STATE.monitors.get(self)
        if monitor is not None:
            logs.update(monitor.entries(self.state.global_step))
        return original(self, logs, *args, **kwargs)

    return log


def wrap_log_callback_on_log(original: Any) -> Any:
    """Write the record's per-module entries into the same ``trainer_log.jsonl`` line LLaMA-Factory writes."""

    @wraps(original)
    def on_log(self: Any, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        extra = module_entries(state.log_history[-1]) if state.log_history else {}
        if not extra:
            return original(self, args, state, control, **kwargs)
        write = self._write_log
        self._write_log = lambda output_dir, logs: write(output_dir, {**logs, **extra})
        try:
            return original(self, args, state, control, **kwargs)
        finally:
            del self._write_log

    return on_log


def wrap_plot_loss(original: Any) -> Any:
    """After LLaMA-Factory's ``training_loss.png``, draw ``training_lr.png`` and ``training_grad_norm.png``."""

    @wraps(original)
    def plot_loss(save_dictionary: str, *args: Any, **kwargs: Any) -> Any:
        result = original(save_dictionary, *args, **kwargs)
        for path in plot_module_metrics(save_dictionary):
            print("Figure saved at:", path)
        return result

    return plot_loss
