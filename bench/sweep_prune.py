"""`lf-multilr sweep --prune` against the full grid: training steps spent, and whether the pruned search picks the
grid's best setting.

One 9-setting grid (3 language-model LRs x 3 vision-tower LRs) of the tiny Qwen2-VL from ``tools/tiny.py``, full
fine-tuning with an eval set of two samples, is swept through the real CLI, each trial a real ``llamafactory-cli
train`` run: once with every setting trained to ``--max-steps``, then with ``--prune`` (synchronous successive
halving: rounds end at ``eval_steps * 3**k`` steps, then at ``--max-steps``; each round's best third resume from
their checkpoints), with the values listed in ascending and again in descending order (the rounds compare every
setting of a round at once, so the order should not matter). A trial's steps are the last training step its run
reached (a resumed run does not repeat steps). The goal: the same best setting for at most 40% of the full grid's
steps. Each pruned trial's eval losses are also compared with the full grid's run of the same setting at the same
steps: resumed runs that go on exactly as uninterrupted ones give the same numbers.

Usage: OMP_NUM_THREADS=1 python bench/sweep_prune.py [--max-steps 30] [--eval-steps 5] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import optuna

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tools import tiny  # noqa: E402
from tools.testing import clean_env, write_config  # noqa: E402

FAMILY = "qwen2_vl"
LLM_LRS, VISION_LRS = ("1e-4", "1e-3", "1e-2"), ("1e-5", "1e-4", "1e-3")
KEYS = ("language_model_lr", "vision_tower_lr")
GOAL = 0.40


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


def largest_difference(pruned: list[optuna.trial.FrozenTrial], full: list[optuna.trial.FrozenTrial]) -> float:
    """The largest difference between a pruned trial's eval loss and the full grid's run of its setting, over every
    step both reported."""
    by_setting = {setting(t): t.intermediate_values for t in full}
    return max(abs(loss - by_setting[setting(t)][step]) for t in pruned for step, loss in t.intermediate_values.items())


def load(out: Path) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=out.name, storage=f"sqlite:///{out / 'sweep.db'}").trials


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--max-steps", type=int, default=30)
    parser.add_argument("--eval-steps", type=int, default=5)
    parser.add_argument("--work", type=Path, help="a folder for the model, data and sweeps (default: a temporary one)")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="lf-multilr-sweep-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    model, data = tiny.build_model(FAMILY, work / "model"), tiny.build_dataset(work / "data")
    evals = {"val_size": 0.2, "eval_strategy": "steps", "eval_steps": args.eval_steps, "per_device_eval_batch_size": 2}
    config, _ = write_config(work / "config", model, data, FAMILY, max_steps=args.max_steps, **evals)
    (work / "hf_home").mkdir(exist_ok=True)
    env = clean_env(work / "hf_home")

    full_trials, full_seconds = sweep(config, work / "full", env)
    full = summary(full_trials, full_seconds)
    ranking = [setting(t) for t in sorted(full_trials, key=lambda t: t.value or float("inf"))]
    searches = {"full grid": full}
    for order, descending in (("ascending", False), ("descending", True)):
        trials, seconds = sweep(config, work / f"pruned_{order}", env, "--prune", descending=descending)
        pruned = summary(trials, seconds)
        pruned["steps_ratio"] = round(pruned["steps"] / full["steps"], 3)
        pruned["same_best"] = pruned["best"] == full["best"]
        pruned["best_rank_in_full_grid"] = ranking.index(pruned["best"]) + 1
        pruned["goal_met"] = pruned["same_best"] and pruned["steps_ratio"] <= GOAL
        pruned["largest_eval_loss_difference_from_the_full_grid"] = largest_difference(trials, full_trials)
        searches[f"--prune, values {order}"] = pruned
    print(json.dumps({"max_steps": args.max_steps, "eval_steps": args.eval_steps, **searches}, indent=2))
    print()
    print(
        "| search | trials complete / pruned | training steps | of the grid's | wall time | best setting "
        "(rank in the full grid) |"
    )
    print("|---|---:|---:|---:|---:|---|")
    for name, row in searches.items():
        share = f"{row['steps'] / full['steps']:.1%}"
        rank = row.get("best_rank_in_full_grid", 1)
        print(
            f"| {name} | {row['complete']} / {row['pruned']} | {row['steps']} | {share} | {row['seconds']:.0f} s | "
            f"{row['best']}, {row['best_value']:.4f} ({rank}) |"
        )


if __name__ == "__main__":
    main()
