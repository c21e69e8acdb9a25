"""``lf-multilr sweep``: find good module learning rates with short, real LLaMA-Factory trainings, as an Optuna study.

lf-multilr sweep CONFIG.yaml [--set KEY=V1,V2 ...] [--range KEY=LOW:HIGH[:log] ...] [--trials N] [--prune]
    [--workers N] [--storage URL] [--seed S] [--max-steps N] [--out DIR] [key=value ...]

Every combination of the ``--set`` values, and for each one ``--trials`` TPE samples of the ``--range`` axes, runs
as ``llamafactory-cli train CONFIG.yaml key=value ...`` (the one next to this interpreter) in its own folder
under ``--out``. Each run is a trial of the study in ``DIR/sweep.db`` (or ``--storage``): its value is the run's
final eval loss (final train loss without evaluations). Run the same command again, on this machine or on others
sharing the storage, and it trains only what no trial has finished. Under ``--prune`` the runs go in rounds of
successive halving: every setting trains to the first rung and pauses there, the best resume from their checkpoints
(:mod:`.halving`). The pieces: :mod:`.args` (the command line), :mod:`.study` (the study and its
claims), :mod:`.halving` (the rounds), :mod:`.run` (one run), :mod:`.report` (the summary), :mod:`.trial` (how a run
is told its trial) and :mod:`.callback` (inside each run, through lf-multilr's ``LF_MULTILR_CALLBACKS``).

This module imports neither LLaMA-Factory nor Optuna at import time.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from types import FrameType
from typing import Any

from .args import Sweep, parse_args, shown_url
from .halving import PAUSED, REACHED
from .report import (
    ARGS,
    DEVICES,
    EVAL_CURVE,
    EVAL_LOSS,
    HOST,
    RUN_DIR,
    SECONDS,
    STEPS,
    TRAIN_CURVE,
    TRAIN_LOSS,
    summarize,
)
from .run import (
    INTERRUPTED,
    LOG,
    Curves,
    Ended,
    Launch,
    Outcome,
    checkpoint,
    interrupted,
    keep_log_until,
    outcome,
    read_curves,
    run_args,
    run_folder,
    train,
)
from .study import ABANDONED, ERROR, HEARTBEAT_S, INTERRUPTION, DefinitionMismatch, Job, Study
from .trial import TrialRef, with_callback

#: Seconds between a waiting worker's looks at the study (under ``--prune``, while the round's last runs train).
POLL_S = 2.0


def _describe(result: Outcome, stop_at: int | None) -> str:
    curves = result.curves
    if result.state == "FAIL":
        return f"FAIL: {result.error}"
    losses = [f"final train loss {curves.final_train:.4f}"] if curves.final_train is not None else []
    losses += [f"eval loss {curves.final_eval:.4f}"] if curves.final_eval is not None else []
    if result.state == "PAUSED":
        loss = "" if result.value is None else f", eval loss {result.value:.4f}"
        return f"paused at step {stop_at} with a checkpoint, for the round{loss}"
    return f"COMPLETE, {', '.join(losses)}"


def _stored_curves(attrs: Mapping[str, Any]) -> Curves:
    def points(name: str) -> list[tuple[int, float]]:
        return [(int(step), float(loss)) for step, loss in attrs.get(name) or []]

    return Curves(points(TRAIN_CURVE), points(EVAL_CURVE))


class Runner:
    """The workers of one command: each claims a run, trains it, records it, until none is left to claim (under
    ``--prune``, until no run of the study trains anywhere either: the next round may need this worker)."""

    def __init__(self, sweep: Sweep, study: Study) -> None:
        from tqdm import tqdm

        self.sweep, self.study = sweep, study
        self.stop, self.done, self.lock = threading.Event(), threading.Event(), threading.Lock()
        self.working = 0
        self.crashed: list[str] = []
        self.bar = tqdm(
            total=len(study.slots), initial=study.settled(), desc="sweep", unit="trial", file=sys.stderr, leave=True
        )
        self.write = tqdm.write

    def say(self, text: str) -> None:
        self.write(text, file=sys.stdout)
        sys.stdout.flush()

    def _progress(self) -> None:
        complete = [t for t in self.study.trials() if t.state.name == "COMPLETE" and t.value is not None]
        with self.lock:
            while self.study.notes:
                self.say(self.study.notes.pop(0))
            self.bar.n = self.study.settled()
            if complete:
                best = min(complete, key=lambda t: t.value if t.value is not None else float("inf"))
                self.bar.set_postfix_str(f"best {best.value:.4f} (trial {best.number})", refresh=False)
            self.bar.refresh()

    def environment(self, job: Job, devices: str | None) -> dict[str, str]:
        ref = TrialRef(self.sweep.storage, self.sweep.study, job.trial.number, job.stop_at)
        env = with_callback({**os.environ, **ref.environ()})
        if self.sweep.workers > 1:  # runs at once must not share one torchrun port: each picks a free one
            env.pop("MASTER_PORT", None)
        return env | ({"CUDA_VISIBLE_DEVICES": devices} if devices is not None else {})

    def _start(self, job: Job, devices: str | None) -> tuple[Path, list[str], str]:
        """The run's folder, its extra arguments and its first line on screen; a new run's attributes recorded."""
        trial, params = job.trial, {key: job.trial.params[key] for key in self.sweep.keys}
        goal = "" if job.stop_at is None else f" to step {job.stop_at}"
        if job.resume_from is None:
            folder, args = run_folder(self.sweep.out, trial.number, params), run_args(self.sweep, params)
            for name, value in ((RUN_DIR, str(folder)), (ARGS, args), (HOST, self.study.host), (DEVICES, devices)):
                if value is not None:
                    trial.set_user_attr(name, value)
            return folder, [], f"training{goal}"
        folder = Path(self.study.frozen(trial.number).user_attrs[RUN_DIR])
        keep_log_until(folder, job.resume_from)
        extra = [f"resume_from_checkpoint={checkpoint(folder, job.resume_from)}"]
        return folder, extra, f"resuming from step {job.resume_from}{goal or ' to the end'}"

    def run_job(self, job: Job, devices: str | None) -> Outcome:
        """Train ``job``'s run (to its end, or to its stop step), with heartbeats for the study; what came of it."""
        trial = job.trial
        before = self.study.frozen(trial.number).user_attrs
        folder, extra, doing = self._start(job, devices)
        args = run_args(self.sweep, {key: trial.params[key] for key in self.sweep.keys})
        label = " ".join(args[len(self.sweep.overrides) :])
        self.say(f"trial {trial.number} {label}: {doing}, log in {folder / LOG}")
        command = [self.sweep.cli, "train", str(self.sweep.config), *args, f"output_dir={folder}", *extra]
        offset = (folder / LOG).stat().st_size if job.resume_from is not None and (folder / LOG).is_file() else 0
        start = time.monotonic()
        resumed = None if job.resume_from is None else f"{doing} ({' '.join(extra)})"
        launch = Launch(command, self.environment(job, devices), folder, resumed)
        returncode, stopped = train(launch, self.stop, lambda: self.study.heartbeat(trial), HEARTBEAT_S)
        if interrupted(returncode):
            self.stop.set()
        reported = self.study.frozen(trial.number)
        with (folder / LOG).open(encoding="utf-8", errors="replace") as handle:
            handle.seek(offset)
            log = handle.read()
        curves = read_curves(folder)
        if job.resume_from is not None:
            curves = curves.joined(_stored_curves(before), job.resume_from)
        if self.sweep.prune and curves.eval and not reported.intermediate_values and returncode == 0:
            self.say(
                f"trial {trial.number}: warning: its run logged eval losses but reported none to the study (the "
                "sweep ranks it by its log); is lf-multilr active in the runs (`lf-multilr doctor`)?"
            )
        seconds = time.monotonic() - start + float(before.get(SECONDS) or 0)
        pause = None if job.stop_at is None else (folder, job.stop_at)
        result = outcome(curves, Ended(returncode, log, seconds, stopped or self.stop.is_set()), pause)
        self.say(f"trial {trial.number} {label}: {_describe(result, job.stop_at)} ({time.monotonic() - start:.1f} s)")
        return result

    def record(self, job: Job, result: Outcome) -> None:
        """The run's results as user attributes, then its state: the value of a COMPLETE trial; a paused one stays
        RUNNING, at its rung; a resumed run that was interrupted leaves its trial waiting at the rung it resumed
        from (its checkpoint is still there)."""
        import optuna

        trial, curves = job.trial, result.curves
        try:
            if result.state == "FAIL" and result.error == INTERRUPTED and job.resume_from is not None:
                trial.set_user_attr(SECONDS, round(result.seconds, 1))
                self._pause(job, f"{INTERRUPTED} while resuming; resumes from step {job.resume_from} again")
                return
            attrs: Mapping[str, Any] = {
                TRAIN_CURVE: curves.train,
                EVAL_CURVE: curves.eval,
                STEPS: curves.steps or None,
                SECONDS: round(result.seconds, 1),
                TRAIN_LOSS: curves.final_train,
                EVAL_LOSS: curves.final_eval,
                ERROR: result.error or None,
                ABANDONED: (result.error == INTERRUPTED and job.resume_from is None) or None,
            }
            for name, value in attrs.items():
                if value is not None:
                    trial.set_user_attr(name, value)
            if result.state == "PAUSED":
                self._paused_at(job, result)
            elif result.state == "COMPLETE":
                self.study.study.tell(trial, result.value)
            else:
                self.study.study.tell(trial, state=optuna.trial.TrialState[result.state])
        except optuna.exceptions.UpdateFinishedTrialError:
            self.say(
                f"trial {trial.number}: another sweep process failed it meanwhile (no heartbeat came through for a "
                "while); its run's results stay in its folder, and its setting runs again in the next command"
            )

    def _paused_at(self, job: Job, result: Outcome) -> None:
        """The run stopped at its rung with a checkpoint: its eval loss there is the trial's for the round."""
        assert job.stop_at is not None
        if job.stop_at not in self.study.frozen(job.trial.number).intermediate_values and result.value is not None:
            job.trial.report(result.value, job.stop_at)
        job.trial.set_user_attr(REACHED, job.stop_at)
        job.trial.set_user_attr(PAUSED, True)

    def _pause(self, job: Job, why: str) -> None:
        job.trial.set_user_attr(INTERRUPTION, why)
        job.trial.set_user_attr(PAUSED, True)

    def _abandon(self, job: Job) -> None:
        import optuna

        if job.resume_from is not None:
            self._pause(job, f"interrupted (Ctrl-C) before its run resumed; resumes from step {job.resume_from}")
            return
        job.trial.set_user_attr(ERROR, "interrupted (Ctrl-C) before its run started")
        job.trial.set_user_attr(ABANDONED, True)
        self.study.study.tell(job.trial, state=optuna.trial.TrialState.FAIL)

    def work(self, devices: str | None) -> None:
        try:
            self._work(devices)
        except Exception as error:  # noqa: BLE001 - a worker's failure stops the sweep with its reason, not a hang
            self.crashed.append(f"{type(error).__name__}: {error}")
            self.stop.set()
        finally:
            with self.lock:
                self.working -= 1
                if not self.working:
                    self.done.set()

    def _work(self, devices: str | None) -> None:
        while not self.stop.is_set():
            job = self.study.claim()
            if job is not None or self.study.notes:
                self._progress()
            if job is None:
                # wait while a run trains, as the claim saw the study or as it is now: a run seen training by the
                # claim may pause before `in_progress` looks, and the claim deciding its round be another process's
                if not (self.sweep.prune and (self.study.held_at_claim or self.study.in_progress())):
                    return
                self.stop.wait(POLL_S)  # the round's last runs train elsewhere: its decision may bring work
                continue
            if self.stop.is_set():
                self._abandon(job)
                return
            self.record(job, self.run_job(job, devices))
            self._progress()

    def run(self) -> bool:
        """Run the workers until no slot is free; True when Ctrl-C (or SIGTERM) stopped them. The main thread waits
        on an event, not on ``Thread.join``: a join that Ctrl-C interrupts can take a running thread for ended
        (CPython 3.11), and the process would leave its trials RUNNING."""
        self.working = len(self.sweep.devices)
        for devices in self.sweep.devices:
            threading.Thread(target=self.work, args=(devices,), daemon=True).start()
        try:
            while not self.done.wait(timeout=0.5):
                pass
        except KeyboardInterrupt:
            self.stop.set()
            self.say(
                "lf-multilr sweep: interrupted; stopping the runs and recording them as failed (a resumed one waits "
                "at its rung again) ..."
            )
            while not self.done.wait(timeout=0.5):
                pass
            return True
        finally:
            self.bar.close()
        return self.stop.is_set() and not self.crashed


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def unsettled_failures(study: Study) -> int:
    """This command's slots whose last trial failed."""
    last: dict[str, str] = {}
    for attempt in sorted(study.attempts(), key=lambda a: a.number):
        last[attempt.slot] = attempt.state
    return sum(last.get(slot.key) == "FAIL" for slot in study.slots)


def _finish(sweep: Sweep, study: Study) -> int:
    trials = study.trials()
    table, notes = summarize(study.study, trials, sweep)
    print("\n" + table)
    for note in notes:
        print(note)
    outputs = ["sweep.csv", "sweep.md", "sweep.png", *(p.name for p in sorted(sweep.out.glob("sweep_*.png")))]
    print(f"{', '.join(outputs)} are in {sweep.out}")
    print(f"the study: optuna-dashboard {shown_url(sweep.storage)}  (study `{sweep.study}`)")
    entries = study.entries(trials)
    elsewhere = sum(entry.held for entry in entries)
    if elsewhere:
        print(f"lf-multilr sweep: {elsewhere} trials are still running in other sweep processes")
    waiting = [t for t, entry in zip(trials, entries, strict=True) if entry.resumable]
    if waiting:
        hosts = ", ".join(sorted({str(t.user_attrs.get(HOST)) for t in waiting}))
        print(
            f"lf-multilr sweep: {len(waiting)} trials wait at a rung for a sweep process that sees their checkpoints "
            f"(trained on {hosts}): run the same command there",
            file=sys.stderr,
        )
    failed = unsettled_failures(study)
    if failed:
        again = "run the same command again to train them again"
        if sweep.prune and study.decisions():
            again = "--prune's rounds went on without them"
        print(
            f"lf-multilr sweep: {failed} of {len(study.slots)} settings failed (see sweep.csv and their {LOG}); "
            f"{again}",
            file=sys.stderr,
        )
    return 1 if failed else 0


#: What the sweep needs beyond the plugin (the ``sweep`` extra).
DEPENDENCIES = ("optuna", "tqdm")


def missing_dependencies() -> list[str]:
    import importlib.util

    return [name for name in DEPENDENCIES if importlib.util.find_spec(name) is None]


def main(argv: list[str]) -> int:
    missing = missing_dependencies()
    if missing:
        print(
            f"lf-multilr sweep needs {' and '.join(missing)}, which this environment lacks. "
            "Fix: pip install 'lf-multilr[sweep]'",
            file=sys.stderr,
        )
        return 2
    try:
        sweep = parse_args(argv)
    except SystemExit as done:  # --help, or an argument refused (argparse printed why)
        return done.code if isinstance(done.code, int) else 2
    sweep.out.mkdir(parents=True, exist_ok=True)
    try:
        study = Study(sweep)
    except DefinitionMismatch as error:
        print(f"lf-multilr sweep: error: {error}", file=sys.stderr)
        return 2
    todo = len(study.slots) - study.settled()
    print(
        f"lf-multilr sweep: {len(study.slots)} settings of {sweep.config} in {sweep.out}, {todo} to train "
        f"({sweep.workers} at once); study `{sweep.study}` in {shown_url(sweep.storage)}",
        flush=True,
    )
    if sweep.prune:
        ends = sweep.ends
        print(
            f"--prune: rounds end at steps {', '.join(map(str, ends))}: every setting trains to step {ends[0]} and "
            f"pauses there with a checkpoint; the best 1/{sweep.reduction_factor} of each round resume from theirs "
            "to the next",
            flush=True,
        )
    runner = Runner(sweep, study)
    previous = (
        signal.signal(signal.SIGTERM, _terminate) if threading.current_thread() is threading.main_thread() else None
    )
    try:
        stopped = runner.run()
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    if runner.crashed:
        print(f"lf-multilr sweep: stopped: {runner.crashed[0]}", file=sys.stderr)
        return 1
    if stopped:
        print("lf-multilr sweep: interrupted. Run the same command again to go on.", file=sys.stderr)
        return 130
    return _finish(sweep, study)
