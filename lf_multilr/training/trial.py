"""Inside a training run that ``lf-multilr sweep`` started: report each eval loss to the run's Optuna trial, and stop
the run at the step the sweep named, with a checkpoint, so that the sweep can resume it there.

The sweep names the trial in the run's environment (:class:`TrialRef`) and, under ``--prune``, the step at which the
run pauses (a rung of its successive halving). Without the environment this module does nothing: it is read once
per process, and every later call returns at once. Only the main process talks to the study; the stop step is in
every rank's environment, so that all ranks stop at the same step without talking to each other.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import optuna

STORAGE = "LF_MULTILR_TRIAL_STORAGE"
STUDY = "LF_MULTILR_TRIAL_STUDY"
NUMBER = "LF_MULTILR_TRIAL_NUMBER"
#: The training step at whose evaluation the run saves a checkpoint and stops; unset: the run trains to its end.
STOP_AT = "LF_MULTILR_TRIAL_STOP_AT"


@dataclass(frozen=True)
class TrialRef:
    """Which trial of which study a run trains, and where it stops."""

    storage: str
    study: str
    number: int
    stop_at: int | None = None

    def environ(self) -> dict[str, str]:
        """The variables that hand this trial to a run."""
        env = {STORAGE: self.storage, STUDY: self.study, NUMBER: str(self.number)}
        return env | ({STOP_AT: str(self.stop_at)} if self.stop_at is not None else {})

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> TrialRef | None:
        number = environ.get(NUMBER)
        if number is None:
            return None
        stop_at = environ.get(STOP_AT)
        return cls(environ[STORAGE], environ[STUDY], int(number), int(stop_at) if stop_at else None)


class Reporter:
    """The trial of one run: its eval losses go to the study."""

    def __init__(self, ref: TrialRef) -> None:
        self.ref = ref
        self.reported: set[int] = set()
        self.trial: optuna.Trial | None = None
        self.broken = False

    def _connect(self) -> optuna.Trial:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        # SQLite: wait for the sweep's own writes to the same file rather than fail at once
        kwargs = {"connect_args": {"timeout": 60}} if self.ref.storage.startswith("sqlite") else {}
        storage = optuna.storages.RDBStorage(self.ref.storage, engine_kwargs=kwargs)
        study = optuna.load_study(study_name=self.ref.study, storage=storage)
        trial_id = study._storage.get_trial_id_from_study_id_trial_number(study._study_id, self.ref.number)
        return optuna.Trial(study, trial_id)

    def report(self, step: int, loss: float) -> None:
        """Record ``loss`` at ``step``. A step already reported (the evaluation after training repeats the last one)
        is not reported again; a study out of reach never breaks the training (the sweep reads the log then)."""
        if self.broken or step in self.reported or not math.isfinite(loss):
            return
        self.reported.add(step)
        try:
            self.trial = self.trial or self._connect()
            self.trial.report(loss, step)
        except Exception as error:  # noqa: BLE001 - a study out of reach must never break the training
            self.broken = True
            print(
                f"lf-multilr: trial {self.ref.number} of sweep study `{self.ref.study}` gets no more reports "
                f"({type(error).__name__}: {error}); the run trains on",
                file=sys.stderr,
            )


class State(Protocol):
    """What is read of the trainer's state (HF's ``TrainerState``)."""

    global_step: int
    max_steps: int
    is_world_process_zero: bool


_reporter: list[Reporter | None] = []


def current() -> Reporter | None:
    """This process's reporter, or ``None`` when no sweep started it; the environment is read once."""
    if not _reporter:
        ref = TrialRef.from_environ(os.environ)
        _reporter.append(None if ref is None else Reporter(ref))
    return _reporter[0]


def after_log(state: State, logs: Mapping[str, Any]) -> bool:
    """After the trainer logged ``logs``: report an eval loss; whether the run saves and stops here (the
    evaluation at the sweep's stop step, before the last step)."""
    reporter = current()
    if reporter is None or not isinstance(logs.get("eval_loss"), (int, float)):
        return False
    step = state.global_step
    if state.is_world_process_zero:
        reporter.report(step, float(logs["eval_loss"]))
    return reporter.ref.stop_at == step and step < state.max_steps
