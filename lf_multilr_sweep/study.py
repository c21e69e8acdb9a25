"""The sweep's Optuna study: its storage, the settings it must train (slots), and claiming each one exactly once.

A slot is one grid setting (one combination of the ``--set`` values) and, with ``--range`` axes, one of its
``--trials`` sampled trials. Each trial carries its slot in the user attribute ``slot``. A slot is settled by a
COMPLETE or PRUNED trial, taken while a trial of it is RUNNING, and free otherwise; a slot whose last trial
failed is tried again only by a command that started after that failure (so one command never loops on a
setting that fails every time), unless that trial was abandoned (interrupted, or its sweep process died): then
any worker takes it up. Workers claim slots under a lock that every process sharing the storage honours
(a file lock next to an SQLite file, a PostgreSQL advisory lock), so two machines never train the same slot.
A trial whose sweep process died stays RUNNING: the next claim fails it, at once when that process ran on this host,
else when its heartbeat (the user attribute :data:`BEAT`, which its sweep process rewrites every :data:`HEARTBEAT_S`
while the run trains) is older than :data:`GRACE_S`. The heartbeat is the sweep's own rather than Optuna's: Optuna's
would fail a paused trial too (see :func:`open_storage`). The same lock guards creating the study, so that processes
starting together on an empty database do not race to create Optuna's tables.

Under ``--prune`` (:mod:`.halving`) a claim is also where rounds end: under the lock it writes the decisions
the trials call for, applies them (PRUNED trials, next targets), and hands out a paused trial to resume before any
new setting. A paused trial is RUNNING with no heartbeat and is never failed; a resumed one whose sweep process
died goes back to paused at its rung, to be resumed again from the same checkpoint, by a process that sees its
folder (run folders stay on the machine that trained them, unless the machines share a file system).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import itertools
import json
import os
import socket
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .args import GridValue, RangeAxis, Sweep, shown_url, value_text
from .halving import PAUSED, PRUNED_AT, REACHED, TARGET, Contender, Promotion, moves, participants, promotions, recorded
from .run import checkpoint, folder_free

if TYPE_CHECKING:
    import optuna
    from optuna.storages import RDBStorage

SLOT = "slot"
OWNER = "owner"
ERROR = "error"
RUN_DIR = "run_dir"
#: The last time a sweep process stopped training a resumed trial that then waited at its rung again, and why.
INTERRUPTION = "interruption"
#: Set on a FAIL trial that did not fail by itself: interrupted, or given up with its dead sweep process.
ABANDONED = "abandoned"
DEFINITION = "lf_multilr_sweep"
#: The last time (seconds since the epoch, on its host's clock) a trial's sweep process said it is alive.
BEAT = "heartbeat"
#: Seconds between a running trial's heartbeats, and how old the last one may be before the trial counts as dead.
HEARTBEAT_S = 20
GRACE_S = 120
SETTLED = ("COMPLETE", "PRUNED")
LIVE = ("RUNNING", "WAITING")


@dataclass(frozen=True)
class Slot:
    """One setting the study must train: the grid values and, with ``--range`` axes, which sample of them."""

    key: str
    setting: Mapping[str, GridValue]
    index: int


def slot_key(setting: Mapping[str, GridValue], ranges: Sequence[RangeAxis], index: int) -> str:
    """A slot's identity: the same settings (in any axis order) and ranges give the same key in every process."""
    named = {key: value_text(value) for key, value in setting.items()}
    return json.dumps({"set": named, "range": sorted(axis.spec for axis in ranges), "trial": index}, sort_keys=True)


def slots(sweep: Sweep) -> list[Slot]:
    """Every slot, the first ``--set`` varying slowest, then the sampled trials of each setting."""
    keys = [axis.key for axis in sweep.grid]
    result = []
    for values in itertools.product(*(axis.values for axis in sweep.grid)):
        setting = dict(zip(keys, values, strict=True))
        for index in range(sweep.trials):
            result.append(Slot(slot_key(setting, sweep.ranges, index), setting, index))
    return result


@dataclass(frozen=True)
class Job:
    """A run to train: its trial (held by this process), its slot, the checkpoint step it resumes from (None: from
    scratch) and the step it pauses at (None: it trains to the end)."""

    trial: optuna.Trial
    slot: Slot
    resume_from: int | None
    stop_at: int | None


@dataclass(frozen=True)
class Attempt:
    """A trial of the study, as the claim sees it."""

    number: int
    slot: str
    state: str
    abandoned: bool = False


def next_slot(todo: Sequence[Slot], attempts: Sequence[Attempt], retry: frozenset[int]) -> Slot | None:
    """The first slot no trial settled or holds, and whose last trial (if any) was abandoned or failed among
    ``retry``."""
    last: dict[str, Attempt] = {}
    busy: set[str] = set()
    for attempt in sorted(attempts, key=lambda a: a.number):
        last[attempt.slot] = attempt
        if attempt.state in SETTLED + LIVE:
            busy.add(attempt.slot)
    for slot in todo:
        if slot.key in busy:
            continue
        if slot.key not in last or last[slot.key].number in retry or last[slot.key].abandoned:
            return slot
    return None


def seed_for(seed: int | None, slot: Slot) -> int | None:
    """TPE's seed for ``slot``: its samples depend on ``--seed`` and the slot, not on which process claims it."""
    if seed is None:
        return None
    return int.from_bytes(hashlib.sha256(f"{seed}\n{slot.key}".encode()).digest()[:4], "big")


def _last_beat(trial: optuna.trial.FrozenTrial) -> float:
    """When ``trial``'s sweep process last said it is alive (its start, before the first beat)."""
    beat = trial.user_attrs.get(BEAT)
    if isinstance(beat, (int, float)):
        return float(beat)
    return trial.datetime_start.timestamp() if trial.datetime_start is not None else 0.0


# Storage and lock


def engine_kwargs(url: str) -> dict[str, Any]:
    """SQLAlchemy options for the storage: SQLite waits for a writer (the sweep's workers and its runs write to one
    file); other servers' connections are checked before use."""
    return {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}


def open_storage(url: str) -> RDBStorage:
    """The study's storage. Liveness is the sweep's own (:data:`BEAT`), not Optuna's heartbeat: Optuna fails every
    RUNNING trial whose heartbeat went stale, a paused trial among them (no process trains it, so none beats for
    it), and a failed trial can no longer carry why it failed."""
    import optuna

    return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs(url))


def sqlite_path(url: str) -> Path | None:
    """The database file of an ``sqlite:///`` URL, None for any other URL."""
    if not url.startswith("sqlite"):
        return None
    from sqlalchemy.engine import make_url

    return Path(make_url(url).database or "").resolve()


class ClaimLock:
    """Mutual exclusion for claims: between this process's workers and every process on the same storage."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.local = threading.Lock()
        self.engine: Any = None

    @contextlib.contextmanager
    def __call__(self) -> Iterator[None]:
        with self.local:
            path = sqlite_path(self.url)
            if path is not None:
                with open(path.with_name(path.name + ".lock"), "a") as handle:
                    fcntl.flock(handle, fcntl.LOCK_EX)
                    yield
            else:
                with self._advisory():
                    yield

    @contextlib.contextmanager
    def _advisory(self) -> Iterator[None]:
        import sqlalchemy

        if self.engine is None:
            self.engine = sqlalchemy.create_engine(self.url, poolclass=sqlalchemy.pool.NullPool)
        key = int.from_bytes(hashlib.sha256(b"lf-multilr sweep").digest()[:8], "big", signed=True)
        with self.engine.connect() as connection:
            connection.execute(sqlalchemy.text("SELECT pg_advisory_lock(:key)"), {"key": key})
            try:
                yield
            finally:
                connection.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:key)"), {"key": key})
                connection.commit()


# The study


class DefinitionMismatch(ValueError):
    """The study was started by another config or other fixed arguments; the message says which and the fix."""


def halving(sweep: Sweep) -> dict[str, Any]:
    """What ``--prune``'s rounds are over: the settings (every one takes part in round 0) and the rungs."""
    keys = sorted(slot.key for slot in slots(sweep))
    digest = hashlib.sha256("\n".join(keys).encode()).hexdigest()
    return {
        "settings": len(keys),
        "settings_sha256": digest,
        "reduction_factor": sweep.reduction_factor,
        "ends": list(sweep.ends),
    }


def definition(sweep: Sweep) -> dict[str, Any]:
    """What a trial's result depends on besides its own axes: a study only continues under the same. A pruned
    study also keeps its settings and rungs (its rounds are decided over them)."""
    config = hashlib.sha256(sweep.config_text.encode()).hexdigest()
    pruned = {"halving": halving(sweep)} if sweep.prune else {}
    return {"config_sha256": config, "overrides": list(sweep.overrides)} | pruned


def _halving_text(halving: Mapping[str, Any] | None) -> str:
    if halving is None:
        return "without --prune"
    ends = halving["ends"]
    return (
        f"--prune over {halving['settings']} settings (rungs at steps {', '.join(map(str, ends[:-1]))} of "
        f"{ends[-1]}, --reduction-factor {halving['reduction_factor']})"
    )


def _mismatch(sweep: Sweep, recorded: Mapping[str, Any]) -> str:
    ours = definition(sweep)
    fix = "run it with the config and key=value arguments it was started with"
    if recorded.get("config_sha256") != ours["config_sha256"]:
        what = f"another version of the config file (its text differs from `{sweep.config}` now)"
    elif recorded.get("halving") != ours.get("halving") and recorded.get("overrides") == ours["overrides"]:
        then, now = _halving_text(recorded.get("halving")), _halving_text(ours.get("halving"))
        what = f"{then}, now {now} (a pruned study's rounds are decided over its first settings and rungs)"
        fix = "run it with the --prune, axes and --reduction-factor it was started with"
    else:
        then, now = (" ".join(overrides) or "none" for overrides in (recorded.get("overrides", []), sweep.overrides))
        what = f"other key=value arguments ({then}; now {now})"
    where = shown_url(sweep.storage) if "sweep.db" not in sweep.storage else str(sweep.out / "sweep.db")
    return (
        f"the study `{sweep.study}` in {where} was started with {what}, so its trials are not comparable with these "
        f"runs. Fix: {fix}, or give another --out for a new study"
    )


class Study:
    """The sweep's study and the claims on it, shared by this process's workers."""

    def __init__(self, sweep: Sweep) -> None:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.sweep = sweep
        sweep.out.mkdir(parents=True, exist_ok=True)
        self.lock = ClaimLock(sweep.storage)
        self.slots = slots(sweep)
        self.host, self.pid = socket.gethostname(), os.getpid()
        #: What the claims decided about the rounds of ``--prune``, for the sweep to print.
        self.notes: list[str] = []
        #: Whether, as the last claim under ``--prune`` saw the study, a sweep process (this one or another) trained
        #: one of its trials: a worker that claimed nothing waits then, since the round's decision may bring work.
        self.held_at_claim = False
        with self.lock():
            self.storage = open_storage(sweep.storage)
            self.study = optuna.create_study(
                study_name=sweep.study, storage=self.storage, direction="minimize", load_if_exists=True
            )
            self.study_id = self.storage.get_study_id_from_name(sweep.study)
            started = self.study.user_attrs.get(DEFINITION)
            if started is None:
                self.study.set_user_attr(DEFINITION, definition(sweep))
            elif started != definition(sweep):
                raise DefinitionMismatch(_mismatch(sweep, started))
            self.fail_dead()
            #: The failed trials known when this command started: their slots run again.
            self.retry = frozenset(t.number for t in self.trials() if t.state.name == "FAIL")

    def trial_id(self, number: int) -> int:
        """The storage's id of trial ``number`` (Optuna's public storage API)."""
        return self.storage.get_trial_id_from_study_id_trial_number(self.study_id, number)

    def frozen(self, number: int) -> optuna.trial.FrozenTrial:
        """Trial ``number`` as the storage has it now."""
        return self.storage.get_trial(self.trial_id(number))

    def trials(self) -> list[optuna.trial.FrozenTrial]:
        """This sweep's trials (those that carry a slot), in order."""
        return [t for t in self.study.get_trials(deepcopy=False) if SLOT in t.user_attrs]

    def attempts(self) -> list[Attempt]:
        return [
            Attempt(t.number, t.user_attrs[SLOT], t.state.name, bool(t.user_attrs.get(ABANDONED)))
            for t in self.trials()
        ]

    def settled(self) -> int:
        """How many of this command's slots a COMPLETE or PRUNED trial settled."""
        done = {a.slot for a in self.attempts() if a.state in SETTLED}
        return sum(slot.key in done for slot in self.slots)

    def entries(self, trials: Sequence[optuna.trial.FrozenTrial] | None = None) -> list[Contender]:
        """The trials as the rounds of ``--prune`` see them."""
        found = []
        for t in self.trials() if trials is None else trials:
            attrs = t.user_attrs
            target, reached = attrs.get(TARGET), attrs.get(REACHED)
            found.append(
                Contender(
                    t.number,
                    attrs[SLOT],
                    t.state.name,
                    bool(attrs.get(ABANDONED)),
                    target if isinstance(target, int) else None,
                    reached if isinstance(reached, int) else None,
                    bool(attrs.get(PAUSED)),
                    dict(t.intermediate_values),
                )
            )
        return found

    def decisions(self) -> list[Promotion]:
        return recorded(self.study.user_attrs)

    def in_progress(self) -> bool:
        """Whether a sweep process (this one or another) trains one of this sweep's trials now."""
        return any(entry.held for entry in self.entries())

    def waiting(self) -> list[optuna.trial.FrozenTrial]:
        """The trials paused at a rung that are to train on."""
        entries = {entry.number: entry for entry in self.entries()}
        return [t for t in self.trials() if entries[t.number].resumable]

    def _dead_here(self, trial: optuna.trial.FrozenTrial) -> bool:
        owner = trial.user_attrs.get(OWNER) or {}
        if owner.get("host") != self.host or owner.get("pid") in (None, self.pid):
            return False
        try:
            os.kill(int(owner["pid"]), 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False

    def fail_dead(self) -> None:
        """Give up the trials no live sweep process holds (call it under the lock): RUNNING ones whose process is
        gone (on this host) or silent for :data:`GRACE_S`, and WAITING ones (a claim queues and starts its trial at
        once, so a queued trial seen here was left by a process that ended in between). A trial given up fails,
        unless it was resuming from a rung: then it waits at that rung again. A paused trial is no one's."""
        import optuna

        for trial in self.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,)):
            self._fail(trial.number, "queued by a sweep process that ended before it started the run")
        now = time.time()
        for trial in self.trials():
            if trial.state.name != "RUNNING" or trial.user_attrs.get(PAUSED):
                continue
            if self._dead_here(trial):
                pid = trial.user_attrs[OWNER]["pid"]
                self._give_up(trial, f"its sweep process (pid {pid} on {self.host}) ended before the run did")
            elif now - _last_beat(trial) > GRACE_S:
                self._give_up(trial, f"no heartbeat from its sweep process for {GRACE_S} s")

    def _give_up(self, trial: optuna.trial.FrozenTrial, error: str) -> None:
        reached = trial.user_attrs.get(REACHED)
        if isinstance(reached, int):
            self._set(trial.number, INTERRUPTION, f"{error}; resumes from step {reached}")
            self._set(trial.number, PAUSED, True)
        else:
            self._fail(trial.number, error)

    def _fail(self, number: int, error: str) -> None:
        import optuna

        trial_id = self.trial_id(number)
        try:
            self.storage.set_trial_user_attr(trial_id, ERROR, error)
            self.storage.set_trial_user_attr(trial_id, ABANDONED, True)
            self.storage.set_trial_state_values(trial_id, optuna.trial.TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            pass

    def claim(self) -> Job | None:
        """The next run to train, its trial RUNNING and held by this process: under ``--prune`` first a paused
        trial the rounds promoted, then (while round 0 is open) a new trial for the next free slot; None when
        neither is there. Under ``--prune`` it first ends the rounds the trials are through (``self.notes`` says
        how)."""
        with self.lock():
            self.fail_dead()
            decisions = self._advance() if self.sweep.prune else []
            resume = self._resume() if self.sweep.prune else None
            if resume is not None:
                return resume
            if decisions:  # round 0 is decided: no new setting joins it
                return None
            slot = next_slot(self.slots, self.attempts(), self.retry)
            if slot is None:
                return None
            trial = self._ask(slot)
            self.heartbeat(trial)
            stop_at = None
            if self.sweep.prune:
                stop_at = self.sweep.ends[0]
                trial.set_user_attr(TARGET, stop_at)
            return Job(trial, slot, None, stop_at)

    def _advance(self) -> list[Promotion]:
        """Write the decisions the trials call for, apply every decision not applied yet; all decisions."""
        ends, keys = self.sweep.ends, [slot.key for slot in self.slots]
        decisions, entries = self.decisions(), self.entries()
        self.held_at_claim = any(entry.held for entry in entries)
        for made in promotions(entries, keys, decisions, ends, self.sweep.reduction_factor):
            self.study.set_user_attr(*made.attr())  # one write: the decision is made, whoever applies it
            decisions.append(made)
            self.notes.append(self._describe(made, entries, decisions))
        todo = moves(entries, decisions, ends)
        for number, target in todo.promote:
            self._set(number, TARGET, target)
        for number, rung in todo.prune:
            self._set(number, PRUNED_AT, rung)
            self.study.tell(number, state=self._state("PRUNED"))
        return decisions

    def _describe(self, made: Promotion, entries: Sequence[Contender], decisions: Sequence[Promotion]) -> str:
        previous = participants(entries, [slot.key for slot in self.slots], decisions[:-1]) or []
        to = self.sweep.ends[made.round]
        goes = ", ".join(map(str, made.promoted)) or "none"
        ended = len(previous) - len(made.promoted)
        return (
            f"round {made.round - 1} done at step {made.rung}: trial{'s' if len(made.promoted) > 1 else ''} {goes} "
            f"of {len(previous)} go{'es' if len(made.promoted) == 1 else ''} on to step {to}"
            + (f", {ended} end{'s' if ended == 1 else ''} there (PRUNED)" if ended else "")
        )

    def _resume(self) -> Job | None:
        """A paused trial with a further rung whose checkpoint this process sees and in whose folder no run trains;
        it becomes this process's, with a fresh heartbeat."""
        import optuna

        by_slot = {slot.key: slot for slot in self.slots}
        for frozen in self.waiting():
            attrs = frozen.user_attrs
            folder, reached = Path(attrs.get(RUN_DIR, "")), int(attrs[REACHED])
            if attrs[SLOT] not in by_slot or not checkpoint(folder, reached).is_dir() or not folder_free(folder):
                continue
            trial = optuna.trial.Trial(self.study, self.trial_id(frozen.number))
            self.heartbeat(trial)
            trial.set_user_attr(OWNER, {"host": self.host, "pid": self.pid})
            trial.set_user_attr(PAUSED, False)
            target = int(attrs[TARGET])
            return Job(trial, by_slot[attrs[SLOT]], reached, target if target < self.sweep.ends[-1] else None)
        return None

    def _set(self, number: int, name: str, value: Any) -> None:
        self.storage.set_trial_user_attr(self.trial_id(number), name, value)

    @staticmethod
    def _state(name: str) -> optuna.trial.TrialState:
        import optuna

        return optuna.trial.TrialState[name]

    def _ask(self, slot: Slot) -> optuna.Trial:
        import optuna

        self.study.sampler = optuna.samplers.TPESampler(seed=seed_for(self.sweep.seed, slot))
        self.study.enqueue_trial(dict(slot.setting), user_attrs={SLOT: slot.key})
        trial = self.study.ask()
        for axis in self.sweep.grid:
            trial.suggest_categorical(axis.key, list(axis.values))
        for spec in self.sweep.ranges:
            if spec.integer:
                trial.suggest_int(spec.key, int(spec.low), int(spec.high), log=spec.log)
            else:
                trial.suggest_float(spec.key, spec.low, spec.high, log=spec.log)
        trial.set_user_attr(OWNER, {"host": self.host, "pid": self.pid})
        return trial

    def heartbeat(self, trial: optuna.Trial) -> None:
        """Tell other processes that ``trial``'s sweep process is alive; a storage out of reach for a moment only
        costs this beat (past :data:`GRACE_S`, other processes give the trial up)."""
        import optuna

        try:
            trial.set_user_attr(BEAT, time.time())
        except (optuna.exceptions.StorageInternalError, optuna.exceptions.UpdateFinishedTrialError):
            pass
