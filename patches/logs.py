"""Per-module entries in every log: the trainer's log history and report_to integrations (``Trainer.log``),
and LLaMA-Factory's ``trainer_log.jsonl`` (``LogCallback.on_log``)."""

from __future__ import annotations

from functools import wraps
from typing import Any

from lf_multilr.metrics import module_entries, module_lrs


def wrap_trainer_log(original: Any) -> Any:
    """Add ``lr/<module>`` to every training log record, before HF stores and reports it."""

    @wraps(original)
    def log(self: Any, logs: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        optimizer = getattr(self, "optimizer", None)
        if optimizer is not None and "learning_rate" in logs:
            logs.update(module_lrs(optimizer.param_groups))
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
