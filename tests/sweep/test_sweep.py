"""`lf-multilr sweep` on Optuna: arguments and refusals, slots and claims on real studies, the in-run reporter and the
summary; real sweeps of the tiny Qwen2-VL (a grid interrupted and continued, TPE ranges, pruning, a failing setting)
and sweep processes sharing one real PostgreSQL server."""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import pytest
from PIL import Image
from transformers import TrainerControl, TrainingArguments

from lf_multilr_sweep import Runner, main, trial
from lf_multilr_sweep import keys as sweep_keys
from lf_multilr_sweep import study as sweep_study
from lf_multilr_sweep.args import (
    GridAxis,
    RangeAxis,
    device_shares,
    parse_args,
    parse_range,
    parse_set,
    value_text,
)
from lf_multilr_sweep.callback import TrialCallback
from lf_multilr_sweep.halving import Contender, Moves, Promotion, moves, promotions, targets
from lf_multilr_sweep.report import Row, markdown, rank
from lf_multilr_sweep.run import INTERRUPTED, Curves, Outcome, error_line, folder_lock, folder_name, read_curves
from lf_multilr_sweep.study import Attempt, DefinitionMismatch, Job, Slot, Study, next_slot, slots
from tools.testing import BIN, log_records, run, write_config

FAMILY = "qwen2_vl"
GRID = ["--set", "vision_tower_lr=1e-4,1e-3", "--set", "multi_modal_projector_lr=1e-3,1e-2"]
SETTINGS = [(vt, mmp) for vt in (1e-4, 1e-3) for mmp in (1e-3, 1e-2)]
#: An eval at every step of three: the final eval loss is the one logged at step 3.
EVAL = {"max_steps": 3, "val_size": 0.2, "eval_strategy": "steps", "eval_steps": 1, "per_device_eval_batch_size": 2}
#: Key=value arguments that give a run an eval set evaluated at every step.
PRUNABLE = ["val_size=0.2", "eval_strategy=steps", "eval_steps=1"]
#: matplotlib's first four cycle colours: the four settings' curves, best first
COLORS = [(0x1F, 0x77, 0xB4), (0xFF, 0x7F, 0x0E), (0x2C, 0xA0, 0x2C), (0xD6, 0x27, 0x28)]

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture(scope="session")
def train_keys() -> frozenset[str]:
    """LLaMA-Factory's key names, read in this process (which imports LLaMA-Factory for other tests anyway): the
    sweep lists them in a subprocess, which the real sweeps below start."""
    import dataclasses

    from llamafactory.hparams.parser import _TRAIN_ARGS

    return frozenset(field.name for cls in _TRAIN_ARGS for field in dataclasses.fields(cls))


@pytest.fixture
def cached(monkeypatch: pytest.MonkeyPatch, train_keys: frozenset[str]) -> None:
    """In-process sweeps: no GPUs, lf-multilr on, LLaMA-Factory's key names known without a subprocess."""
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv("LF_MULTILR_DISABLE", raising=False)
    monkeypatch.setattr(sweep_keys, "llamafactory_keys", lambda: train_keys)


def _config(tmp_path: Path, **overrides: Any) -> Path:
    """A config for parsing only: the model and data folders need not exist."""
    config, _ = write_config(tmp_path, tmp_path / "no_model", tmp_path / "no_data", FAMILY, **overrides)
    return config


def _study(out: Path, storage: str | None = None) -> optuna.Study:
    return optuna.load_study(study_name=out.name, storage=storage or f"sqlite:///{out / 'sweep.db'}")


def _sweep_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "lf_multilr_sweep", *args]


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


# Arguments


def test_grid_values_are_typed_and_numbers_written_one_way():
    assert parse_set("vision_tower_lr=1e-6, 0.00005,2E-4") == GridAxis("vision_tower_lr", (1e-06, 5e-05, 0.0002))
    assert [value_text(v) for v in parse_set("vision_tower_lr=1e-6,0.00005").values] == ["1e-06", "5e-05"]
    assert parse_set("learning_rate=0") == GridAxis("learning_rate", (0.0,))
    assert parse_set("lr_scheduler_type=cosine,constant").values == ("cosine", "constant")
    assert parse_set("per_device_train_batch_size=1,2").values == (1, 2)
    assert parse_set("warmup_ratio=0,0.1").values == (0.0, 0.1)  # one type per axis
    assert parse_set("freeze_vision_tower=true,false").values == ("true", "false")


def test_ranges_are_float_or_whole_and_written_one_way():
    axis = parse_range("vision_tower_lr=1e-6:1e-3:log")
    assert axis == RangeAxis("vision_tower_lr", 1e-06, 0.001, log=True, integer=False)
    assert axis.spec == "vision_tower_lr=1e-06:0.001:log"
    assert parse_range("vision_tower_start_step=0:100").integer  # an lf-multilr key of whole steps
    assert parse_range("gradient_accumulation_steps=1:8").integer
    assert not parse_range("learning_rate=1:8").integer  # an LR is a float, whatever its bounds look like


def test_folder_names_are_readable_stable_and_safe(tmp_path):
    name = folder_name({"vision_tower_lr": 1e-06, "multi_modal_projector_lr": 5e-05})
    assert name == "vision_tower_lr-1e-06__multi_modal_projector_lr-5e-05"
    odd = [{"dataset": "a/b c"}, {"dataset": "a_b_c"}, {"dataset": "a b/c"}, {"dataset": "x" * 300}, {"k": ".."}]
    names = [folder_name(setting) for setting in odd]
    assert len(set(names)) == len(odd) and names == [folder_name(setting) for setting in odd]
    for name in names:
        assert len(name) <= 131 and name not in (".", "..")
        (tmp_path / name).mkdir()


def test_each_worker_gets_its_share_of_the_gpus():
    assert device_shares(2, ["0", "1", "2", "3"]) == ("0,1", "2,3")
    assert device_shares(4, ["4", "5", "6", "7"]) == ("4", "5", "6", "7")
    assert device_shares(3, []) == (None, None, None)  # CPU: three processes, no share
    with pytest.raises(ValueError, match=r"`--workers 3` cannot split the 4 visible GPUs \(0,1,2,3\) evenly. Fix"):
        device_shares(3, ["0", "1", "2", "3"])


# Refusals, before any trial


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "vision_tower_lr"], "argument --set: `vision_tower_lr` has no `=`. Fix: write KEY=V1,V2"),
        (["--set", "vision_tower_lr="], "argument --set: `vision_tower_lr=` lists no value. Fix:"),
        (["--set", "vision_tower_lr=1e-6,,5e-6"], "`vision_tower_lr=1e-6,,5e-6` has an empty value between commas"),
        (
            ["--set", "vision_tower_lr=1e-6,abc"],
            "argument --set: `vision_tower_lr=1e-6,abc`: `vision_tower_lr: abc` is refused: it is not a number. Fix",
        ),
        (["--set", "language_model_lr=-1e-5"], "`language_model_lr: -1e-5` is refused: a learning rate cannot be"),
        (["--set", "learning_rate=1e-3,-1"], "`learning_rate: -1` is refused: a learning rate cannot be negative. Fix"),
        (["--set", "vision_tower_lr=1e-6,0.000001"], "lists `1e-06` twice. Fix: list each value once"),
        (["--set", "vision_tower_lr=1e-6", "--set", "vision_tower_lr=2e-6"], "`vision_tower_lr` is given twice. Fix"),
        (
            ["--set", "vision_tower_lr=1e-6", "vision_tower_lr=2e-6"],
            "argument key=value: `vision_tower_lr=2e-6` fixes a key that --set sweeps. Fix: remove one of the two",
        ),
        (
            ["--range", "vision_tower_lr=1e-6:1e-3", "vision_tower_lr=2e-6"],
            "`vision_tower_lr=2e-6` fixes a key that --range sweeps",
        ),
        (["--set", "output_dir=a,b"], "the sweep sets `output_dir` itself. Fix: give the sweep's folder with `--out"),
        (["--set", "vision_tower_lr=1e-6", "freeze_vision_tower"], "argument key=value: `freeze_vision_tower` has no"),
        (["--set", "vision_tower_lr=1e-6", "--max-steps", "0"], "argument --max-steps: `0` is not a whole number >= 1"),
        (["--set", "vision_tower_lr=1e-6", "--workers", "0"], "argument --workers: `0` is not a whole number >= 1"),
        (["--set", "vision_tower_lr=1e-6", "--seed", "-1"], "argument --seed: `-1` is not a whole number >= 0"),
        ([], "nothing to sweep. Fix: add at least one --set KEY=V1,V2 or --range KEY=LOW:HIGH"),
        (
            ["--range", "vision_tower_lr=1e-3:1e-6"],
            "argument --range: `vision_tower_lr=1e-3:1e-6`: LOW 1e-3 is above HIGH 1e-6. "
            "Fix: write the lower bound first: `--range vision_tower_lr=1e-6:1e-3`",
        ),
        (["--range", "vision_tower_lr=1e-4:1e-4"], "LOW and HIGH are both 1e-4, a range of one value. Fix: give"),
        (
            ["--range", "vision_tower_lr=0:1e-3:log"],
            "`:log` samples on a log scale, which needs bounds > 0, and LOW is 0. Fix: give a LOW > 0",
        ),
        (["--range", "vision_tower_lr=-1:1e-3"], "`vision_tower_lr: -1` is refused: a learning rate cannot be"),
        (["--range", "vision_tower_lr_layer_decay=0.5:2"], "a layer-wise decay must be greater than 0 and at most 1"),
        (["--range", "vision_tower_lr=1e-6"], "`vision_tower_lr=1e-6` is not LOW:HIGH or LOW:HIGH:log. Fix"),
        (["--range", "vision_tower_lr=1e-6:1e-3:ln"], "is not LOW:HIGH or LOW:HIGH:log"),
        (["--range", "warmup_ratio=a:0.1"], "argument --range: `warmup_ratio=a:0.1`: LOW `a` is not a number"),
        (
            ["--set", "vision_tower_lr=1e-6", "--range", "vision_tower_lr=1e-6:1e-3"],
            "argument --range: `vision_tower_lr` is also a --set axis. Fix: keep it in one of the two",
        ),
        (["--range", "vision_tower_lr=1e-6:1e-3", "--trials", "0"], "argument --trials: `0` is not a whole number"),
        (["--set", "vision_tower_lr=1e-6", "--trials", "3"], "argument --trials: 3 trials of what? --trials counts"),
        (
            ["--set", "vision_towr_lr=1e-6"],
            "argument --set vision_towr_lr=...: `vision_towr_lr` is not a key LLaMA-Factory's parser or lf-multilr "
            "knows (close: vision_tower_lr",
        ),
        (["--range", "lerning_rate=1e-6:1e-3"], "argument --range lerning_rate=...: `lerning_rate` is not a key"),
        (["--set", "vision_tower_lr=1e-6", "eval_step=5"], "argument key=value `eval_step=5`: `eval_step` is not"),
        (
            ["--set", "vision_tower_lr=1e-6", "--prune"],
            "have no eval loss to prune on: they need an eval set (`val_size` or `eval_dataset`) and "
            "`eval_strategy: steps`. Fix: add e.g. `val_size=0.1 eval_strategy=steps eval_steps=10`, or drop --prune",
        ),
        (
            ["--set", "vision_tower_lr=1e-6", "--prune", "val_size=0.2"],
            "`eval_strategy: steps`. Fix",  # an eval set, but no evaluation while training
        ),
        (["--set", "vision_tower_lr=1e-6", "--reduction-factor", "2"], "argument --reduction-factor: it sets how"),
        (["--set", "vision_tower_lr=1e-6", "--prune", "--reduction-factor", "1"], "`1` is not a whole number >= 2"),
        (
            ["--set", "vision_tower_lr=1e-6", "--prune", *PRUNABLE],
            "argument --prune: eval_steps 1 is not below max_steps 1, so there is no rung to prune at. Fix",
        ),
        (
            ["--set", "vision_tower_lr=1e-6", "--prune", *PRUNABLE, "max_steps=-1"],
            "have no max_steps (`-1`); successive halving runs every setting on the schedule of max_steps",
        ),
        (
            ["--set", "eval_steps=1,2", "--prune", *PRUNABLE[:2], "--max-steps", "4"],
            "argument --prune: `eval_steps` is swept, but the rungs of successive halving are steps that every",
        ),
        (
            ["--set", "vision_tower_lr=1e-6", "--prune", *PRUNABLE[:2], "eval_steps=0.5", "--max-steps", "4"],
            "argument --prune: eval_steps is `0.5`; the rungs are multiples of it, so it must be a whole number",
        ),
        (
            ["--set", "vision_tower_lr=1e-6", "--prune", *PRUNABLE, "--max-steps", "4", "save_strategy=best"],
            "argument --prune: `save_strategy: best` keeps the runs from saving the full checkpoint they resume",
        ),
        (
            ["--set", "vision_tower_lr=1e-6", "--storage", "mysql://db/x"],
            "argument --storage: `mysql://db/x` is not an sqlite:/// or postgresql:// URL",
        ),
        (["--set", "vision_tower_lr=1e-6", "--storage", "sqlite://"], "is an in-memory database, which the runs"),
        (  # a mistyped scheme: the URL is refused with its password masked
            ["--set", "vision_tower_lr=1e-6", "--storage", "postgres://sweeper:s3cret@db/x"],
            "argument --storage: `postgres://sweeper:***@db/x` is not an sqlite:/// or postgresql:// URL",
        ),
    ],
)
def test_bad_arguments_are_refused_before_any_trial(args, message, tmp_path, capsys, cached):
    config = _config(tmp_path)
    assert main([str(config), *args, "--out", str(tmp_path / "sweep")]) == 2
    err = capsys.readouterr().err
    assert message in err and "usage: lf-multilr sweep" in err, err
    assert "s3cret" not in err
    assert not (tmp_path / "sweep").exists()


def test_more_refusals_before_any_trial(tmp_path, capsys, cached, monkeypatch):
    sweep = ["--set", "vision_tower_lr=1e-6", "--out", str(tmp_path / "sweep")]
    config = tmp_path / "train.yaml"
    config.write_text("stage: sft\n")
    assert main([str(config), *sweep[:2]]) == 2
    assert "argument --out: " in capsys.readouterr().err
    assert main([str(tmp_path / "missing.yaml"), *sweep]) == 2
    assert "argument config: cannot read" in capsys.readouterr().err
    assert main([str(_config(tmp_path / "a", eval_stps=5)), *sweep]) == 2
    assert f"argument config `{tmp_path / 'a' / 'train.yaml'}`: `eval_stps` is not a key" in capsys.readouterr().err

    prunable = _config(tmp_path / "b", **EVAL)
    monkeypatch.setenv("LF_MULTILR_DISABLE", "1")
    assert main([str(prunable), *sweep, "--prune"]) == 2
    assert (
        "argument --prune: LF_MULTILR_DISABLE is set, which switches lf-multilr off in the runs"
        in capsys.readouterr().err
    )
    monkeypatch.delenv("LF_MULTILR_DISABLE")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2")
    assert main([str(prunable), *sweep, "--workers", "2"]) == 2
    assert "argument --workers: `--workers 2` cannot split the 3 visible GPUs (0,1,2) evenly" in capsys.readouterr().err
    assert parse_args([str(prunable), *sweep, "--workers", "3"]).devices == ("0", "1", "2")
    assert not (tmp_path / "sweep").exists()


def test_a_study_continues_only_with_the_config_and_arguments_it_started_with(tmp_path, cached, capsys):
    config = _config(tmp_path)
    args = [str(config), "--set", "vision_tower_lr=1e-6", "--out", str(tmp_path / "sweep"), "learning_rate=1e-3"]
    (tmp_path / "sweep").mkdir()
    Study(parse_args(args))  # the study exists, no trial has run
    assert main([*args[:-1], "learning_rate=1e-4"]) == 2
    err = capsys.readouterr().err
    assert f"the study `sweep` in {tmp_path / 'sweep' / 'sweep.db'} was started with other key=value arguments " in err
    assert "(learning_rate=1e-3; now learning_rate=1e-4), so its trials are not comparable with these runs. " in err
    assert "Fix: run it with the config and key=value arguments it was started with, or give another --out" in err
    config.write_text(config.read_text() + "warmup_steps: 1\n")
    with pytest.raises(DefinitionMismatch, match="was started with another version of the config file"):
        Study(parse_args(args))
    assert _study(tmp_path / "sweep").trials == []

    pruned = _config(tmp_path / "p", **{**EVAL, "max_steps": 4})  # rounds end at steps 1, 3, 4
    grid = [str(pruned), "--set", "vision_tower_lr=1e-6,2e-6", "--prune", "--out", str(tmp_path / "pruned")]
    Study(parse_args(grid))
    started = r"was started with --prune over 2 settings \(rungs at steps 1, 3 of 4, --reduction-factor 3\), now "
    fix = r".* Fix: run it with the --prune, axes and --reduction-factor it was started with, or give another --out"
    for other, now in [
        (grid[:3] + grid[4:], "without --prune"),
        ([*grid, "--reduction-factor", "2"], r"--prune over 2 settings \(rungs at steps 1, 2 of 4, --reduction-factor"),
        ([grid[0], "--set", "vision_tower_lr=1e-6,2e-6,3e-6", *grid[3:]], r"--prune over 3 settings \(rungs at"),
    ]:
        with pytest.raises(DefinitionMismatch, match=started + now + fix):
            Study(parse_args(other))


# Slots and claims


def _slot(key: str) -> Slot:
    return Slot(key, {}, 0)


def test_a_slot_runs_again_only_if_it_failed_before_this_command_started():
    todo = [_slot(k) for k in "abcdef"]
    attempts = [
        Attempt(0, "a", "COMPLETE"),
        Attempt(1, "b", "PRUNED"),
        Attempt(2, "c", "RUNNING"),  # another worker or machine trains it
        Attempt(3, "d", "FAIL"),  # failed before this command: runs again
        Attempt(4, "e", "FAIL"),
        Attempt(5, "e", "FAIL"),  # e's last failure came during this command: not again
        Attempt(6, "d", "FAIL"),
    ]
    assert next_slot(todo, attempts, retry=frozenset({3, 4})) == todo[5]
    assert next_slot(todo, attempts, retry=frozenset({6})) == todo[3]
    assert next_slot(todo, [*attempts, Attempt(7, "f", "COMPLETE")], retry=frozenset({3, 4})) is None


def test_slots_are_the_grid_times_the_sampled_trials_whatever_the_axis_order(tmp_path, cached):
    config = _config(tmp_path)
    one = parse_args([str(config), *GRID, "--range", "language_model_lr=1e-5:1e-3", "--trials", "2"])
    two = parse_args([str(config), *GRID[2:], *GRID[:2], "--range", "language_model_lr=1e-5:1e-3"])
    assert [(s.setting, s.index) for s in slots(one)] == [
        ({"vision_tower_lr": vt, "multi_modal_projector_lr": mmp}, i) for vt, mmp in SETTINGS for i in range(2)
    ]
    assert {s.key for s in slots(one)} < {s.key for s in slots(two)}  # the same settings, two has 10 trials each


def test_concurrent_claims_take_every_slot_once(tmp_path, cached):
    """Two studies on one SQLite file (as two sweep processes have), four workers each, all claiming at once."""
    config = _config(tmp_path)
    sweep = parse_args(
        [str(config), "--set", "vision_tower_lr=1,2,3,4,5,6,7,8,9,10,11,12", "--out", str(tmp_path / "s")]
    )
    studies = [Study(sweep), Study(sweep)]
    claimed: list[tuple[int, str]] = []

    def work(study: Study) -> None:
        while (got := study.claim()) is not None:
            claimed.append((got.trial.number, got.slot.key))
            time.sleep(0.01)
            study.study.tell(got.trial, 1.0)

    threads = [threading.Thread(target=work, args=(studies[i % 2],)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(key for _, key in claimed) == sorted(slot.key for slot in slots(sweep))
    assert sorted(number for number, _ in claimed) == list(range(12))
    assert Counter(t.state.name for t in _study(sweep.out).trials) == {"COMPLETE": 12}


def test_a_trial_whose_sweep_process_died_is_failed_and_its_setting_claimed_again(tmp_path, cached, monkeypatch):
    config = _config(tmp_path)
    sweep = parse_args([str(config), "--set", "vision_tower_lr=1e-6,2e-6", "--out", str(tmp_path / "s")])
    first = Study(sweep)
    held, lost = first.claim(), first.claim()
    assert held is not None and lost is not None
    silent, slot, gone = held.trial, held.slot, lost.trial
    ended = subprocess.Popen(["true"])  # a finished process: the "sweep process" of `gone`
    ended.wait()
    gone.set_user_attr(sweep_study.OWNER, {"host": first.host, "pid": ended.pid})

    again = Study(sweep)  # on this host a dead owner is seen at once; `silent`'s owner (this process) is alive
    assert {t.number: t.state.name for t in again.trials()} == {0: "RUNNING", 1: "FAIL"}
    attrs = _study(sweep.out).trials[1].user_attrs
    assert attrs["error"] == f"its sweep process (pid {ended.pid} on {first.host}) ended before the run did"
    assert attrs["abandoned"] is True and again.claim().slot != slot  # type: ignore[union-attr]
    assert _study(sweep.out).trials[2].user_attrs["slot"] == attrs["slot"]  # its setting, taken up again

    monkeypatch.setattr(sweep_study, "HEARTBEAT_S", 1)
    monkeypatch.setattr(sweep_study, "GRACE_S", 1)
    elsewhere = Study(sweep)  # heartbeats every second, stale after one
    first.heartbeat(silent)
    time.sleep(2.5)  # `silent`'s process stopped beating (as if its machine went down)
    claimed = elsewhere.claim()
    assert claimed is not None and claimed.slot == slot  # the slot `silent` held, given up and taken up again
    trials = _study(sweep.out).trials
    assert (
        trials[0].state.name == "FAIL"
        and trials[0].user_attrs["error"] == "no heartbeat from its sweep process for 1 s"
    )
    assert trials[3].user_attrs["slot"] == slot.key and trials[3].state.name == "RUNNING"


def test_seeded_samples_depend_on_the_seed_and_the_setting_only(tmp_path, cached):
    config = _config(tmp_path)
    values = {}
    for name, seed in (("a", "0"), ("b", "0"), ("c", "1")):
        ranges = ["--range", "vision_tower_lr=1e-6:1e-3:log", "--trials", "3", "--seed", seed]
        study, drawn = Study(parse_args([str(config), *ranges, "--out", str(tmp_path / name)])), []
        while (claimed := study.claim()) is not None:
            drawn.append(claimed.trial.params["vision_tower_lr"])
            study.study.tell(claimed.trial, len(drawn))
        values[name] = drawn
    assert values["a"] == values["b"] and values["a"] != values["c"]
    assert len(set(values["a"])) == 3 and all(1e-6 <= v <= 1e-3 for v in values["a"] + values["c"])


def test_grid_and_range_axes_combine_each_grid_value_fixed_the_range_sampled(tmp_path, cached):
    config = _config(tmp_path)
    both = ["--set", "vision_tower_lr=1e-6,2e-6", "--range", "language_model_lr=1e-5:1e-3:log", "--trials", "2"]
    study = Study(parse_args([str(config), *both, "--seed", "3", "--out", str(tmp_path / "s")]))
    params = []
    while (claimed := study.claim()) is not None:
        params.append(claimed.trial.params)
        study.study.tell(claimed.trial, 1.0)
    assert [p["vision_tower_lr"] for p in params] == [1e-06, 1e-06, 2e-06, 2e-06]
    assert len({p["language_model_lr"] for p in params}) == 4 and all(
        1e-5 <= p["language_model_lr"] <= 1e-3 for p in params
    )
    distributions = _study(tmp_path / "s").trials[0].distributions
    assert distributions["vision_tower_lr"] == optuna.distributions.CategoricalDistribution([1e-06, 2e-06])
    assert distributions["language_model_lr"] == optuna.distributions.FloatDistribution(1e-5, 1e-3, log=True)


def test_importing_the_sweep_loads_neither_optuna_nor_llamafactory(env):
    loaded = ("optuna", "sqlalchemy", "torch", "transformers", "llamafactory", "matplotlib", "tqdm")
    code = f"import sys, lf_multilr, lf_multilr_sweep; print([m for m in {loaded!r} if m in sys.modules])"
    assert run([sys.executable, "-c", code], env).stdout == "[]\n"


# The in-run callback


@dataclass
class _State:
    global_step: int
    max_steps: int = 4
    is_world_process_zero: bool = True


def _running_trials(url: str, name: str, count: int) -> optuna.Study:
    study = optuna.create_study(study_name=name, storage=url)
    for _ in range(count):
        study.ask()
    return study


def _evaluated(callback: TrialCallback, state: _State, metrics: dict[str, float]) -> tuple[bool, bool]:
    """What the callback asks of the trainer after an evaluation: (save, stop)."""
    control = TrainerControl()
    returned = callback.on_evaluate(TrainingArguments("unused"), state, control, metrics=metrics)
    return returned.should_save, returned.should_training_stop


def test_without_a_trial_in_the_environment_the_callback_does_nothing():
    callback = TrialCallback({})
    assert callback.reporter is None
    assert _evaluated(callback, _State(1), {"eval_loss": 1.0}) == (False, False)


def test_the_callback_reports_eval_losses_and_stops_the_run_at_the_evaluation_of_its_stop_step(tmp_path):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = _running_trials(url, "s", 2)
    to_the_end = TrialCallback(trial.TrialRef(url, "s", 0).environ())  # no stop step: the run trains to its end
    results = [_evaluated(to_the_end, _State(step), {"eval_loss": 5.0 - step / 10}) for step in (1, 2, 3)]
    assert results == [(False, False)] * 3
    assert _evaluated(to_the_end, _State(3), {"eval_accuracy": 1.0}) == (False, False)  # no loss: nothing to report
    assert _evaluated(to_the_end, _State(4), {"eval_loss": 4.5}) == (False, False)

    pausing = TrialCallback(trial.TrialRef(url, "s", 1, stop_at=2).environ())
    assert _evaluated(pausing, _State(1), {"eval_loss": 6.0}) == (False, False)
    assert _evaluated(pausing, _State(2), {"eval_loss": 5.5}) == (True, True)
    other_rank = TrialCallback(trial.TrialRef(url, "s", 1, stop_at=2).environ())
    assert _evaluated(other_rank, _State(2, is_world_process_zero=False), {"eval_loss": 5.4}) == (True, True)
    assert other_rank.reporter is not None and other_rank.reporter.trial is None  # only rank 0 talks to the study
    first, second = study.trials
    assert first.intermediate_values == {1: 4.9, 2: 4.8, 3: 4.7, 4: 4.5}
    assert second.intermediate_values == {1: 6.0, 2: 5.5} and second.state.name == "RUNNING"  # the sweep ends it

    at_the_end = TrialCallback(trial.TrialRef(url, "s", 1, stop_at=4).environ())
    assert _evaluated(at_the_end, _State(4), {"eval_loss": 4.0}) == (False, False)  # the run's end anyway
    lost = TrialCallback(trial.TrialRef(url, "no such study", 0, stop_at=1).environ())
    assert _evaluated(lost, _State(1), {"eval_loss": 1.0}) == (True, True)  # an unreachable study: the run still stops


def test_the_sweep_names_its_callback_after_the_users_own():
    assert trial.with_callback({"A": "1"}) == {"A": "1", "LF_MULTILR_CALLBACKS": trial.NAME}
    mine = {"LF_MULTILR_CALLBACKS": f"my.module:Mine, {trial.NAME}"}
    assert trial.with_callback(mine)["LF_MULTILR_CALLBACKS"] == f"my.module:Mine,{trial.NAME}"


# Successive halving (--prune), decided from the study


def _paused(number: int, loss: float, at: int = 5) -> Contender:
    return Contender(number, str(number), "RUNNING", target=at, reached=at, paused=True, losses={at: loss})


def test_a_round_ends_when_all_its_trials_reached_its_rung_or_failed_and_the_best_third_go_on():
    assert targets(5, 30, 3) == (5, 15, 30) and targets(1, 4, 2) == (1, 2, 4) and targets(10, 90, 3) == (10, 30, 90)
    slots, ends = [str(i) for i in range(9)], (5, 15, 30)
    paused = [_paused(i, loss) for i, loss in enumerate([3.0, 1.0, 2.0, 5.0, 1.0, 4.0, 6.0, 7.0, 8.0])]
    training, interrupted = Contender(8, "8", "RUNNING", target=5), Contender(8, "8", "FAIL", abandoned=True, target=5)
    for unfinished in ([], [training], [interrupted]):  # no trial yet, one training, one to train again
        assert promotions([*paused[:8], *unfinished], slots, [], ends, 3) == []
    failed = Contender(8, "8", "FAIL", target=5)
    entries = [*paused[:8], failed]
    first = promotions(entries, slots, [], ends, 3)
    assert first == [Promotion(1, 5, (1, 4, 2))]  # 9 // 3; of the two at 1.0 the earlier trial first
    assert moves(entries, first, ends) == Moves(((1, 15), (2, 15), (4, 15)), tuple((n, 5) for n in (0, 3, 5, 6, 7)))

    promoted = {1: 2.5, 2: 2.0, 4: None}  # trial 4 failed while resuming to 15
    after = [Contender(n, str(n), "FAIL") if loss is None else _paused(n, loss, 15) for n, loss in promoted.items()] + [
        Contender(n, str(n), "PRUNED", reached=5) for n in (0, 3, 5, 6, 7)
    ]
    assert promotions(after, slots, first, ends, 3) == [Promotion(2, 15, (2,))]  # max(1, 3 // 3) of the two left
    assert moves(after, first, ends) == Moves((), ())  # round 1's moves are done: nothing twice
    assert promotions(after, slots, [*first, Promotion(2, 15, (2,))], ends, 3) == []  # the last round: no more


def _pause_like_a_run(runner: Runner, job: Job, folder: Path, loss: float) -> None:
    """What a run that paused at its rung leaves: a checkpoint in its folder, its eval loss, and the sweep's record."""
    assert job.stop_at is not None
    (folder / f"checkpoint-{job.stop_at}").mkdir(parents=True, exist_ok=True)
    job.trial.set_user_attr("run_dir", str(folder))
    curves = Curves([(job.stop_at, loss + 1)], [(job.stop_at, loss)])
    runner.record(job, Outcome("PAUSED", loss, curves, 1.0))


def test_rounds_are_decided_once_from_the_study_and_paused_or_interrupted_trials_wait_at_their_rung(
    tmp_path, cached, monkeypatch
):
    """Two studies on one SQLite file (two sweep processes) play the rounds of four settings, without training: the
    runs' records are written as the sweep writes them."""
    config = _config(tmp_path, **{**EVAL, "max_steps": 4})
    grid = ["--set", "vision_tower_lr=1e-6,2e-6,3e-6,4e-6", "--prune", "--reduction-factor", "2"]
    sweep = parse_args([str(config), *grid, "--out", str(tmp_path / "s")])
    assert sweep.ends == (1, 2, 4)
    a, b = Study(sweep), Study(sweep)
    runner = Runner(sweep, a)
    loss = {1e-06: 4.0, 2e-06: 1.0, 3e-06: 3.0, 4e-06: 2.0}
    jobs = [study.claim() for study in (a, b, a, b)]
    assert all(job is not None and (job.resume_from, job.stop_at) == (None, 1) for job in jobs)
    assert a.claim() is None and a.held_at_claim and b.in_progress()  # round 0 is not through: nothing to do, wait
    for job in jobs[:3]:
        _pause_like_a_run(runner, job, tmp_path / f"run{job.trial.number}", loss[job.trial.params["vision_tower_lr"]])
    runner.record(jobs[3], Outcome("FAIL", None, Curves(), 1.0, INTERRUPTED))  # Ctrl-C in round 0
    again = b.claim()  # its setting trains again from scratch, in a new trial
    assert again is not None and again.slot == jobs[3].slot and (again.trial.number, again.resume_from) == (4, None)
    _pause_like_a_run(runner, again, tmp_path / "run4", loss[4e-06])

    resumes = [a.claim(), b.claim()]  # round 0 decided: trials 1 (2e-6) and 4 (4e-6) go on to step 2
    assert [(j.trial.number, j.resume_from, j.stop_at) for j in resumes if j] == [(1, 1, 2), (4, 1, 2)]
    assert a.notes == ["round 0 done at step 1: trials 1, 4 of 4 go on to step 2, 2 end there (PRUNED)"] and not b.notes
    assert a.claim() is None and b.claim() is None  # round 0 takes no new setting any more
    trials = _study(sweep.out).trials
    assert [(t.state.name, t.user_attrs.get("pruned_at_step")) for t in trials] == [
        ("PRUNED", 1), ("RUNNING", None), ("PRUNED", 1), ("FAIL", None), ("RUNNING", None)
    ]  # fmt: skip
    assert trials[2].value == 3.0  # a pruned trial's value: its eval loss at the rung

    # trial 4's sweep process dies while resuming (its pid gone): it waits at step 1 again, with its checkpoint
    ended = subprocess.Popen(["true"])
    ended.wait()
    resumes[1].trial.set_user_attr(sweep_study.OWNER, {"host": a.host, "pid": ended.pid})  # type: ignore[union-attr]
    with folder_lock(tmp_path / "run4"):  # its run still trains in the folder: no one resumes it there yet
        assert Study(sweep).claim() is None
    c = Study(sweep)
    resumed = c.claim()
    assert resumed is not None and (resumed.trial.number, resumed.resume_from, resumed.stop_at) == (4, 1, 2)
    assert "ended before the run did; resumes from step 1" in _study(sweep.out).trials[4].user_attrs["interruption"]
    runner.record(resumed, Outcome("FAIL", None, Curves(), 1.0, INTERRUPTED))  # Ctrl-C while resuming: it waits
    waiting = _study(sweep.out).trials[4]
    assert waiting.state.name == "RUNNING" and waiting.user_attrs["paused"] is True
    resumed = c.claim()
    assert resumed is not None and resumed.trial.number == 4
    for job, at_two in ((resumes[0], 1.5), (resumed, 0.5)):
        assert job is not None
        _pause_like_a_run(runner, job, tmp_path / f"run{job.trial.number}", at_two)

    monkeypatch.setattr(sweep_study, "HEARTBEAT_S", 1)
    monkeypatch.setattr(sweep_study, "GRACE_S", 1)
    time.sleep(2.5)  # paused trials send no heartbeat: none is taken for dead
    last = Study(sweep).claim()
    assert last is not None and (last.trial.number, last.resume_from, last.stop_at) == (4, 2, None)
    assert [t.state.name for t in _study(sweep.out).trials] == ["PRUNED", "PRUNED", "PRUNED", "FAIL", "RUNNING"]
    runner.record(last, Outcome("COMPLETE", 0.25, Curves([(4, 1.0)], [(4, 0.25)]), 1.0))
    assert a.claim() is None and not (a.held_at_claim or a.in_progress()) and Study(sweep).claim() is None  # done
    study = _study(sweep.out)
    assert study.best_trial.number == 4 and study.trials[1].user_attrs["pruned_at_step"] == 2
    assert sorted(k for k in study.user_attrs if k.startswith("lf_multilr_halving")) == [
        "lf_multilr_halving_round_1", "lf_multilr_halving_round_2"
    ]  # fmt: skip


# The summary


def _row(number: int, state: str, value: float | None, **attrs: Any) -> Row:
    return Row(number, state, {"vision_tower_lr": 1e-6 * (number + 1)}, value, attrs)


def test_completed_trials_rank_first_by_value_then_pruned_then_failed():
    failed = _row(0, "FAIL", None, error="ValueError: a | b")
    early, late = _row(1, "PRUNED", 5.0, steps=2, pruned_at_step=2), _row(2, "PRUNED", 5.2, steps=4, pruned_at_step=4)
    good, best = _row(3, "COMPLETE", 5.3, final_eval_loss=5.3, steps=8), _row(4, "COMPLETE", 5.1, final_eval_loss=5.1)
    assert rank([failed, early, late, good, best]) == [best, good, late, early, failed]
    lines = markdown([failed, early, best, good], ["vision_tower_lr"]).splitlines()
    assert lines[0].startswith("Ranked by final eval loss (lower is better); pruned trials follow the completed")
    assert lines[2] == "| rank | trial | vision_tower_lr | final eval loss | final train loss | steps | state |"
    assert lines[4:] == [
        "| 1 | 4 | 5e-06 | 5.1000 |  |  | COMPLETE |",
        "| 2 | 3 | 4e-06 | 5.3000 |  | 8 | COMPLETE |",
        "| 3 | 1 | 2e-06 |  |  | 2 | PRUNED at step 2 |",
        "| 4 | 0 | 1e-06 |  |  |  | FAIL: ValueError: a \\| b |",
    ]


def test_the_table_shows_as_many_decimals_as_tell_the_losses_apart():
    close, closer = _row(0, "COMPLETE", 5.516153812, final_train_loss=5.516153812), _row(1, "COMPLETE", 5.516222)
    closer = _row(1, "COMPLETE", 5.516222, final_train_loss=5.516222)
    lines = markdown([closer, close], ["vision_tower_lr"]).splitlines()
    assert lines[0].startswith("Ranked by final train loss")
    assert lines[4:] == ["| 1 | 0 | 1e-06 | 5.51615 |  | COMPLETE |", "| 2 | 1 | 2e-06 | 5.51622 |  | COMPLETE |"]


def test_curves_come_from_llamafactorys_log(tmp_path):
    assert read_curves(tmp_path).steps == 0
    records = [
        {"current_steps": 1, "loss": 6.0, "lr": 1e-3},
        {"current_steps": 2, "loss": 5.5, "lr": 1e-3},
        {"current_steps": 2, "eval_loss": 5.8},
        {"current_steps": 3, "loss": 5.2, "lr": 1e-3},
        {"current_steps": 3},
    ]
    (tmp_path / "trainer_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records) + '{"current_st')
    curves = read_curves(tmp_path)
    assert (curves.train, curves.eval, curves.steps, curves.final_eval) == (
        [(1, 6.0), (2, 5.5), (3, 5.2)],
        [(2, 5.8)],
        3,
        5.8,
    )
    (tmp_path / "all_results.json").write_text(json.dumps({"eval_loss": 5.1, "train_loss": 5.6}))
    assert read_curves(tmp_path).final_eval == 5.1  # the evaluation after training (`do_eval`)


def test_the_error_of_a_failed_run_is_its_exception_line():
    log = (
        '[INFO] loading\nTraceback (most recent call last):\n  File "x.py", line 1, in <module>\n    f()\n'
        "KeyError: 'a'\n\nDuring handling of the above exception, another exception occurred:\n\n"
        'Traceback (most recent call last):\n  File "x.py", line 3, in <module>\n    g()\n    ^^^\n'
        "ValueError: lf-multilr: `vision_tower_lr: 1e-05` is refused\nsecond line of the message\n"
    )
    assert error_line(log, 1) == "ValueError: lf-multilr: `vision_tower_lr: 1e-05` is refused"
    assert error_line("loading\n", -9) == "killed by signal 9"
    assert error_line("loading\nout of memory\n\n", 1) == "exit code 1: out of memory"


# Real sweeps


def _together(commands: list[list[str]], env: dict[str, str], cwd: Path) -> list[subprocess.CompletedProcess[str]]:
    processes = [subprocess.Popen(c, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for c in commands]  # fmt: skip
    outputs = [process.communicate(timeout=600) for process in processes]
    return [
        subprocess.CompletedProcess(p.args, p.returncode, o, e) for p, (o, e) in zip(processes, outputs, strict=True)
    ]


def _overlap(spans: list[tuple[Any, Any]]) -> int:
    """The most of these (start, end) spans that overlap at one moment."""
    events = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    running = peak = 0
    for _, change in events:
        running += change
        peak = max(peak, running)
    return peak


def _trial_spans(trials: list[optuna.trial.FrozenTrial]) -> list[tuple[Any, Any]]:
    return [(t.datetime_start, t.datetime_complete) for t in trials]


def _interrupt_during(args: list[str], env: dict[str, str], cwd: Path, number: int) -> str:
    """Start the sweep and press Ctrl-C (SIGINT to its process group) once trial ``number``'s run has started."""
    sweep = subprocess.Popen(
        args,
        env=env,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
        # as from a terminal: a test run started in the background (`make test &`) inherits SIGINT ignored, and so
        # would the sweep, which then never sees the Ctrl-C
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    watchdog = threading.Timer(300, sweep.kill)
    watchdog.start()
    assert sweep.stdout is not None
    seen = [""]
    for line in sweep.stdout:
        seen.append(line)
        if line.startswith(f"trial {number} "):
            break
    assert seen[-1].startswith(f"trial {number} ") and ": training, log in " in seen[-1], "".join(seen)
    log = Path(seen[-1].rsplit("log in ", 1)[1].strip())
    deadline = time.monotonic() + 120
    while (not log.is_file() or log.stat().st_size == 0) and time.monotonic() < deadline:  # LLaMA-Factory under way
        time.sleep(0.2)
    os.killpg(sweep.pid, signal.SIGINT)
    seen.append(sweep.stdout.read())
    sweep.wait()
    watchdog.cancel()
    assert sweep.returncode == 130, "".join(seen)
    return "".join(seen)


def _eval_losses(folder: Path) -> list[float]:
    return [record["eval_loss"] for record in log_records(folder) if "eval_loss" in record]


def test_a_2x2_grid_interrupted_then_continued_trains_each_setting_once(tiny, data, tmp_path, env):
    config, output_dir = write_config(tmp_path, tiny(FAMILY), data, FAMILY, **EVAL)
    out = output_dir.with_name("out_sweep")
    args = _sweep_command(str(config), *GRID)

    first = _interrupt_during(args, env, tmp_path, 3)
    assert first.count(": COMPLETE, final train loss") == 3
    assert "trial 3 vision_tower_lr=0.001 multi_modal_projector_lr=0.01: FAIL: interrupted (Ctrl-C)" in first
    trials = _study(out).trials
    assert [t.state.name for t in trials] == ["COMPLETE"] * 3 + ["FAIL"]  # nothing left RUNNING
    assert trials[3].user_attrs["error"] == "interrupted (Ctrl-C)" and not (out / "sweep.csv").exists()
    finished = {t.number: (t.datetime_complete, t.value) for t in trials[:3]}

    second = run(args, env, cwd=tmp_path)
    assert second.returncode == 0, second.stdout + second.stderr[-3000:]
    assert "4 settings of" in second.stdout and ", 1 to train (1 at once)" in second.stdout
    assert [line.split(":")[0] for line in second.stdout.splitlines() if ": training, log in " in line] == [
        "trial 4 vision_tower_lr=0.001 multi_modal_projector_lr=0.01"
    ]
    trials = _study(out).trials
    assert [t.state.name for t in trials] == ["COMPLETE"] * 3 + ["FAIL", "COMPLETE"]
    assert {t.number: (t.datetime_complete, t.value) for t in trials[:3]} == finished  # not touched
    assert trials[4].user_attrs["slot"] == trials[3].user_attrs["slot"]
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    assert sorted((t.params["vision_tower_lr"], t.params["multi_modal_projector_lr"]) for t in complete) == SETTINGS
    for t in complete:  # the value is the run's own final eval loss, and the run trained at the trial's LRs
        folder = Path(t.user_attrs["run_dir"])
        assert folder.parent == out and folder.name.startswith(f"trial-{t.number:04d}__")
        assert t.value == _eval_losses(folder)[-1] and math.isfinite(t.value)
        assert t.intermediate_values == dict(enumerate(_eval_losses(folder), 1))  # reported from inside the run
        train = [record for record in log_records(folder) if "loss" in record]
        assert [record["current_steps"] for record in train] == [1, 2, 3]  # trained once, into a clean folder
        assert train[-1]["lr/vision_tower"] == t.params["vision_tower_lr"]
        assert train[-1]["lr/multi_modal_projector"] == t.params["multi_modal_projector_lr"]
    assert len({t.value for t in complete}) == 4

    rows = _rows(out / "sweep.csv")
    assert [(row["trial"], row["state"]) for row in rows] == [("0", "COMPLETE"), ("1", "COMPLETE"), ("2", "COMPLETE"),
                                                              ("3", "FAIL"), ("4", "COMPLETE")]  # fmt: skip
    best = min(complete, key=lambda t: t.value or math.inf)
    assert [row["rank"] for row in rows if row["trial"] == str(best.number)] == ["1"]
    assert rows[3]["rank"] == "5" and rows[3]["error"] == "interrupted (Ctrl-C)"
    table = (out / "sweep.md").read_text()
    assert table in second.stdout and table.startswith("Ranked by final eval loss")
    assert table.splitlines()[4].startswith(f"| 1 | {best.number} | {value_text(best.params['vision_tower_lr'])} | ")
    with Image.open(out / "sweep.png") as image:
        colors = Counter(image.convert("RGB").getdata())
    assert all(colors[color] > 200 for color in COLORS), [colors[color] for color in COLORS]  # curves, not a legend
    for name in ("sweep_importance.png", "sweep_contour.png"):
        with Image.open(out / name) as image:
            assert image.size[0] > 300 and len(set(image.convert("RGB").getdata())) > 50, name

    third = run(args, env, cwd=tmp_path)
    assert third.returncode == 0 and ", 0 to train" in third.stdout and "training, log in" not in third.stdout
    assert len(_study(out).trials) == 5


def test_sampled_ranges_stay_in_bounds_and_follow_the_seed(tiny, data, tmp_path, env):
    config, _ = write_config(tmp_path, tiny(FAMILY), data, FAMILY, max_steps=2)
    out = tmp_path / "ranges"
    sweep = [str(config), "--range", "vision_tower_lr=1e-6:1e-3:log", "--trials", "3", "--seed", "0"]
    result = run([str(BIN / "lf-multilr"), "sweep", *sweep, "--workers", "2", "--out", str(out)], env, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    trials = _study(out).trials
    assert [t.state.name for t in trials] == ["COMPLETE"] * 3
    drawn = [t.params["vision_tower_lr"] for t in trials]
    assert len(set(drawn)) == 3 and all(1e-6 <= value <= 1e-3 for value in drawn)
    for t in trials:  # no eval set: the value is the final train loss of the run, which trained at the sampled LR
        train = [record for record in log_records(Path(t.user_attrs["run_dir"])) if "loss" in record]
        assert t.value == train[-1]["loss"] and train[-1]["lr/vision_tower"] == t.params["vision_tower_lr"]
    assert _rows(out / "sweep.csv")[0]["final_eval_loss"] == "" and _overlap(_trial_spans(trials)) == 2  # two workers
    assert "sweep: 100%|" in result.stderr and "3/3" in result.stderr  # the study's tqdm bar

    # the same command elsewhere draws the same values (claims only, no training)
    again = Study(parse_args([*sweep, "--out", str(tmp_path / "again" / "ranges")]))
    assert [again.claim().trial.params["vision_tower_lr"] for _ in range(3)] == drawn  # type: ignore[union-attr]


def _segments(folder: Path) -> list[list[int]]:
    """The steps of the training records in a run folder's ``trainer_log.jsonl``, one list for each run that wrote
    them (LLaMA-Factory ends each run's part with a summary record, which has no loss)."""
    segments: list[list[int]] = [[]]
    for record in log_records(folder):
        if "loss" in record:
            segments[-1].append(record["current_steps"])
        elif "eval_loss" not in record:
            segments.append([])
    return [segment for segment in segments if segment]


def test_pruning_plays_rounds_of_successive_halving_and_resumes_the_promoted_run_from_its_checkpoints(
    tiny, data, tmp_path, env
):
    """Two sweep processes sharing one study (as two machines would, here in an SQLite file), two settings, rounds
    ending at steps 1 and 3: both settings train to step 1 and pause there; the round is decided once, and the better
    setting resumes once, on the cosine schedule of 3 steps. (More rounds and settings, interruptions and deaths in
    them: the rounds test above, on a real study without training.)"""
    cosine = {**EVAL, "lr_scheduler_type": "cosine"}
    config, _ = write_config(tmp_path, tiny(FAMILY), data, FAMILY, **cosine)
    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    machines = [tmp_path / "machine_a" / "pruned", tmp_path / "machine_b" / "pruned"]  # one study: `pruned`
    sweep = [str(config), "--set", "learning_rate=1e-3,1e-6", "--prune", "--storage", storage]
    results = _together([_sweep_command(*sweep, "--out", str(out)) for out in machines], env, tmp_path)
    for result in results:
        assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    study = _study(machines[0], storage)
    good, slow = study.trials
    assert (good.params["learning_rate"], good.state.name, slow.state.name) == (1e-3, "COMPLETE", "PRUNED")
    assert study.best_trial.number == good.number
    good_dir, slow_dir = (Path(t.user_attrs["run_dir"]) for t in (good, slow))
    assert {good_dir.parents[1].name, slow_dir.parents[1].name} == {"machine_a", "machine_b"}  # one each

    # round 0: both from scratch to step 1, where they paused with a checkpoint; the worse one ended PRUNED there
    assert slow.user_attrs["pruned_at_step"] == 1 and _segments(slow_dir) == [[1]] and slow.user_attrs["steps"] == 1
    assert (slow_dir / "checkpoint-1" / "optimizer.pt").is_file()
    assert "Traceback" not in (slow_dir / "sweep_run.log").read_text()
    assert slow.intermediate_values == {1: _eval_losses(slow_dir)[0]} == {1: slow.value}  # reported from the run
    assert slow.intermediate_values[1] > good.intermediate_values[1]
    decided = "round 0 done at step 1: trial 0 of 2 goes on to step 3, 1 ends there (PRUNED)\n"
    assert sum(decided in result.stdout for result in results) == 1  # by one of the two processes
    assert study.user_attrs["lf_multilr_halving_round_1"] == {"rung": 1, "promoted": [good.number]}

    # the better one resumed once, from its checkpoint at step 1, into its folder, and trained on to the end
    assert _segments(good_dir) == [[1], [2, 3]]  # the resumed run's log starts after the rung
    log = (good_dir / "sweep_run.log").read_text()
    assert f"lf-multilr: loading {good_dir / 'checkpoint-1'} with from_pretrained's key conversion" in log
    assert log.count("===== lf-multilr sweep: resuming from step 1 to the end") == 1 and "Traceback" not in log
    assert sum(": resuming from step 1 to the end, log in" in result.stdout for result in results) == 1
    assert [path.name for path in good_dir.glob("checkpoint-*")] == ["checkpoint-1"]
    lrs = [record["lr"] for record in log_records(good_dir) if "loss" in record]
    assert lrs == pytest.approx([1e-3 * (1 + math.cos(math.pi * t / 3)) / 2 for t in range(3)])  # one schedule
    assert good.intermediate_values == dict(enumerate(_eval_losses(good_dir), 1))
    assert good.value == _eval_losses(good_dir)[-1] and good.user_attrs["steps"] == 3
    for out in machines:  # each process's summary covers the whole study
        assert (out / "sweep.md").read_text().splitlines()[5].endswith("| 1 | PRUNED at step 1 |")

    again = run(_sweep_command(*sweep, "--out", str(machines[0])), env, cwd=tmp_path)  # done: nothing trains
    assert again.returncode == 0 and ", 0 to train" in again.stdout, again.stdout + again.stderr[-3000:]
    assert all(said not in again.stdout for said in (": training", ": resuming", " done at step "))
    assert [(t.state.name, t.datetime_complete) for t in _study(machines[0], storage).trials] == [
        (t.state.name, t.datetime_complete) for t in (good, slow)
    ]


def test_a_failed_trial_is_recorded_with_its_error_line_and_the_study_goes_on(tiny, data, tmp_path, env):
    """(That the next command trains a failed trial's setting again: the 2x2 grid test, whose interrupted trial is a
    FAIL like this one, and the slot rules above.)"""
    config, _ = write_config(tmp_path, tiny(FAMILY), data, FAMILY, max_steps=3)
    out = tmp_path / "my_sweep"
    args = [str(config), "--set", "freeze_vision_tower=true,false", "vision_tower_lr=1e-4", "--max-steps", "2"]
    args += ["--workers", "2"]
    result = run(_sweep_command(*args, "--out", str(out)), env, cwd=tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr[-3000:]
    assert "lf-multilr sweep: 1 of 2 settings failed" in result.stderr
    failed, ok = _study(out).trials
    assert (failed.state.name, failed.params["freeze_vision_tower"], ok.state.name) == ("FAIL", "true", "COMPLETE")
    error = failed.user_attrs["error"]
    assert error.startswith("lf_multilr.errors.ConfigError: lf-multilr: `vision_tower_lr: 0.0001` is refused")
    assert error.endswith("Fix: set `freeze_vision_tower: false`, or remove the key")  # the whole last error line
    assert ok.user_attrs["steps"] == 2  # --max-steps over the config's 3
    rows = _rows(out / "sweep.csv")
    assert [(r["rank"], r["state"], r["error"]) for r in rows] == [("2", "FAIL", error), ("1", "COMPLETE", "")]
    assert (out / "sweep.md").read_text().splitlines()[5] == f"| 2 | 0 | true |  |  | FAIL: {error} |"


def test_two_sweep_processes_of_two_workers_sharing_a_postgresql_study_train_each_setting_once(
    pg, tiny, data, tmp_path, env
):
    """Two processes (as two machines would run them) with two workers each: four claims race for four settings.
    (One process with two workers on the default SQLite study: the ranges and failure tests.)"""
    storage = pg("shared_sweep")
    config, _ = write_config(tmp_path, tiny(FAMILY), data, FAMILY, max_steps=2)
    machines = [tmp_path / "machine_a" / "shared", tmp_path / "machine_b" / "shared"]  # one study: `shared`
    sweep = [str(config), *GRID, "--storage", storage, "--workers", "2"]
    results = _together([_sweep_command(*sweep, "--out", str(out)) for out in machines], env, tmp_path)
    for result in results:
        assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    trials = _study(machines[0], storage).trials
    assert [t.state.name for t in trials] == ["COMPLETE"] * 4  # four trials for four settings:
    assert sorted((t.params["vision_tower_lr"], t.params["multi_modal_projector_lr"]) for t in trials) == SETTINGS
    ran = Counter(Path(t.user_attrs["run_dir"]).parents[1].name for t in trials)
    assert set(ran) == {"machine_a", "machine_b"}, ran  # both processes trained
    for t in trials:
        assert t.value == [r for r in log_records(Path(t.user_attrs["run_dir"])) if "loss" in r][-1]["loss"]
    assert _overlap(_trial_spans(trials)) >= 3  # the two processes, and a process's two workers, trained at once
    assert all(f"{len(SETTINGS)} settings of" in result.stdout for result in results)


def test_without_optuna_the_command_says_which_extra_to_install(monkeypatch, capsys):
    import importlib.util

    from lf_multilr.cli import main as cli_main

    found = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "optuna" else found(name, *a))
    message = "lf-multilr sweep needs optuna, which this environment lacks. Fix: pip install 'lf-multilr[sweep]'\n"
    assert cli_main(["sweep", "train.yaml", "--set", "vision_tower_lr=1e-6"]) == 2
    assert capsys.readouterr().err == message
    assert main(["train.yaml", "--set", "vision_tower_lr=1e-6"]) == 2  # `python -m lf_multilr_sweep` says the same
    assert capsys.readouterr().err == message
