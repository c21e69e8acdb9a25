"""`lf-multilr sweep`: the grid, folder names, ranking and refusals; real sweeps of the tiny Qwen2-VL."""

import csv
import json
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from lf_multilr.apps.sweep import (
    Curves,
    Run,
    Sweep,
    error_line,
    expand,
    fingerprint,
    finished_seconds,
    folder_name,
    main,
    markdown,
    parse_axis,
    rank,
    read_curves,
)
from tools.testing import log_records, run, write_config

FAMILY = "qwen2_vl"
GRID = ["--set", "vision_tower_lr=1e-4,1e-3", "--set", "multi_modal_projector_lr=1e-3,1e-2"]
SETTINGS = [(vt, mmp) for vt in ("0.0001", "0.001") for mmp in ("0.001", "0.01")]
#: matplotlib's first four cycle colours: the four settings' curves, best first
COLORS = [(0x1F, 0x77, 0xB4), (0xFF, 0x7F, 0x0E), (0x2C, 0xA0, 0x2C), (0xD6, 0x27, 0x28)]


# The grid and folder names


def test_the_grid_is_every_combination_the_first_set_varying_slowest():
    grid = expand([("vision_tower_lr", ("1e-06", "5e-06")), ("lr_scheduler_type", ("cosine", "constant", "linear"))])
    assert grid == [
        {"vision_tower_lr": v, "lr_scheduler_type": s}
        for v in ("1e-06", "5e-06")
        for s in ("cosine", "constant", "linear")
    ]


def test_numbers_are_written_one_way_and_other_values_as_given():
    assert parse_axis("vision_tower_lr=1e-6, 0.00005,2E-4") == ("vision_tower_lr", ("1e-06", "5e-05", "0.0002"))
    assert parse_axis("learning_rate=0") == ("learning_rate", ("0.0",))
    assert parse_axis("lr_scheduler_type=cosine,constant") == ("lr_scheduler_type", ("cosine", "constant"))


def test_folder_names_are_readable_stable_and_safe(tmp_path):
    (_, (value,)), (_, (same,)) = parse_axis("vision_tower_lr=1e-6"), parse_axis("vision_tower_lr=0.000001")
    name = folder_name({"vision_tower_lr": value, "multi_modal_projector_lr": "5e-05"})
    assert name == "vision_tower_lr-1e-06__multi_modal_projector_lr-5e-05"
    assert folder_name({"vision_tower_lr": same, "multi_modal_projector_lr": "5e-05"}) == name

    odd = [
        {"dataset": "a/b c"},
        {"dataset": "a_b_c"},
        {"dataset": "a b/c"},
        {"dataset": "x" * 300},
        {"k": "..", "j": ""},
    ]
    names = [folder_name(setting) for setting in odd]
    assert len(set(names)) == len(odd)
    assert names == [folder_name(setting) for setting in odd]
    for name in names:
        assert re.fullmatch(r"[A-Za-z0-9._+-]{1,131}", name) and name not in (".", "..")
        (tmp_path / name).mkdir()


# Results and ranking


def _run(train: float | None, eval_: float | None = None, status: str = "ok") -> Run:
    curves = None if train is None else Curves([(1, 9.0), (2, train)], [], 2, eval_)
    return Run({"vision_tower_lr": str(train)}, Path("unused"), status=status, curves=curves)


def test_ranking_prefers_the_eval_loss_and_puts_runs_without_a_loss_last():
    failed, diverged = _run(None, status="failed"), _run(math.nan, math.nan)
    a, b, c = _run(3.0, eval_=2.0), _run(1.0, eval_=2.5), _run(2.0, eval_=1.5)
    assert rank([failed, a, diverged, b, c]) == ([c, a, b, failed, diverged], "final eval loss")


def test_ranking_falls_back_to_the_train_loss_without_an_eval_set():
    a, b, c = _run(3.0), _run(1.0), _run(2.0)
    assert rank([a, b, c]) == ([b, c, a], "final train loss")


def test_the_table_shows_as_many_decimals_as_tell_the_losses_apart():
    close, closer, failed = _run(5.516153812), _run(5.516222), _run(None, status="failed")
    failed.error = "ValueError: a | b"
    assert markdown([failed, closer, close], ["vision_tower_lr"]).splitlines() == [
        "Ranked by final train loss (lower is better).",
        "",
        "| rank | vision_tower_lr | final train loss | steps | status |",
        "|---:|---:|---:|---:|---|",
        "| 1 | 5.516153812 | 5.51615 | 2 | ok |",
        "| 2 | 5.516222 | 5.51622 | 2 | ok |",
        "| 3 | None |  |  | failed: ValueError: a \\| b |",
    ]


def test_curves_come_from_llamafactorys_log_when_there_is_no_trainer_state(tmp_path):
    assert read_curves(tmp_path) is None
    records = [
        {"current_steps": 1, "loss": 6.0, "lr": 1e-3},
        {"current_steps": 2, "loss": 5.5, "lr": 1e-3},
        {"current_steps": 2, "eval_loss": 5.8},
        {"current_steps": 3, "loss": 5.2, "lr": 1e-3},
        {"current_steps": 3},
    ]
    (tmp_path / "trainer_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert read_curves(tmp_path) == Curves([(1, 6.0), (2, 5.5), (3, 5.2)], [(2, 5.8)], 3, 5.8)
    # the evaluation after training (`do_eval`) is only in all_results.json
    (tmp_path / "all_results.json").write_text(json.dumps({"eval_loss": 5.1, "train_loss": 5.6}))
    assert read_curves(tmp_path) == Curves([(1, 6.0), (2, 5.5), (3, 5.2)], [(2, 5.8)], 3, 5.1)


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


def test_a_finished_run_counts_only_for_the_config_and_arguments_it_ran_with(tmp_path):
    sweep = Sweep(tmp_path / "c.yaml", "stage: sft\n", [("vision_tower_lr", ("1e-06",))], [], tmp_path, "cli")
    setting = {"vision_tower_lr": "1e-06"}
    assert finished_seconds(tmp_path, fingerprint(sweep, setting)) is None
    (tmp_path / "sweep_run.json").write_text(json.dumps({"fingerprint": fingerprint(sweep, setting), "seconds": 9.5}))
    assert finished_seconds(tmp_path, fingerprint(sweep, setting)) == 9.5
    for changed in (
        Sweep(sweep.config, "stage: pt\n", sweep.axes, [], tmp_path, "cli"),
        Sweep(sweep.config, sweep.config_text, sweep.axes, ["max_steps=5"], tmp_path, "cli"),
    ):
        assert finished_seconds(tmp_path, fingerprint(changed, setting)) is None


# Refusals, before anything runs


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "vision_tower_lr"], "argument --set: `vision_tower_lr` has no `=`. Fix: write KEY=V1,V2"),
        (["--set", "vision_tower_lr="], "argument --set: `vision_tower_lr=` lists no value. Fix:"),
        (["--set", "vision_tower_lr=1e-6,,5e-6"], "`vision_tower_lr=1e-6,,5e-6` has an empty value between commas"),
        (
            ["--set", "vision_tower_lr=1e-6,abc"],
            "argument --set: `vision_tower_lr=1e-6,abc`: `abc` is not a number. Fix",
        ),
        (["--set", "language_model_lr=-1e-5"], "`-1e-5` is not a finite number >= 0. Fix"),
        (["--set", "vision_tower_lr=1e-6,0.000001"], "lists `1e-06` twice. Fix: list each value once"),
        (["--set", "vision_tower_lr=1e-6", "--set", "vision_tower_lr=2e-6"], "`vision_tower_lr` is set twice. Fix"),
        (["--set", "vision_tower_lr=1e-6", "vision_tower_lr=2e-6"], "`vision_tower_lr=2e-6` is also swept by --set"),
        (
            ["--set", "output_dir=a,b"],
            "the sweep sets `output_dir` itself. Fix: give the sweep's folder with `--out DIR`",
        ),
        (
            ["--set", "vision_tower_lr=1e-6", "freeze_vision_tower"],
            "argument key=value: `freeze_vision_tower` has no `=`",
        ),
        (["--set", "vision_tower_lr=1e-6", "--max-steps", "0"], "argument --max-steps: `0` is not a whole number >= 1"),
        ([], "nothing to sweep. Fix: add at least one --set KEY=V1,V2"),
    ],
)
def test_bad_arguments_are_refused_before_any_run(args, message, tmp_path, capsys):
    config, _ = write_config(tmp_path, tmp_path / "no_model", tmp_path / "no_data", FAMILY)
    assert main([str(config), *args, "--out", str(tmp_path / "sweep")]) == 2
    err = capsys.readouterr().err
    assert message in err and "usage: lf-multilr sweep" in err
    assert not (tmp_path / "sweep").exists()


def test_a_config_without_output_dir_needs_out(tmp_path, capsys):
    config = tmp_path / "train.yaml"
    config.write_text("stage: sft\n")
    assert main([str(config), "--set", "vision_tower_lr=1e-6"]) == 2
    assert "argument --out: " in capsys.readouterr().err
    assert main([str(tmp_path / "missing.yaml"), "--set", "vision_tower_lr=1e-6"]) == 2
    assert "argument config: cannot read" in capsys.readouterr().err


# Real sweeps


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def _markers(folder: Path) -> dict[str, int]:
    return {marker.parent.name: marker.stat().st_mtime_ns for marker in folder.glob("*/sweep_run.json")}


def _interrupt_during_the_last_run(args: list[str], env: dict[str, str], cwd: Path) -> str:
    """Start the sweep, and press Ctrl-C (SIGINT to its process group) once the 4th run has begun training."""
    sweep = subprocess.Popen(
        args, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    watchdog = threading.Timer(300, sweep.kill)
    watchdog.start()
    assert sweep.stdout is not None
    seen = [""]
    for line in sweep.stdout:
        seen.append(line)
        if line.startswith("[4/4]"):
            break
    assert seen[-1].startswith("[4/4]") and "training, log in " in seen[-1], "".join(seen)
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


def test_a_2x2_sweep_interrupted_then_rerun_trains_only_what_is_missing(tiny, data, tmp_path, env):
    config, output_dir = write_config(tmp_path, tiny(FAMILY), data, FAMILY, max_steps=3)
    out = output_dir.with_name("out_sweep")
    args = [sys.executable, "-m", "lf_multilr.apps.sweep", str(config), *GRID]

    first = _interrupt_during_the_last_run(args, env, tmp_path)
    assert first.count("final loss") == 3 and "interrupted. Run the same command again" in first
    assert not (out / "sweep.csv").exists()
    names = [folder_name({"vision_tower_lr": vt, "multi_modal_projector_lr": mmp}) for vt, mmp in SETTINGS]
    assert sorted(_markers(out)) == sorted(names[:3]) and (out / names[3]).is_dir()  # the 4th: interrupted
    (out / names[1] / "sweep_run.json").unlink()  # the 2nd: as if stopped before its marker, LF's files all there
    assert (out / names[1] / "model.safetensors").is_file()
    kept = _markers(out)

    started = time.time_ns()
    second = run(args, env, cwd=tmp_path)
    assert second.returncode == 0, second.stdout + second.stderr[-3000:]
    ran = [line.split(" ", 1)[0] for line in second.stdout.splitlines() if ": training, log in " in line]
    assert ran == ["[2/4]", "[4/4]"] and second.stdout.count("(finished before: skipped)") == 2
    markers = _markers(out)
    assert {name: markers[name] for name in kept} == kept  # the finished runs were not touched
    assert markers[names[1]] >= started and markers[names[3]] >= started
    for name in names:  # each trained once into a clean folder: LLaMA-Factory appends to a trainer_log.jsonl left there
        assert [record["current_steps"] for record in log_records(out / name) if "loss" in record] == [1, 2, 3]

    rows = _rows(out / "sweep.csv")
    assert [(row["vision_tower_lr"], row["multi_modal_projector_lr"]) for row in rows] == SETTINGS
    losses = [float(row["final_train_loss"]) for row in rows]
    assert all(math.isfinite(loss) for loss in losses) and len(set(losses)) == 4
    assert sorted(int(row["rank"]) for row in rows) == [1, 2, 3, 4]
    for row, loss in zip(rows, losses, strict=True):
        assert row["status"] == "ok" and row["steps"] == "3" and row["final_eval_loss"] == "" and not row["error"]
        last = [record for record in log_records(out / row["run_dir"]) if "loss" in record][-1]
        assert last["loss"] == loss  # LLaMA-Factory's own log of that run, which trained at the swept LRs:
        assert last["lr/vision_tower"] == float(row["vision_tower_lr"])
        assert last["lr/multi_modal_projector"] == float(row["multi_modal_projector_lr"])

    table = (out / "sweep.md").read_text()
    assert table in second.stdout and table.startswith("Ranked by final train loss")
    best = min(rows, key=lambda row: float(row["final_train_loss"]))
    assert f"| 1 | {best['vision_tower_lr']} | {best['multi_modal_projector_lr']} | " in table
    with Image.open(out / "sweep.png") as image:
        colors = Counter(image.convert("RGB").getdata())
    assert all(colors[color] > 200 for color in COLORS), [colors[color] for color in COLORS]  # curves, not a legend

    summary = (out / "sweep.csv").read_text()
    third = run(args, env, cwd=tmp_path)
    assert third.returncode == 0 and third.stdout.count("(finished before: skipped)") == 4
    assert _markers(out) == markers and (out / "sweep.csv").read_text() == summary


def test_a_failed_run_is_recorded_and_the_sweep_goes_on(tiny, data, tmp_path, env):
    config, _ = write_config(
        tmp_path, tiny(FAMILY), data, FAMILY, max_steps=3, val_size=0.2, eval_strategy="steps", eval_steps=1
    )
    out = tmp_path / "my_sweep"
    args = [str(config), "--set", "freeze_vision_tower=true,false", "vision_tower_lr=1e-4", "--max-steps", "2"]
    result = run([sys.executable, "-m", "lf_multilr.apps.sweep", *args, "--out", str(out)], env, cwd=tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr[-3000:]
    assert "lf-multilr sweep: 1 of 2 runs failed" in result.stderr

    failed, ok = _rows(out / "sweep.csv")
    assert failed["freeze_vision_tower"] == "true" and failed["status"] == "failed" and failed["rank"] == "2"
    assert failed["error"].startswith("lf_multilr.errors.ConfigError: lf-multilr: `vision_tower_lr: 0.0001` is refused")
    assert failed["error"].endswith("Fix: set `freeze_vision_tower: false`, or remove the key")  # the whole line
    assert ok["freeze_vision_tower"] == "false" and ok["status"] == "ok" and ok["rank"] == "1"
    assert ok["steps"] == "2"  # --max-steps over the config's 3
    results = json.loads((out / ok["run_dir"] / "all_results.json").read_text())
    assert float(ok["final_eval_loss"]) == results["eval_loss"] and math.isfinite(results["eval_loss"])

    lines = (out / "sweep.md").read_text().splitlines()
    assert lines[0] == "Ranked by final eval loss (lower is better)."
    assert lines[4].startswith("| 1 | false | ") and lines[4].endswith(" | 2 | ok |")
    assert lines[5] == f"| 2 | true |  |  |  | failed: {failed['error']} |"


def test_progress_bar():
    from lf_multilr.apps.sweep import progress_bar

    assert [progress_bar(done, 4, width=8) for done in (0, 2, 4)] == ["|--------|", "|####----|", "|########|"]
