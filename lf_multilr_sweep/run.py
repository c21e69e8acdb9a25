"""One trial of ``lf-multilr sweep``: its ``llamafactory-cli train`` subprocess and what became of it.

The run trains into its own folder under the sweep's ``--out``, with its output in ``sweep_run.log`` there. Its
environment names the trial (:mod:`.trial`) and adds the sweep's callback to lf-multilr's ``LF_MULTILR_CALLBACKS``,
so that inside the run :class:`~lf_multilr_sweep.callback.TrialCallback` reports each eval loss to the study and,
under ``--prune``, pauses the run with a checkpoint at its rung; a later run resumes
from that checkpoint into the same folder (one segment after another, each appending to ``sweep_run.log``). While a
run trains, its process holds a lock on ``.sweep_run.lock`` in the folder, so that no other run resumes there (not
even after the sweep process that started it died). The result is read from the run's own logs: LLaMA-Factory's
``trainer_log.jsonl`` and, for an evaluation after training, ``all_results.json``.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import math
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .args import Sweep, value_text

LOG = "sweep_run.log"
TRAINER_LOG = "trainer_log.jsonl"
LOCK = ".sweep_run.lock"
INTERRUPTED = "interrupted (Ctrl-C)"
SAFE_VALUE = re.compile(r"[A-Za-z0-9.+-]+")
UNSAFE = re.compile(r"[^A-Za-z0-9._+-]")
MAX_NAME = 120
#: Seconds a run may take to stop after Ctrl-C before it is killed.
STOP_GRACE_S = 30

Points = list[tuple[int, float]]


def folder_name(setting: Mapping[str, Any]) -> str:
    """``key-value__key-value``; a short hash of that is added where a value needs escaping or the name is long."""
    raw = "__".join(f"{key}-{value_text(value)}" for key, value in setting.items())
    if all(SAFE_VALUE.fullmatch(value_text(value)) for value in setting.values()) and len(raw) <= MAX_NAME:
        return raw
    return f"{UNSAFE.sub('_', raw)[:MAX_NAME]}-{hashlib.sha256(raw.encode()).hexdigest()[:10]}"


def run_folder(out: Path, number: int, params: Mapping[str, Any]) -> Path:
    """A trial's folder: its number first (each try of a setting trains into a new folder), then its values."""
    return out / f"trial-{number:04d}__{folder_name(params)}"


def run_args(sweep: Sweep, params: Mapping[str, Any]) -> list[str]:
    """The run's ``key=value`` arguments, ``output_dir`` aside."""
    return [*sweep.overrides, *(f"{key}={value_text(value)}" for key, value in params.items())]


# Results


@dataclass(frozen=True)
class Curves:
    """A run's losses by step, as its logs recorded them."""

    train: Points = field(default_factory=list)
    eval: Points = field(default_factory=list)
    #: The eval loss after training (``do_eval``), when the run evaluated then.
    after: float | None = None

    @property
    def steps(self) -> int:
        return max((step for step, _ in self.train + self.eval), default=0)

    @property
    def final_eval(self) -> float | None:
        return self.after if self.after is not None else (self.eval[-1][1] if self.eval else None)

    @property
    def final_train(self) -> float | None:
        return self.train[-1][1] if self.train else None

    def eval_at(self, step: int) -> float | None:
        return next((loss for at, loss in reversed(self.eval) if at == step), None)

    def joined(self, before: Curves, at: int) -> Curves:
        """These curves of a run resumed at step ``at``, after ``before`` (the earlier segments' points up to it)."""
        return Curves(
            [p for p in before.train if p[0] <= at] + [p for p in self.train if p[0] > at],
            [p for p in before.eval if p[0] <= at] + [p for p in self.eval if p[0] > at],
            self.after,
        )


def _points(records: Sequence[Mapping[str, Any]], key: str) -> Points:
    return [(int(r.get("current_steps", 0)), float(r[key])) for r in records if isinstance(r.get(key), (int, float))]


def _records(folder: Path) -> list[tuple[str, dict[str, Any]]]:
    log = folder / TRAINER_LOG
    lines = log.read_text(encoding="utf-8").splitlines() if log.is_file() else []
    records = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:  # a line cut short by a killed run
            continue
        if isinstance(record, dict):
            records.append((line, record))
    return records


def read_curves(folder: Path) -> Curves:
    """From LLaMA-Factory's ``trainer_log.jsonl`` (written as the run goes, so a stopped run has it too) and the
    eval loss of ``all_results.json``; empty when the run logged nothing."""
    records = [record for _, record in _records(folder)]
    results = folder / "all_results.json"
    after = json.loads(results.read_text(encoding="utf-8")).get("eval_loss") if results.is_file() else None
    return Curves(_points(records, "loss"), _points(records, "eval_loss"), after if isinstance(after, float) else None)


def keep_log_until(folder: Path, step: int) -> None:
    """Before a run resumes at ``step``: drop what ``trainer_log.jsonl`` holds of later steps (an interrupted
    earlier try from the same checkpoint), so that the log goes on from the checkpoint."""
    log = folder / TRAINER_LOG
    if log.is_file():
        kept = [line for line, record in _records(folder) if int(record.get("current_steps", 0)) <= step]
        log.write_text("".join(line + "\n" for line in kept), encoding="utf-8")


def error_line(log: str, returncode: int) -> str:
    """The first line of the error a failed run ended with: its last traceback's exception line if any."""
    lines = log.splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("Traceback (most recent call last):")]
    if starts:
        for line in lines[starts[-1] + 1 :]:
            if line.strip() and not line[0].isspace():
                return line.strip()
    if returncode < 0:
        return f"killed by signal {-returncode}"
    last = [line.strip() for line in lines if line.strip()]
    return f"exit code {returncode}: {last[-1]}" if last else f"exit code {returncode}"


@dataclass(frozen=True)
class Outcome:
    """What a finished run means for its trial."""

    state: str  # COMPLETE, PAUSED (at its rung, with a checkpoint) or FAIL
    value: float | None
    curves: Curves
    seconds: float
    error: str = ""


def interrupted(returncode: int) -> bool:
    """Whether a run ended by Ctrl-C: SIGINT killed it, or it exited with the shell's code for that."""
    return returncode in (-signal.SIGINT, 128 + signal.SIGINT)


def checkpoint(folder: Path, step: int) -> Path:
    return folder / f"checkpoint-{step}"


@dataclass(frozen=True)
class Ended:
    """How a run's process ended: its exit code, its output, its wall seconds, and whether the sweep stopped it."""

    returncode: int
    log: str
    seconds: float
    stopped: bool


def outcome(curves: Curves, ended: Ended, pause: tuple[Path, int] | None = None) -> Outcome:
    """A trial's state and value from its run: the final eval loss, or the final train loss without evaluations;
    for a run that was to ``pause`` in its folder at a step, whether it stopped there with a checkpoint."""
    returncode, log, seconds = ended.returncode, ended.log, ended.seconds
    if returncode != 0:
        error = INTERRUPTED if ended.stopped or interrupted(returncode) else error_line(log, returncode)
        return Outcome("FAIL", None, curves, seconds, error)
    if pause is not None:
        folder, step = pause
        if curves.steps != step or not checkpoint(folder, step).is_dir():
            return Outcome(
                "FAIL",
                None,
                curves,
                seconds,
                f"the run was to pause at step {step} with a checkpoint, and ended at step {curves.steps} "
                f"{'with' if checkpoint(folder, step).is_dir() else 'without'} one (is there an evaluation at step "
                f"{step}, and is lf-multilr active in the runs: `lf-multilr doctor`?)",
            )
        return Outcome("PAUSED", curves.eval_at(step), curves, seconds)
    value = curves.final_eval if curves.final_eval is not None else curves.final_train
    if value is None:
        return Outcome("FAIL", None, curves, seconds, "the run logged no training loss (is do_train set?)")
    if not math.isfinite(value):
        return Outcome("FAIL", None, curves, seconds, f"its final loss is {value}")
    return Outcome("COMPLETE", value, curves, seconds)


# Running


class FolderBusy(RuntimeError):
    """Another run still trains in the folder."""


@contextlib.contextmanager
def folder_lock(folder: Path) -> Iterator[int]:
    """Hold the folder's run lock (its file descriptor, for the run to inherit); :class:`FolderBusy` if a run
    holds it."""
    folder.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(folder / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise FolderBusy(f"a run still trains in {folder}") from None
        yield descriptor
    finally:
        os.close(descriptor)


def folder_free(folder: Path) -> bool:
    """Whether no run trains in ``folder`` now."""
    try:
        with folder_lock(folder):
            return True
    except FolderBusy:
        return False


@dataclass(frozen=True)
class Launch:
    """A run to start: its command and environment, its folder, and for a resumed run the line its log gets first."""

    command: Sequence[str]
    env: Mapping[str, str]
    folder: Path
    resumed: str | None = None


def train(launch: Launch, stop: threading.Event, heartbeat: Callable[[], None], every: float) -> tuple[int, bool]:
    """Run the command with its output in ``folder/sweep_run.log``, calling ``heartbeat`` every ``every`` seconds;
    a resumed run appends to the log, after its line. The run inherits the folder's lock (see the module).
    When ``stop`` is set, the run gets SIGINT (as from Ctrl-C), then SIGKILL after :data:`STOP_GRACE_S`.
    Returns the exit code and whether it was stopped."""
    command, env, folder, resumed = launch.command, launch.env, launch.folder, launch.resumed
    with folder_lock(folder) as lock, (folder / LOG).open("a" if resumed else "w", encoding="utf-8") as log:
        if resumed:
            log.write(f"\n===== lf-multilr sweep: {resumed} =====\n\n")
            log.flush()
        process = subprocess.Popen(
            command, env=dict(env), stdin=subprocess.DEVNULL, stdout=log, stderr=log, pass_fds=(lock,)
        )
        try:
            return _wait(process, stop, heartbeat, every)
        finally:
            if process.poll() is None:  # this worker failed while its run trained: the run must not outlive it
                process.kill()
                process.wait()


def _wait(
    process: subprocess.Popen[bytes], stop: threading.Event, heartbeat: Callable[[], None], every: float
) -> tuple[int, bool]:
    beat, stopped_at = time.monotonic(), None
    while True:
        try:
            return process.wait(timeout=1.0), stopped_at is not None
        except subprocess.TimeoutExpired:
            pass
        if stop.is_set() and stopped_at is None:
            process.send_signal(signal.SIGINT)
            stopped_at = time.monotonic()
        if stopped_at is not None and time.monotonic() - stopped_at > STOP_GRACE_S:
            process.kill()
        if time.monotonic() - beat >= every:
            heartbeat()
            beat = time.monotonic()
