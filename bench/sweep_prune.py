"""`lf-multilr sweep --prune` against the full grid: training steps and wall time spent, and whether the pruned search
picks the grid's best setting, at one or more lengths of the runs.

One 9-setting grid (3 language-model LRs x 3 vision-tower LRs) of the tiny Qwen2-VL from ``tools/tiny.py``, full
fine-tuning, is swept through the real CLI, each trial a real ``llamafactory-cli train`` run: once with every setting
trained to ``--max-steps``, then with ``--prune`` (synchronous successive halving: rounds end at ``eval_steps * 3**k``
steps, then at ``--max-steps``; each round's best third resume from their checkpoints), with the values listed in
ascending and again in descending order (the rounds compare every setting of a round at once, so the order should
not matter). A trial's steps are the last training step its run reached (a resumed run does not repeat steps). Each
pruned trial's eval losses are also compared with the full grid's run of the same setting at the same steps: resumed
runs that go on exactly as uninterrupted ones give the same numbers.

The data are those of a real fine-tune of a few hundred steps, which sees mostly new samples, not hundreds of epochs
over a handful: ``tools/tiny.build_sweep_dataset`` draws 240 images (4 shapes x 6 colours x 2 sizes x 5 places) and
asks each four kinds of question (two phrasings each); 12 held-out images and their 48 questions are the eval set,
the other 912 conversations the training set, so a full run at the default length (batch 2) sees each training
sample about four times. The grid's eval losses of every setting at the rungs are printed too: whether the ranking at
an early rung predicts the one at the end is what successive halving relies on.

Pruning pays where training outweighs a run's start-up (each resumed segment starts a run again): each length in
``--max-steps`` (rungs at a ninth and a third of it) is measured in the same command, and reported with its
multiple, a full run's training time (``train_runtime``) over its start-up (the rest of the run's wall time), read
from the full grid's runs. The goal, at a multiple of about 5 (a GPU fine-tune of a few hundred steps): the same best
setting for at most 40% of the grid's steps and at most 60% of its wall time.

Usage: OMP_NUM_THREADS=1 python bench/sweep_prune.py [--max-steps 2250 45] [--orders ascending descending] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lf_multilr_sweep import halving  # noqa: E402
from lf_multilr_sweep.halving import DEFAULT_FACTOR  # noqa: E402
from tools import tiny  # noqa: E402
from tools.testing import clean_env, write_config  # noqa: E402

FAMILY = "qwen2_vl"
LLM_LRS, VISION_LRS = ("1e-4", "1e-3", "1e-2"), ("1e-5", "1e-4", "1e-3")
KEYS = ("language_model_lr", "vision_tower_lr")
GOAL, WALL_GOAL = 0.40, 0.60
TRAIN, EVAL, BATCH = "tiny_sweep_train", "tiny_sweep_eval", 2


def grid(descending: bool) -> list[str]:
    order = reversed if descending else list
    return [
        "--set",
        f"language_model_lr={','.join(order(LLM_LRS))}",
        "--set",
        f"vision_tower_lr={','.join(order(VISION_LRS))}",
    ]


def sweep(
    config: Path, out: Path, env: dict[str, str], *extra: str, descending: bool = False
) -> tuple[list[optuna.trial.FrozenTrial], float]:
    """Run the sweep; its trials and wall seconds."""
    cli = str(Path(sys.executable).parent / "lf-multilr")
    command = [cli, "sweep", str(config), *grid(descending), *extra, "--out", str(out)]
    start = time.monotonic()
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    seconds = time.monotonic() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
    return load(out), seconds


def setting(trial: optuna.trial.FrozenTrial) -> str:
    return " ".join(f"{key}={trial.params[key]!r}" for key in KEYS)


def summary(trials: list[optuna.trial.FrozenTrial], seconds: float) -> dict[str, Any]:
    complete = [t for t in trials if t.state.name == "COMPLETE" and t.value is not None]
    best = min(complete, key=lambda t: t.value or float("inf"))
    return {
        "steps": sum(int(t.user_attrs["steps"]) for t in trials),
        "complete": len(complete),
        "pruned": sum(t.state.name == "PRUNED" for t in trials),
        "pruned_at": sorted(int(t.user_attrs["pruned_at_step"]) for t in trials if t.state.name == "PRUNED"),
        "best": setting(best),
        "best_value": best.value,
        "seconds": round(seconds, 1),
    }


def multiple(trials: list[optuna.trial.FrozenTrial]) -> float:
    """A full run's training time over its start-up, over the grid's runs: ``train_runtime`` (training with its
    evaluations) from LLaMA-Factory's ``all_results.json`` against the run's wall time the sweep recorded."""
    training = [json.loads((Path(t.user_attrs["run_dir"]) / "all_results.json").read_text())["train_runtime"]
                for t in trials]  # fmt: skip
    total = sum(float(t.user_attrs["seconds"]) for t in trials)
    return round(sum(training) / (total - sum(training)), 2)


def largest_difference(pruned: list[optuna.trial.FrozenTrial], full: list[optuna.trial.FrozenTrial]) -> float:
    """The largest difference between a pruned trial's eval loss and the full grid's run of its setting, over every
    step both reported."""
    by_setting = {setting(t): t.intermediate_values for t in full}
    return max(abs(loss - by_setting[setting(t)][step]) for t in pruned for step, loss in t.intermediate_values.items())


def by_rung(trials: list[optuna.trial.FrozenTrial], eval_steps: int, max_steps: int) -> dict[str, dict[int, float]]:
    """The full grid's eval loss of every setting at the pruned sweep's rungs (``eval_steps * 3**k``, then
    ``max_steps``): does the ranking at an early rung predict the one at the end?"""
    rungs = [*halving.targets(eval_steps, max_steps, 3)]
    return {
        setting(t): {step: round(t.intermediate_values[step], 4) for step in rungs if step in t.intermediate_values}
        for t in trials
    }


def load(out: Path) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=out.name, storage=f"sqlite:///{out / 'sweep.db'}").trials


@dataclass(frozen=True)
class Setup:
    """Where the sweeps run: their folder, the tiny model and data, the runs' environment."""

    work: Path
    model: Path
    data: Path
    env: dict[str, str]


def measure(setup: Setup, max_steps: int, orders: list[str], factors: list[int]) -> dict[str, Any]:
    """The full grid and the pruned sweeps of runs of ``max_steps`` steps, an evaluation every ninth of them."""
    work, model, data, env = setup.work, setup.model, setup.data, setup.env
    eval_steps = max(1, max_steps // 9)
    evals = {"eval_dataset": EVAL, "eval_strategy": "steps", "eval_steps": eval_steps, "per_device_eval_batch_size": 8}
    here = work / f"steps_{max_steps}"
    config, _ = write_config(
        here / "config",
        model,
        data,
        FAMILY,
        max_steps=max_steps,
        per_device_train_batch_size=BATCH,
        dataset=TRAIN,
        max_samples=None,
        **evals,
    )
    full_trials, full_seconds = sweep(config, here / "full", env)
    full = summary(full_trials, full_seconds)
    full["multiple"] = multiple(full_trials)
    full["epochs"] = round(max_steps * BATCH / len(json.loads((data / f"{TRAIN}.json").read_text())), 2)
    full["eval_loss_by_rung"] = by_rung(full_trials, eval_steps, max_steps)
    ranking = [setting(t) for t in sorted(full_trials, key=lambda t: t.value or float("inf"))]
    searches = {"full grid": full}
    for factor, order in ((factor, order) for factor in factors for order in orders):
        name = f"pruned_{order}" if factor == DEFAULT_FACTOR else f"pruned_{order}_factor_{factor}"
        prune = ("--prune", "--reduction-factor", str(factor))
        trials, seconds = sweep(config, here / name, env, *prune, descending=order == "descending")
        pruned = summary(trials, seconds)
        pruned["steps_ratio"] = round(pruned["steps"] / full["steps"], 3)
        pruned["wall_ratio"] = round(pruned["seconds"] / full["seconds"], 3)
        pruned["same_best"] = pruned["best"] == full["best"]
        pruned["best_rank_in_full_grid"] = ranking.index(pruned["best"]) + 1
        pruned["goal_met"] = pruned["same_best"] and pruned["steps_ratio"] <= GOAL and pruned["wall_ratio"] <= WALL_GOAL
        pruned["largest_eval_loss_difference_from_the_full_grid"] = largest_difference(trials, full_trials)
        factor_text = "" if factor == DEFAULT_FACTOR else f" --reduction-factor {factor},"
        searches[f"--prune,{factor_text} values {order}"] = pruned
    return {"max_steps": max_steps, "eval_steps": eval_steps, **searches}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--max-steps", type=int, nargs="+", default=[2250, 45], help="the runs' lengths to measure")
    parser.add_argument("--orders", nargs="+", default=["ascending", "descending"], choices=["ascending", "descending"])
    parser.add_argument("--work", type=Path, help="a folder for the model, data and sweeps (default: a temporary one)")
    parser.add_argument(
        "--factors", type=int, nargs="+", default=[DEFAULT_FACTOR], help="the reduction factors to prune with"
    )
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="lf-multilr-sweep-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    (work / "hf_home").mkdir(exist_ok=True)
    setup = Setup(
        work,
        tiny.build_model(FAMILY, work / "model"),
        tiny.build_sweep_dataset(work / "data"),
        clean_env(work / "hf_home"),
    )
    results = []
    for max_steps in args.max_steps:
        results.append(measure(setup, max_steps, args.orders, args.factors))
        print(json.dumps(results[-1], indent=2), flush=True)
    print()
    print(
        "| max steps (multiple) | search | trials complete / pruned | training steps | of the grid's | wall time | "
        "of the grid's | best setting (rank in the full grid) |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---|")
    for result in results:
        full = result["full grid"]
        for name, row in result.items():
            if not isinstance(row, dict):
                continue
            print(
                f"| {result['max_steps']} ({full['multiple']}) | {name} | {row['complete']} / {row['pruned']} | "
                f"{row['steps']} | {row['steps'] / full['steps']:.1%} | {row['seconds']:.0f} s | "
                f"{row['seconds'] / full['seconds']:.1%} | {row['best']}, {row['best_value']:.4f} "
                f"({row.get('best_rank_in_full_grid', 1)}) |"
            )
    for result in results:
        losses = result["full grid"]["eval_loss_by_rung"]
        rungs = sorted({step for row in losses.values() for step in row})
        print(f"\nThe full grid's eval loss (rank) at the rungs, {result['max_steps']} steps:\n")
        print("| setting | " + " | ".join(f"step {step}" for step in rungs) + " |")
        print("|---|" + "---:|" * len(rungs))
        ranks = {
            step: sorted(losses, key=lambda name, step=step: losses[name].get(step, float("inf"))) for step in rungs
        }
        for name in sorted(losses, key=lambda name: losses[name].get(rungs[-1], float("inf"))):
            cells = [f"{losses[name][step]:.4f} ({ranks[step].index(name) + 1})" for step in rungs]
            print(f"| `{name}` | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
