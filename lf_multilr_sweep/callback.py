"""Inside a training run that ``lf-multilr sweep`` started: :class:`TrialCallback` reports each eval loss to the run's
Optuna trial and, under ``--prune``, saves a checkpoint and stops the run at the evaluation of its rung, so that the
sweep can resume it there.

The sweep hands the callback to its runs through lf-multilr's general extension point, the environment variable
``LF_MULTILR_CALLBACKS`` (lf-multilr adds the ``TrainerCallback`` classes it names to every LLaMA-Factory run), and
names the trial in the same environment (:class:`TrialRef`). Only the main process talks to the study; the stop step
is in every rank's environment, so that all ranks stop at the same step without talking to each other. This module
imports Optuna only when a run reports its first loss.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from transformers import TrainerCallback

from .trial import TrialRef

if TYPE_CHECKING:
    import optuna


def open_trial(ref: TrialRef) -> optuna.Trial:
    """The running trial ``ref`` names, found by its number through the storage's public API."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # SQLite: wait for the sweep's own writes to the same file rather than fail at once
    kwargs = {"connect_args": {"timeout": 60}} if ref.storage.startswith("sqlite") else {}
    storage = optuna.storages.RDBStorage(ref.storage, engine_kwargs=kwargs)
    study = optuna.load_study(study_name=ref.study, storage=storage)
    study_id = storage.get_study_id_from_name(ref.study)
    return optuna.trial.Trial(study, storage.get_trial_id_from_study_id_trial_number(study_id, ref.number))


class Reporter:
    """The trial of one run: its eval losses go to the study with ``trial.report``."""

    def __init__(self, ref: TrialRef) -> None:
        self.ref = ref
        self.reported: set[int] = set()
        self.trial: optuna.Trial | None = None
        self.broken = False

    def report(self, step: int, loss: float) -> None:
        """Record ``loss`` at ``step``. A step already reported (the evaluation after training repeats the last one)
        is not reported again; a study out of reach never breaks the training (the sweep reads the log then)."""
        if self.broken or step in self.reported or not math.isfinite(loss):
            return
        self.reported.add(step)
        try:
            self.trial = self.trial or open_trial(self.ref)
            self.trial.report(loss, step)
        except Exception as error:  # noqa: BLE001 - a study out of reach must never break the training
            self.broken = True
            print(
                f"lf-multilr sweep: trial {self.ref.number} of study `{self.ref.study}` gets no more reports "
                f"({type(error).__name__}: {error}); the run trains on",
                file=sys.stderr,
            )


class TrialCallback(TrainerCallback):  # type: ignore[misc]
    """Reports each evaluation's ``eval_loss`` to the run's trial; at the evaluation of the sweep's stop step (before
    the run's last step) it asks the trainer to save a checkpoint and stop (HF saves right after the evaluation,
    then ends the training loop). Without a trial in the environment it does nothing."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        ref = TrialRef.from_environ(os.environ if environ is None else environ)
        self.reporter = None if ref is None else Reporter(ref)

    def on_evaluate(
        self, args: Any, state: Any, control: Any, metrics: Mapping[str, Any] | None = None, **_: Any
    ) -> Any:
        loss = (metrics or {}).get("eval_loss")
        if self.reporter is None or not isinstance(loss, (int, float)):
            return control
        step = state.global_step
        if state.is_world_process_zero:
            self.reporter.report(step, float(loss))
        if self.reporter.ref.stop_at == step and step < state.max_steps:
            control.should_save = True
            control.should_training_stop = True
        return control
