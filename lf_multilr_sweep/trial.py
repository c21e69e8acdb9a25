"""How the sweep names a run's trial: the environment of each ``llamafactory-cli train`` it starts.

:class:`TrialRef` names the trial and the step where the run pauses; :func:`with_callback` adds the sweep's
:class:`~lf_multilr_sweep.callback.TrialCallback` to lf-multilr's ``LF_MULTILR_CALLBACKS``, the plugin's general
extension point that adds the ``TrainerCallback`` classes it names to every LLaMA-Factory run. It imports neither
Optuna nor transformers.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from lf_multilr.config.keys import CALLBACKS_ENV

STORAGE = "LF_MULTILR_TRIAL_STORAGE"
STUDY = "LF_MULTILR_TRIAL_STUDY"
NUMBER = "LF_MULTILR_TRIAL_NUMBER"
#: The training step at whose evaluation the run saves a checkpoint and stops; unset: the run trains to its end.
STOP_AT = "LF_MULTILR_TRIAL_STOP_AT"
#: The callback's name for ``LF_MULTILR_CALLBACKS``.
NAME = "lf_multilr_sweep.callback:TrialCallback"


@dataclass(frozen=True)
class TrialRef:
    """Which trial of which study a run trains, and where it stops."""

    storage: str
    study: str
    number: int
    stop_at: int | None = None

    def environ(self) -> dict[str, str]:
        """The variables that hand this trial, and the callback that reports to it, to a run."""
        env = {STORAGE: self.storage, STUDY: self.study, NUMBER: str(self.number)}
        return env | ({STOP_AT: str(self.stop_at)} if self.stop_at is not None else {})

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> TrialRef | None:
        number = environ.get(NUMBER)
        if number is None:
            return None
        stop_at = environ.get(STOP_AT)
        return cls(environ[STORAGE], environ[STUDY], int(number), int(stop_at) if stop_at else None)


def with_callback(environ: Mapping[str, str]) -> dict[str, str]:
    """``environ`` with :data:`NAME` added to ``LF_MULTILR_CALLBACKS`` (after any callbacks the user names there)."""
    named = [name.strip() for name in environ.get(CALLBACKS_ENV, "").split(",") if name.strip()]
    return {**environ, CALLBACKS_ENV: ",".join([*(n for n in named if n != NAME), NAME])}
