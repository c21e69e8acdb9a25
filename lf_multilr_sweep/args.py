"""The command line of ``lf-multilr sweep``, checked whole before any trial starts, as one :class:`Sweep`.

Every refusal names the argument, the value, why, and the fix; argparse prints it with the usage and exits 2.
"""

from __future__ import annotations

import argparse
import difflib
import math
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

import lf_multilr
from lf_multilr.config.keys import KEYS, Key, Kind, check_value
from lf_multilr.errors import ConfigError

from .halving import DEFAULT_FACTOR, targets

#: A grid value as the study records it: a number for numeric keys, else the text given.
GridValue = int | float | str
#: Keys the sweep sets itself.
OWNED = {"output_dir": "give the sweep's folder with `--out DIR`; each trial gets a folder in it"}
KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*")
INTEGER = re.compile(r"[+-]?\d+")
SET_EXAMPLE = "--set vision_tower_lr=1e-6,5e-6"
RANGE_EXAMPLE = "--range vision_tower_lr=1e-6:1e-3:log"
#: lf-multilr's keys by name; ``learning_rate`` and ``weight_decay`` follow the rules of the module keys they feed.
CHECKED: dict[str, Key] = {key.name: key for key in KEYS}
BASE_RULES: dict[str, tuple[Kind, str]] = {"learning_rate": ("lr", "1.0e-5"), "weight_decay": ("weight_decay", "0.01")}
#: Kinds whose values are whole numbers.
WHOLE_KINDS = ("start_step", "warmup_steps")
DEFAULT_TRIALS = 10


@dataclass(frozen=True)
class GridAxis:
    """A ``--set`` key and its values, each run once with every combination of the other axes."""

    key: str
    values: tuple[GridValue, ...]


@dataclass(frozen=True)
class RangeAxis:
    """A ``--range`` key: TPE samples it between ``low`` and ``high`` (on a log scale with ``log``)."""

    key: str
    low: float
    high: float
    log: bool
    integer: bool

    @property
    def spec(self) -> str:
        bounds = (int(self.low), int(self.high)) if self.integer else (self.low, self.high)
        return f"{self.key}={bounds[0]!r}:{bounds[1]!r}" + (":log" if self.log else "")


@dataclass(frozen=True)
class Sweep:
    """What to run, where, and how: everything the command line said, checked."""

    config: Path
    config_text: str
    grid: tuple[GridAxis, ...]
    ranges: tuple[RangeAxis, ...]
    trials: int
    overrides: tuple[str, ...]
    out: Path
    storage: str
    study: str
    prune: bool
    #: Every run's eval step and max_steps, where they are whole numbers given once for all settings.
    eval_steps: int | None
    max_steps: int | None
    #: ``--prune``'s reduction factor: a third of each round goes on, with rungs 3x apart.
    reduction_factor: int
    workers: int
    #: Each worker's ``CUDA_VISIBLE_DEVICES`` (None: the runs see what the sweep sees, e.g. on CPU).
    devices: tuple[str | None, ...]
    seed: int | None
    cli: str

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(axis.key for axis in self.grid) + tuple(axis.key for axis in self.ranges)

    @property
    def ends(self) -> tuple[int, ...]:
        """Under ``--prune``, the step where each round of successive halving ends (the last: ``max_steps``)."""
        if not self.prune or self.eval_steps is None or self.max_steps is None:
            return ()
        return targets(self.eval_steps, self.max_steps, self.reduction_factor)


def value_text(value: Any) -> str:
    """A value as a run's ``key=value`` argument: numbers in one canonical form."""
    return repr(value) if isinstance(value, float) else str(value)


# Single arguments (argparse `type=` functions: the syntax of one argument)


def _axis(argument: str, fix: str) -> tuple[str, str]:
    """An axis argument's key, checked, and what follows its ``=``."""
    key, sep, rest = argument.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"`{argument}` has no `=`. Fix: {fix}")
    return _key(key.strip(), argument, fix), rest


def _key(key: str, argument: str, fix: str) -> str:
    if not KEY.fullmatch(key):
        raise argparse.ArgumentTypeError(f"`{argument}`: `{key}` is not a config key. Fix: {fix}")
    if key in OWNED:
        raise argparse.ArgumentTypeError(f"`{argument}`: the sweep sets `{key}` itself. Fix: {OWNED[key]}")
    return key


def _rule(key: str) -> Key | None:
    """The lf-multilr rule ``key``'s values must follow, if any."""
    if key in CHECKED:
        return CHECKED[key]
    return Key(key, "language_model", BASE_RULES[key][0]) if key in BASE_RULES else None


def checked_number(key: str, text: str, argument: str) -> float | None:
    """``text`` checked like the run checks ``key`` (lf-multilr's keys, ``learning_rate``, ``weight_decay``);
    ``None`` for any other key."""
    rule = _rule(key)
    if rule is None:
        return None
    try:
        number = check_value(rule, text)
    except ConfigError as error:
        fix = error.fix if key in CHECKED else f"give a number >= 0 such as {BASE_RULES[key][1]}"
        raise argparse.ArgumentTypeError(f"`{argument}`: `{key}: {text}` is refused: {error.why}. Fix: {fix}") from None
    assert number is not None
    return number


def _grid_value(key: str, text: str, argument: str) -> GridValue:
    number = checked_number(key, text, argument)
    if number is not None:
        return number
    if INTEGER.fullmatch(text):
        return int(text)
    try:
        number = float(text)
    except ValueError:
        return text
    return number if math.isfinite(number) else text


def parse_set(argument: str) -> GridAxis:
    """``KEY=V1,V2,...`` (one ``--set``)."""
    key, listed = _axis(argument, f"write KEY=V1,V2,..., e.g. `{SET_EXAMPLE}`")
    items = [item.strip() for item in listed.split(",")]
    if not any(items):
        raise argparse.ArgumentTypeError(f"`{argument}` lists no value. Fix: list them, e.g. `--set {key}=1e-6,5e-6`")
    if not all(items):
        raise argparse.ArgumentTypeError(
            f"`{argument}` has an empty value between commas. Fix: remove the extra comma, e.g. `--set {key}=1e-6,5e-6`"
        )
    values = tuple(_grid_value(key, item, argument) for item in items)
    if all(isinstance(value, (int, float)) for value in values) and any(isinstance(v, float) for v in values):
        values = tuple(float(value) for value in values)  # one type per axis: 1 and 0.5 are both floats
    repeated = [value for i, value in enumerate(values) if value in values[:i]]
    if repeated:
        raise argparse.ArgumentTypeError(
            f"`{argument}` lists `{value_text(repeated[0])}` twice. Fix: list each value once"
        )
    return GridAxis(key, values)


def _bound(key: str, text: str, argument: str, which: str) -> float:
    number = checked_number(key, text, argument)
    if number is not None:
        return number
    try:
        number = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"`{argument}`: {which} `{text}` is not a number. Fix: write KEY=LOW:HIGH[:log], e.g. `{RANGE_EXAMPLE}`"
        ) from None
    if not math.isfinite(number):
        raise argparse.ArgumentTypeError(f"`{argument}`: {which} `{text}` is not a finite number. Fix: give one")
    return number


def parse_range(argument: str) -> RangeAxis:
    """``KEY=LOW:HIGH`` or ``KEY=LOW:HIGH:log`` (one ``--range``)."""
    fix = f"write KEY=LOW:HIGH or KEY=LOW:HIGH:log, e.g. `{RANGE_EXAMPLE}`"
    key, spec = _axis(argument, fix)
    parts = [part.strip() for part in spec.split(":")]
    if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] != "log"):
        raise argparse.ArgumentTypeError(f"`{argument}` is not LOW:HIGH or LOW:HIGH:log. Fix: {fix}")
    log = len(parts) == 3
    low, high = (_bound(key, text, argument, which) for text, which in zip(parts[:2], ("LOW", "HIGH"), strict=True))
    rule = _rule(key)
    whole = rule.kind in WHOLE_KINDS if rule else all(INTEGER.fullmatch(part) for part in parts[:2])
    if low > high:
        raise argparse.ArgumentTypeError(
            f"`{argument}`: LOW {parts[0]} is above HIGH {parts[1]}. "
            f"Fix: write the lower bound first: `--range {key}={parts[1]}:{parts[0]}{':log' if log else ''}`"
        )
    if low == high:
        raise argparse.ArgumentTypeError(
            f"`{argument}`: LOW and HIGH are both {parts[0]}, a range of one value. "
            f"Fix: give it as `{key}={parts[0]}`, or two different bounds"
        )
    if log and low <= 0:
        raise argparse.ArgumentTypeError(
            f"`{argument}`: `:log` samples on a log scale, which needs bounds > 0, and LOW is {parts[0]}. "
            f"Fix: give a LOW > 0 (e.g. `--range {key}={high / 1000:g}:{parts[1]}:log`), or drop `:log`"
        )
    return RangeAxis(key, low, high, log, whole)


def parse_override(argument: str) -> tuple[str, str]:
    """``KEY=VALUE`` (a plain override for every run)."""
    key, sep, value = argument.partition("=")
    fix = "write KEY=VALUE, e.g. `language_model_lr=1e-5`"
    if not sep:
        raise argparse.ArgumentTypeError(f"`{argument}` has no `=`. Fix: {fix}")
    key = _key(key.strip(), argument, fix)
    checked_number(key, value, argument)
    return key, value


def _whole(at_least: int, example: str) -> Any:
    def parse(text: str) -> int:
        if not INTEGER.fullmatch(text) or int(text) < at_least:
            raise argparse.ArgumentTypeError(f"`{text}` is not a whole number >= {at_least}. Fix: e.g. `{example}`")
        return int(text)

    return parse


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lf-multilr sweep",
        description="Search module learning rates with short `llamafactory-cli train` runs as Optuna trials: "
        "every combination of the --set values, and --trials TPE samples of the --range axes. The study lives in "
        "DIR/sweep.db (or --storage); run the same command again to go on, on this or other machines.",
    )
    parser.add_argument("config", type=Path, help="the training YAML (or JSON) of `llamafactory-cli train`")
    parser.add_argument("overrides", nargs="*", type=parse_override, metavar="key=value", help="for every run")
    parser.add_argument(
        "--set",
        dest="grid",
        action="append",
        default=[],
        type=parse_set,
        metavar="KEY=V1,V2",
        help="a key and its values; the grid is every combination of the --set axes",
    )
    parser.add_argument(
        "--range",
        dest="ranges",
        action="append",
        default=[],
        type=parse_range,
        metavar="KEY=LOW:HIGH[:log]",
        help="a numeric key for TPE to sample between LOW and HIGH (on a log scale with :log)",
    )
    parser.add_argument(
        "--trials",
        type=_whole(1, "--trials 20"),
        metavar="N",
        help=f"TPE trials of the --range axes (for each grid setting; default {DEFAULT_TRIALS})",
    )
    parser.add_argument(
        "--prune",
        action="store_true",
        help="successive halving: every setting trains to the first eval step and pauses there; the best third "
        "(see --reduction-factor) resume to eval_steps x 3, and so on up to max_steps; the rest stop (needs an eval "
        "set and max_steps)",
    )
    parser.add_argument(
        "--reduction-factor",
        type=_whole(2, "--reduction-factor 3"),
        metavar="N",
        help=f"--prune's rungs are N times apart and 1/N of each round goes on (default {DEFAULT_FACTOR})",
    )
    parser.add_argument("--workers", type=_whole(1, "--workers 2"), default=1, metavar="N", help="trials at once")
    parser.add_argument(
        "--storage",
        metavar="URL",
        help="the Optuna storage (default sqlite:///DIR/sweep.db); postgresql://... shares "
        "the study between machines running the same command",
    )
    parser.add_argument("--seed", type=_whole(0, "--seed 0"), metavar="S", help="seed of TPE's samples")
    parser.add_argument("--max-steps", type=_whole(1, "--max-steps 20"), metavar="N", help="max_steps of every run")
    parser.add_argument("--out", type=Path, metavar="DIR", help="the sweep's folder (default: output_dir + _sweep)")
    return parser


# The whole command


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


def _refuse_conflicts(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    grid: list[GridAxis] = args.grid
    ranges: list[RangeAxis] = args.ranges
    if not grid and not ranges:
        parser.error(
            f"nothing to sweep. Fix: add at least one --set KEY=V1,V2 or --range KEY=LOW:HIGH, e.g. `{SET_EXAMPLE}`"
        )
    for option, axes in (("--set", grid), ("--range", ranges)):
        keys = [axis.key for axis in axes]
        for key in keys:
            if keys.count(key) > 1:
                parser.error(f"argument {option}: `{key}` is given twice. Fix: give it in one `{option} {key}=...`")
    both = {axis.key for axis in grid} & {axis.key for axis in ranges}
    if both:
        key = sorted(both)[0]
        parser.error(f"argument --range: `{key}` is also a --set axis. Fix: keep it in one of the two")
    swept = {axis.key: "--set" for axis in grid} | {axis.key: "--range" for axis in ranges}
    for key, value in args.overrides:
        if key in swept:
            parser.error(
                f"argument key=value: `{key}={value}` fixes a key that {swept[key]} sweeps. Fix: remove one of the two"
            )
    if args.max_steps is not None and "max_steps" in [*swept, *(key for key, _ in args.overrides)]:
        parser.error("argument --max-steps: max_steps is also given as a key. Fix: keep one of the two")
    if args.trials is not None and not ranges:
        parser.error(
            f"argument --trials: {args.trials} trials of what? --trials counts TPE samples of --range axes, and there "
            f"is none. Fix: add a --range (e.g. `{RANGE_EXAMPLE}`), or drop --trials (the --set grid runs once)"
        )


def _refuse_unknown(parser: argparse.ArgumentParser, args: argparse.Namespace, config: Mapping[str, Any]) -> None:
    from .keys import KeysUnavailable, known_keys

    try:
        known = known_keys()
    except KeysUnavailable as error:
        parser.error(
            f"cannot list the config keys LLaMA-Factory accepts: {error}. "
            "Fix: check that `llamafactory-cli train` runs in this environment"
        )
    named = [(f"--set {a.key}=...", a.key) for a in args.grid] + [(f"--range {a.key}=...", a.key) for a in args.ranges]
    named += [(f"key=value `{key}={value}`", key) for key, value in args.overrides]
    named += [(f"config `{args.config}`", key) for key in config]
    for where, key in named:
        if key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=3)
            hint = f" (close: {', '.join(close)})" if close else ""
            parser.error(
                f"argument {where}: `{key}` is not a key LLaMA-Factory's parser or lf-multilr knows{hint}. "
                "Fix: correct its spelling, or remove it"
            )


def _typed(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def has_eval_set(values: Mapping[str, Any]) -> bool:
    """Whether a run with these values evaluates during training (an eval set and an eval strategy)."""
    val_size = values.get("val_size") or 0
    data = bool(values.get("eval_dataset")) or (isinstance(val_size, (int, float)) and val_size > 0)
    return data and str(values.get("eval_strategy", "no")).lower() in ("steps", "epoch")


def _eval_steps(values: Mapping[str, Any]) -> int | None:
    steps = values.get("eval_steps")
    if str(values.get("eval_strategy")).lower() != "steps" or not isinstance(steps, int) or steps < 1:
        return None
    return steps


def _max_steps(values: Mapping[str, Any]) -> int | None:
    steps = values.get("max_steps")
    return steps if isinstance(steps, int) and not isinstance(steps, bool) and steps > 0 else None


def _refuse_halving(parser: argparse.ArgumentParser, args: argparse.Namespace, values: Mapping[str, Any]) -> None:
    """What successive halving needs of every run: the same eval steps and max_steps (the rungs), a checkpoint at
    each rung, and a rung below max_steps."""
    swept = {axis.key for axis in [*args.grid, *args.ranges]} & {"eval_steps", "eval_strategy", "max_steps"}
    if swept:
        parser.error(
            f"argument --prune: `{sorted(swept)[0]}` is swept, but the rungs of successive halving are steps that "
            "every setting shares. Fix: give it once (in the config or as key=value), or drop --prune"
        )
    eval_steps, max_steps = _eval_steps(values), _max_steps(values)
    if eval_steps is None:
        parser.error(
            f"argument --prune: eval_steps is `{values.get('eval_steps')}`; the rungs are multiples of it, so it "
            "must be a whole number of steps. Fix: e.g. `eval_steps=10`"
        )
    if max_steps is None:
        parser.error(
            f"argument --prune: the runs of `{args.config}` have no max_steps (`{values.get('max_steps')}`); "
            "successive halving runs every setting on the schedule of max_steps and ends its rounds there. "
            "Fix: e.g. `--max-steps 100`"
        )
    if eval_steps >= max_steps:
        parser.error(
            f"argument --prune: eval_steps {eval_steps} is not below max_steps {max_steps}, so there is no rung to "
            f"prune at. Fix: a smaller eval_steps (e.g. `eval_steps={max(1, max_steps // 10)}`), or drop --prune"
        )
    if str(values.get("save_strategy", "")).lower() == "best" or values.get("save_only_model") is True:
        key = "save_strategy: best" if str(values.get("save_strategy", "")).lower() == "best" else "save_only_model"
        parser.error(
            f"argument --prune: `{key}` keeps the runs from saving the full checkpoint they resume from at each "
            "rung. Fix: remove it from the runs, or drop --prune"
        )


def _refuse_prune(parser: argparse.ArgumentParser, args: argparse.Namespace, values: Mapping[str, Any]) -> None:
    if lf_multilr.disabled():
        parser.error(
            "argument --prune: LF_MULTILR_DISABLE is set, which switches lf-multilr off in the runs, and with it the "
            "eval losses they report to the pruner. Fix: unset LF_MULTILR_DISABLE, or drop --prune"
        )
    from itertools import product

    grid: list[GridAxis] = args.grid
    for combination in product(*(axis.values for axis in grid)):
        setting = {axis.key: value for axis, value in zip(grid, combination, strict=True)}
        if not has_eval_set({**values, **setting}):
            where = f" with {', '.join(f'{k}={value_text(v)}' for k, v in setting.items())}" if setting else ""
            parser.error(
                f"argument --prune: the runs of `{args.config}`{where} have no eval loss to prune on: they need an "
                "eval set (`val_size` or `eval_dataset`) and `eval_strategy: steps`. "
                "Fix: add e.g. `val_size=0.1 eval_strategy=steps eval_steps=10`, or drop --prune"
            )
    _refuse_halving(parser, args, values)


def visible_devices(environ: Mapping[str, str]) -> list[str]:
    """The GPUs the runs could use: ``CUDA_VISIBLE_DEVICES`` when set, else those ``nvidia-smi -L`` lists."""
    if "CUDA_VISIBLE_DEVICES" in environ:
        listed = [d.strip() for d in environ["CUDA_VISIBLE_DEVICES"].split(",") if d.strip()]
        return [] if listed[:1] == ["-1"] else listed
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        lines = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=30, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, line in enumerate(line for line in lines.splitlines() if line.startswith("GPU "))]


def device_shares(workers: int, devices: Sequence[str]) -> tuple[str | None, ...]:
    """Each worker's ``CUDA_VISIBLE_DEVICES``: the visible GPUs split evenly, in order; without GPUs, no share."""
    if not devices:
        return (None,) * workers
    if len(devices) % workers:
        raise ValueError(
            f"`--workers {workers}` cannot split the {len(devices)} visible GPUs ({','.join(devices)}) evenly. "
            f"Fix: give a --workers that divides {len(devices)} (e.g. "
            f"{', '.join(str(n) for n in range(1, len(devices) + 1) if len(devices) % n == 0)}), "
            "or set CUDA_VISIBLE_DEVICES to the GPUs to use"
        )
    size = len(devices) // workers
    return tuple(",".join(devices[i * size : (i + 1) * size]) for i in range(workers))


_PASSWORD = re.compile(r"(://[^:/@]*:)[^@]*@")


def shown_url(url: str) -> str:
    """A storage URL to print or record: its password masked (``user:***@``), also in a URL that does not parse."""
    return _PASSWORD.sub(r"\1***@", url)


def storage_url(parser: argparse.ArgumentParser, given: str | None, out: Path) -> str:
    if given is None:
        return f"sqlite:///{out / 'sweep.db'}"
    scheme = given.split(":", 1)[0].split("+", 1)[0]
    if scheme not in ("sqlite", "postgresql") or "://" not in given:
        parser.error(
            f"argument --storage: `{shown_url(given)}` is not an sqlite:/// or postgresql:// URL; the sweep's "
            "workers claim their trials under a lock these two databases give. Fix: e.g. `--storage postgresql://user:pw@host/db`"
        )
    if (scheme == "sqlite" and given.rstrip("/") in ("sqlite:", "sqlite:/", "sqlite://")) or ":memory:" in given:
        parser.error(
            f"argument --storage: `{shown_url(given)}` is an in-memory database, which the runs cannot reach. "
            "Fix: give a file, e.g. `sqlite:///sweep.db`, or leave --storage out for DIR/sweep.db"
        )
    return given


def parse_args(argv: Sequence[str]) -> Sweep:
    """Check every argument before anything runs; argparse prints what is wrong and exits 2 otherwise."""
    parser = _parser()
    args = parser.parse_intermixed_args(argv)
    _refuse_conflicts(parser, args)
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
    _refuse_unknown(parser, args, config)
    overrides = [f"{key}={value}" for key, value in args.overrides]
    overrides += [] if args.max_steps is None else [f"max_steps={args.max_steps}"]
    values = {**config, **{key: _typed(value) for key, value in (o.split("=", 1) for o in overrides)}}
    if args.prune:
        _refuse_prune(parser, args, values)
    elif args.reduction_factor is not None:
        parser.error("argument --reduction-factor: it sets how --prune prunes. Fix: add --prune, or drop it")
    try:
        devices = device_shares(args.workers, visible_devices(os.environ))
    except ValueError as error:
        parser.error(f"argument --workers: {error}")
    output_dir = Path(os.path.abspath(str(config.get("output_dir", "."))))
    out = Path(os.path.abspath(args.out or output_dir.with_name(output_dir.name + "_sweep")))
    swept = {axis.key for axis in [*args.grid, *args.ranges]}
    return Sweep(
        config=args.config,
        config_text=text,
        grid=tuple(args.grid),
        ranges=tuple(args.ranges),
        trials=(args.trials or DEFAULT_TRIALS) if args.ranges else 1,
        overrides=tuple(overrides),
        out=out,
        storage=storage_url(parser, args.storage, out),
        study=out.name,
        prune=args.prune,
        eval_steps=None if swept & {"eval_steps", "eval_strategy"} else _eval_steps(values),
        max_steps=None if "max_steps" in swept else _max_steps(values),
        reduction_factor=args.reduction_factor or DEFAULT_FACTOR,
        workers=args.workers,
        devices=devices,
        seed=args.seed,
        cli=cli,
    )
