"""``lf-multilr sweep``: a grid of short, real LLaMA-Factory trainings, to find good module learning rates.

lf-multilr sweep CONFIG.yaml --set KEY=V1,V2 [--set KEY=V1,V2 ...] [--max-steps N] [--out DIR] [key=value ...]

Every combination of the ``--set`` values runs as ``llamafactory-cli train CONFIG.yaml key=value ...`` (the one
next to this interpreter), one after another, each in its own folder under ``--out``. A run that trained to the
end gets a ``sweep_run.json`` there, written after the training exited cleanly; run the sweep again with the same
config and arguments and it is skipped. A folder without one (an interrupted or failed run) is trained again from
scratch. In ``--out`` the sweep writes ``sweep.csv`` (one row per run), ``sweep.md`` (ranked by final eval loss,
or final train loss without an eval set) and ``sweep.png`` (each setting's loss curve).

The trainings are subprocesses: this module never imports LLaMA-Factory.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import itertools
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from lf_multilr.config.keys import KEY_NAMES

MARKER = "sweep_run.json"
LOG = "sweep_run.log"
#: Keys whose values must be numbers >= 0; they are written in one canonical form (``1e-6`` and ``0.000001`` alike).
NUMERIC = frozenset((*KEY_NAMES, "learning_rate", "weight_decay"))
#: Keys the sweep sets itself.
OWNED = {"output_dir": "give the sweep's folder with `--out DIR`; each run gets a folder in it"}
KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*")
SAFE_VALUE = re.compile(r"[A-Za-z0-9.+-]+")
UNSAFE = re.compile(r"[^A-Za-z0-9._+-]")
MAX_NAME = 120
EXAMPLE = "--set vision_tower_lr=1e-6,5e-6"
STYLES = ("-", "--", "-.", ":")
MARKERS = ("o", "s", "^", "D", "v", "P")

Axis = tuple[str, tuple[str, ...]]
Setting = dict[str, str]


# Arguments


def _key(key: str, argument: str, fix: str) -> str:
    if not KEY.fullmatch(key):
        raise argparse.ArgumentTypeError(f"`{argument}`: `{key}` is not a config key. Fix: {fix}")
    if key in OWNED:
        raise argparse.ArgumentTypeError(f"`{argument}`: the sweep sets `{key}` itself. Fix: {OWNED[key]}")
    return key


def _value(key: str, text: str, argument: str) -> str:
    """``text`` as passed to the run: numeric keys must hold a finite number >= 0, written canonically."""
    if key not in NUMERIC:
        return text
    fix = f"give comma-separated numbers >= 0, e.g. `--set {key}=1e-6,5e-6`"
    try:
        number = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"`{argument}`: `{text}` is not a number. Fix: {fix}") from None
    if not math.isfinite(number) or number < 0:
        raise argparse.ArgumentTypeError(f"`{argument}`: `{text}` is not a finite number >= 0. Fix: {fix}")
    return repr(number)


def parse_axis(argument: str) -> Axis:
    """``KEY=V1,V2,...`` (one ``--set``) as ``(KEY, (V1, V2, ...))``."""
    key, sep, listed = argument.partition("=")
    key = key.strip()
    if not sep:
        raise argparse.ArgumentTypeError(f"`{argument}` has no `=`. Fix: write KEY=V1,V2,..., e.g. `{EXAMPLE}`")
    _key(key, argument, f"write KEY=V1,V2,..., e.g. `{EXAMPLE}`")
    items = [item.strip() for item in listed.split(",")]
    if not any(items):
        raise argparse.ArgumentTypeError(f"`{argument}` lists no value. Fix: list them, e.g. `--set {key}=1e-6,5e-6`")
    if not all(items):
        raise argparse.ArgumentTypeError(
            f"`{argument}` has an empty value between commas. Fix: remove the extra comma, e.g. `--set {key}=1e-6,5e-6`"
        )
    values = tuple(_value(key, item, argument) for item in items)
    repeated = [value for i, value in enumerate(values) if value in values[:i]]
    if repeated:
        raise argparse.ArgumentTypeError(f"`{argument}` lists `{repeated[0]}` twice. Fix: list each value once")
    return key, values


def parse_override(argument: str) -> tuple[str, str]:
    """``KEY=VALUE`` (a plain override for every run) as ``(KEY, VALUE)``."""
    key, sep, value = argument.partition("=")
    fix = "write KEY=VALUE, e.g. `language_model_lr=1e-5`"
    if not sep:
        raise argparse.ArgumentTypeError(f"`{argument}` has no `=`. Fix: {fix}")
    return _key(key.strip(), argument, fix), value


def _max_steps(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"`{text}` is not a whole number >= 1. Fix: e.g. `--max-steps 20`")
    return int(text)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lf-multilr sweep",
        description="Run every combination of the --set values as a short `llamafactory-cli train` run, one after "
        "another; rank them in sweep.md and plot their loss curves in sweep.png. Run it again to do what is missing.",
    )
    parser.add_argument("config", type=Path, help="the training YAML (or JSON) of `llamafactory-cli train`")
    parser.add_argument("overrides", nargs="*", type=parse_override, metavar="key=value", help="for every run")
    parser.add_argument(
        "--set",
        dest="axes",
        action="append",
        default=[],
        type=parse_axis,
        metavar="KEY=V1,V2",
        help="a key to sweep and its values; give one --set per key, the grid is every combination",
    )
    parser.add_argument("--max-steps", type=_max_steps, metavar="N", help="max_steps of every run")
    parser.add_argument("--out", type=Path, metavar="DIR", help="the sweep's folder (default: output_dir + _sweep)")
    return parser


@dataclass(frozen=True)
class Sweep:
    """What to run: the config, the grid's axes, the overrides of every run, where."""

    config: Path
    config_text: str
    axes: list[Axis]
    overrides: list[str]
    out: Path
    cli: str


def _read_config(parser: argparse.ArgumentParser, path: Path) -> tuple[str, dict[str, Any]]:
    if path.suffix not in (".yaml", ".yml", ".json"):
        parser.error(f"argument config: `{path}` is not a .yaml, .yml or .json file. Fix: give the training YAML")
    try:
        text = path.read_text(encoding="utf-8")
        config = yaml.safe_load(text)
    except (OSError, yaml.YAMLError) as error:
        parser.error(f"argument config: cannot read `{path}`: {str(error).splitlines()[0]}. Fix: give a training YAML")
    if not isinstance(config, dict):
        parser.error(f"argument config: `{path}` is not a mapping of keys to values. Fix: give a training YAML")
    return text, config


def parse_args(argv: Sequence[str]) -> Sweep:
    """Check every argument before anything runs; argparse prints what is wrong and exits 2 otherwise."""
    parser = _parser()
    args = parser.parse_intermixed_args(argv)
    axes: list[Axis] = args.axes
    overrides: list[tuple[str, str]] = args.overrides
    swept = [key for key, _ in axes]
    if not axes:
        parser.error(f"nothing to sweep. Fix: add at least one --set KEY=V1,V2, e.g. `{EXAMPLE}`")
    for key in swept:
        if swept.count(key) > 1:
            parser.error(f"argument --set: `{key}` is set twice. Fix: give all its values in one `--set {key}=V1,V2`")
    if args.max_steps is not None and "max_steps" in swept + [key for key, _ in overrides]:
        parser.error("argument --max-steps: max_steps is also given as a key. Fix: keep one of the two")
    for key, value in overrides:
        if key in swept:
            parser.error(f"argument key=value: `{key}={value}` is also swept by --set. Fix: remove one of the two")
    text, config = _read_config(parser, args.config)
    if args.out is None and not config.get("output_dir"):
        parser.error(
            f"argument --out: `{args.config}` has no output_dir to name the sweep's folder after. Fix: --out DIR"
        )
    cli = shutil.which("llamafactory-cli", path=str(Path(sys.executable).parent))
    if cli is None:
        parser.error(
            f"llamafactory-cli is not next to {sys.executable}. Fix: install LLaMA-Factory in this environment"
        )
    output_dir = Path(os.path.abspath(str(config.get("output_dir", "."))))
    out = Path(os.path.abspath(args.out or output_dir.with_name(output_dir.name + "_sweep")))
    extra = [] if args.max_steps is None else [f"max_steps={args.max_steps}"]
    return Sweep(args.config, text, axes, [f"{k}={v}" for k, v in overrides] + extra, out, cli)


# The grid


def expand(axes: Sequence[Axis]) -> list[Setting]:
    """Every combination of the axes' values; the first axis varies slowest."""
    keys = [key for key, _ in axes]
    return [dict(zip(keys, values, strict=True)) for values in itertools.product(*(values for _, values in axes))]


def folder_name(setting: Mapping[str, str]) -> str:
    """A run's folder: ``key-value__key-value``; a short hash of that is added where a value needs escaping."""
    raw = "__".join(f"{key}-{value}" for key, value in setting.items())
    if all(SAFE_VALUE.fullmatch(value) for value in setting.values()) and len(raw) <= MAX_NAME:
        return raw
    return f"{UNSAFE.sub('_', raw)[:MAX_NAME]}-{hashlib.sha256(raw.encode()).hexdigest()[:10]}"


# A run's results


@dataclass(frozen=True)
class Curves:
    """A run's loss by step, as its logs recorded it."""

    train: list[tuple[int, float]]
    eval: list[tuple[int, float]]
    steps: int
    final_eval: float | None


def _points(records: Sequence[Mapping[str, Any]], step: str, key: str) -> list[tuple[int, float]]:
    return [(int(r.get(step, 0)), float(r[key])) for r in records if isinstance(r.get(key), (int, float))]


def read_curves(folder: Path) -> Curves | None:
    """From ``trainer_state.json`` (else LLaMA-Factory's ``trainer_log.jsonl``); the eval loss after training from
    ``all_results.json``. ``None`` when there is no log."""
    state, log = folder / "trainer_state.json", folder / "trainer_log.jsonl"
    if state.is_file():
        records, step = json.loads(state.read_text(encoding="utf-8")).get("log_history", []), "step"
    elif log.is_file():
        records = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines() if line.strip()]
        step = "current_steps"
    else:
        return None
    evals = _points(records, step, "eval_loss")
    results = folder / "all_results.json"
    after = json.loads(results.read_text(encoding="utf-8")).get("eval_loss") if results.is_file() else None
    final_eval = float(after) if isinstance(after, (int, float)) else (evals[-1][1] if evals else None)
    steps = max((int(record.get(step, 0)) for record in records), default=0)
    return Curves(_points(records, step, "loss"), evals, steps, final_eval)


@dataclass(eq=False)
class Run:
    """One setting of the grid, and what became of it."""

    setting: Setting
    folder: Path
    status: str = "not run"
    error: str = ""
    seconds: float | None = None
    curves: Curves | None = None

    @property
    def label(self) -> str:
        return " ".join(f"{key}={value}" for key, value in self.setting.items())

    @property
    def train_loss(self) -> float | None:
        return self.curves.train[-1][1] if self.curves and self.curves.train else None

    @property
    def eval_loss(self) -> float | None:
        return self.curves.final_eval if self.curves else None


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


# Running


def run_args(sweep: Sweep, setting: Mapping[str, str]) -> list[str]:
    """The run's ``key=value`` arguments, ``output_dir`` aside."""
    return [*sweep.overrides, *(f"{key}={value}" for key, value in setting.items())]


def fingerprint(sweep: Sweep, setting: Mapping[str, str]) -> dict[str, Any]:
    """What a finished run was trained from: a changed config or argument makes it run again."""
    return {"config_sha256": hashlib.sha256(sweep.config_text.encode()).hexdigest(), "args": run_args(sweep, setting)}


def finished_seconds(folder: Path, expected: Mapping[str, Any]) -> float | None:
    """How long the run took, if it finished with the ``expected`` fingerprint; ``None`` otherwise."""
    try:
        marker = json.loads((folder / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return float(marker["seconds"]) if marker.get("fingerprint") == expected else None


def _train(sweep: Sweep, run: Run) -> None:
    if run.folder.exists():  # an interrupted or failed try, or one trained from other settings: start afresh
        shutil.rmtree(run.folder)
    run.folder.mkdir(parents=True)
    command = [sweep.cli, "train", str(sweep.config), *run_args(sweep, run.setting), f"output_dir={run.folder}"]
    start = time.monotonic()
    with (run.folder / LOG).open("w", encoding="utf-8") as log:
        returncode = subprocess.run(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT).returncode
    run.seconds = time.monotonic() - start
    run.curves = read_curves(run.folder)
    if returncode != 0:
        run.status, run.error = "failed", error_line((run.folder / LOG).read_text(encoding="utf-8"), returncode)
    elif run.train_loss is None:
        run.status, run.error = "failed", "the run logged no training loss (is do_train set?)"
    else:
        run.status = "ok"
        marker = {"fingerprint": fingerprint(sweep, run.setting), "seconds": run.seconds}
        partial = run.folder / (MARKER + ".partial")
        partial.write_text(json.dumps(marker, indent=2), encoding="utf-8")
        partial.replace(run.folder / MARKER)


def _loss_text(run: Run) -> str:
    text = f"final loss {run.train_loss:.4f}"
    return text + (f", eval loss {run.eval_loss:.4f}" if run.eval_loss is not None else "")


def step(sweep: Sweep, run: Run, prefix: str) -> None:
    """Train ``run`` unless it finished before; print one line about it."""
    seconds = finished_seconds(run.folder, fingerprint(sweep, run.setting))
    curves = read_curves(run.folder) if seconds is not None else None
    if curves and curves.train:
        run.status, run.seconds, run.curves = "ok", seconds, curves
        print(f"{prefix}: {_loss_text(run)} (finished before: skipped)", flush=True)
        return
    print(f"{prefix}: training, log in {run.folder / LOG}", flush=True)
    _train(sweep, run)
    outcome = _loss_text(run) if run.status == "ok" else f"FAILED: {run.error}"
    print(f"{prefix}: {outcome} ({run.seconds:.1f} s)", flush=True)


# The summary


def rank(runs: Sequence[Run]) -> tuple[list[Run], str]:
    """Best first by final eval loss, or by final train loss when no run has an eval loss; failed runs and runs
    without a finite loss last, in grid order. Returns the runs and the name of the loss they are ranked by."""
    by_eval = any(run.eval_loss is not None for run in runs)

    def order(run: Run) -> tuple[bool, float]:
        loss = run.eval_loss if by_eval else run.train_loss
        if run.status != "ok" or loss is None or not math.isfinite(loss):
            return (True, 0.0)
        return (False, loss)

    return sorted(runs, key=order), "final eval loss" if by_eval else "final train loss"


def _number(value: float | None) -> str:
    return "" if value is None else repr(value)


def write_csv(path: Path, runs: Sequence[Run], keys: Sequence[str]) -> None:
    """One row per run, in grid order: rank, the swept keys, losses, steps, status, seconds, folder, error."""
    ranked, by = rank(runs)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        header = ["rank", *keys, "final_train_loss", "final_eval_loss", "steps", "status", "seconds", "run_dir"]
        writer.writerow([*header, "error"])
        for run in runs:
            writer.writerow(
                [
                    ranked.index(run) + 1,
                    *(run.setting[key] for key in keys),
                    _number(run.train_loss),
                    _number(run.eval_loss),
                    run.curves.steps if run.curves else "",
                    run.status,
                    "" if run.seconds is None else f"{run.seconds:.1f}",
                    run.folder.name,
                    run.error,
                ]
            )


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _column(values: Sequence[float | None]) -> list[str]:
    """Losses with the fewest decimals (4 to 8) that tell the different ones apart."""
    distinct = {value for value in values if value is not None}
    digits = next((d for d in range(4, 9) if len({f"{v:.{d}f}" for v in distinct}) == len(distinct)), 8)
    return ["" if value is None else f"{value:.{digits}f}" for value in values]


def markdown(runs: Sequence[Run], keys: Sequence[str]) -> str:
    """The runs as a markdown table, best first."""
    ranked, by = rank(runs)
    losses = {"final eval loss": [run.eval_loss for run in ranked]} if by == "final eval loss" else {}
    losses["final train loss"] = [run.train_loss for run in ranked]
    columns = [_column(values) for values in losses.values()]
    lines = [
        f"Ranked by {by} (lower is better).",
        "",
        "| " + " | ".join(["rank", *keys, *losses, "steps", "status"]) + " |",
        "|" + "---:|" * (1 + len(keys) + len(losses) + 1) + "---|",
    ]
    for i, run in enumerate(ranked):
        status = run.status if run.status == "ok" else f"{run.status}: {run.error}"
        cells = [str(i + 1), *(run.setting[key] for key in keys), *(column[i] for column in columns)]
        cells += [str(run.curves.steps) if run.curves else "", status]
        lines.append("| " + " | ".join(_cell(cell) for cell in cells) + " |")
    return "\n".join(lines) + "\n"


def differences(series: Sequence[Sequence[tuple[int, float]]]) -> list[list[tuple[int, float]]]:
    """Each run's loss minus the mean of every run's loss at the same step."""
    at: dict[int, list[float]] = {}
    for points in series:
        for step_, loss in points:
            at.setdefault(step_, []).append(loss)
    return [[(s, loss - sum(at[s]) / len(at[s])) for s, loss in points] for points in series]


def draw(path: Path, runs: Sequence[Run]) -> None:
    """Each finished run's train loss by step (eval loss as crosses), labelled with its rank; below, with two
    settings or more, each one's difference from the mean of all (in the loss they are ranked by, where every run
    has it by step), where settings close together tell apart."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    ranked, by = rank(runs)
    drawn = [(f"{i}. {run.label}", run.curves) for i, run in enumerate(ranked, 1) if run.status == "ok" and run.curves]
    panels = 2 if len(drawn) > 1 else 1
    figure = Figure(figsize=(8, 1.5 + 3.5 * panels + 0.22 * len(drawn)), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    loss_axes, *diff_axes = figure.subplots(panels, 1, sharex=True, squeeze=False)[:, 0]
    by_eval = by == "final eval loss" and all(curves.eval for _, curves in drawn)
    below = differences([curves.eval if by_eval else curves.train for _, curves in drawn])
    for n, (name, curves) in enumerate(drawn):
        color, linestyle = f"C{n % 10}", STYLES[n % len(STYLES)]  # equal curves stay visible on top of each other
        for axes, points, label in [(loss_axes, curves.train, name), *((axes, below[n], None) for axes in diff_axes)]:
            marker = MARKERS[n % len(MARKERS)] if len(points) <= 30 else None
            axes.plot(*zip(*points, strict=True), color=color, linestyle=linestyle, marker=marker, ms=4, label=label)
        if curves.eval:
            loss_axes.plot(*zip(*curves.eval, strict=True), "x", color=color, markersize=8)
    with_eval = any(curves.eval for _, curves in drawn)
    loss_axes.set_title("Loss per setting" + (" (lines: train, crosses: eval)" if with_eval else " (train)"))
    loss_axes.set_ylabel("loss")
    for axes in diff_axes:
        axes.set_title(f"{'Eval' if by_eval else 'Train'} loss minus the mean of all settings at that step")
        axes.set_ylabel("loss difference")
    for axes in (loss_axes, *diff_axes):
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.grid(alpha=0.3)
    (loss_axes, *diff_axes)[-1].set_xlabel("step")
    if drawn:
        figure.legend(loc="outside lower center", fontsize="small", title="rank. setting", title_fontsize="small")
    else:
        loss_axes.text(0.5, 0.5, "no run finished", ha="center", va="center", transform=loss_axes.transAxes)
    figure.savefig(path, format="png")


def summarize(sweep: Sweep, runs: Sequence[Run]) -> str:
    """Write sweep.csv, sweep.md and sweep.png in the sweep's folder; return the markdown."""
    keys = [key for key, _ in sweep.axes]
    write_csv(sweep.out / "sweep.csv", runs, keys)
    table = markdown(runs, keys)
    (sweep.out / "sweep.md").write_text(table, encoding="utf-8")
    draw(sweep.out / "sweep.png", runs)
    return table


def progress_bar(done: int, total: int, width: int = 20) -> str:
    """``|#####---------------|`` for ``done`` of ``total`` runs finished."""
    filled = round(width * done / total) if total else width
    return "|" + "#" * filled + "-" * (width - filled) + "|"


def main(argv: list[str]) -> int:
    try:
        sweep = parse_args(argv)
    except SystemExit as done:  # --help, or an argument refused (argparse printed why)
        return done.code if isinstance(done.code, int) else 2
    runs = [Run(setting, sweep.out / folder_name(setting)) for setting in expand(sweep.axes)]
    print(f"lf-multilr sweep: {len(runs)} runs of {sweep.config} in {sweep.out}", flush=True)
    sweep.out.mkdir(parents=True, exist_ok=True)
    try:
        for i, run in enumerate(runs, 1):
            step(sweep, run, f"[{i}/{len(runs)}] {progress_bar(i - 1, len(runs))} {run.label}")
    except KeyboardInterrupt:
        print("lf-multilr sweep: interrupted. Run the same command again to train what is missing.", file=sys.stderr)
        return 130
    print("\n" + summarize(sweep, runs) + f"\nsweep.csv, sweep.md and sweep.png are in {sweep.out}")
    failed = sum(run.status != "ok" for run in runs)
    if failed:
        print(f"lf-multilr sweep: {failed} of {len(runs)} runs failed (see sweep.csv and their {LOG})", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
