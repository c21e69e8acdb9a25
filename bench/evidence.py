"""Do module learning rates change the outcome? A reproducible experiment, offline, with real LLaMA-Factory runs.

1. Pretrain, on generated pictures, a LLaVA CLIP vision tower with a linear head on task A (every cell's shape and
   colour) and a Llama language model on text (captions and task-B questions asked about them); compose them with
   a random projector into a LLaVA checkpoint folder (``bench/evidence_model.py``).
2. Align the projector with ``llamafactory-cli train`` on captions, vision tower and language model frozen
   (LLaVA's stage 1).
3. Fine-tune on task B (how many shapes; the colour or the shape in a cell; whether two cells' shapes share their
   colour: questions about new pictures, ``bench/evidence_data.py``) with ``llamafactory-cli train``
   under several settings (one LR for every module; the vision tower 10x lower; the vision tower frozen; the best
   setting ``lf-multilr sweep`` finds on a validation split), several seeds each.
4. Measure each run: task-B teacher-forced answer accuracy on held-out questions about held-out pictures
   (``bench/evidence_lf.py``), and task-A retention, the pretraining head's accuracy on the run's vision tower.

Writes ``OUT/evidence.json``, ``OUT/evidence.md`` (the table), ``OUT/evidence_tradeoff.png`` (accuracy against
retention) and ``OUT/evidence_grad_norms.png`` (each module's logged ``grad_norm/<module>`` by step). Generated data
and pretrained checkpoints are cached in ``--cache`` (default ``OUT/cache``) under a hash of what made them.

Usage: python bench/evidence.py --out DIR [--quick | --profile gpu] [--jobs 2] [--cache DIR] [--check]
``--check`` runs every stage of the profile for two steps on a few samples (set-up path only; no results).
``lf-multilr sweep`` is used through the command line and the ``sweep.csv`` columns (``rank``, the swept keys,
``final_eval_loss``) that both its grid version and its Optuna version have.
Not order-sensitive (bench/order.py), nor are its evidence_*.py parts: accuracies and retention (seeded), not times.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
# One thread for torch here as in every training run (tools/testing.py's clean_env): with two threads on two shared
# cores a pretraining step took ten times longer.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402
import yaml  # noqa: E402

from bench import evidence_data as data  # noqa: E402
from bench import evidence_model as parts  # noqa: E402
from bench import evidence_plots as plots  # noqa: E402
from tools.testing import clean_env  # noqa: E402

BIN = Path(sys.executable).parent
DATASETS = ("captions", "train", "val", "test")
SPLIT_SEEDS = {"captions": 21, "train": 22, "val": 23, "test": 24}
UNIFORM, LOWER, FROZEN, SWEPT = "uniform", "vision_lr_0.1x", "vision_frozen", "sweep_best"


@dataclass(frozen=True)
class Profile:
    """Sizes, steps, LRs, settings and seeds of one version of the experiment."""

    sizes: parts.Sizes
    lr: float = 1e-3  # task B: the language model's LR, and every module's in `uniform`
    steps: int = 300
    batch: int = 16
    align_lr: float = 2e-3
    align_steps: int = 200
    logging_steps: int = 5
    seeds: tuple[int, ...] = (0, 1, 2)
    sweep: tuple[str, ...] = ()  # the `--set` arguments of `lf-multilr sweep`; none: no sweep_best setting
    sweep_steps: int | None = None  # `--max-steps` of the sweep's trials (None: `steps`)
    extra: Mapping[str, Any] = field(default_factory=dict)  # more keys for every LLaMA-Factory run (bf16, ...)


#: Sized for time on the shared 2-core machine, where one `llamafactory-cli train` start costs 20-35 s before its
#: first step and a task-B step about 0.3 s. Seen there under another suite's load (2026-12-01): `quick` 271 s
#: (7 trainings), `full` 31 min (17 trainings: the sweep's 4 trials in one slot while the fixed settings train in
#: the other). `gpu` is sized for one device call of under 10 minutes (it has not run on a GPU).
PROFILES = {
    "quick": Profile(
        parts.Sizes(
            vision_steps=250,
            text_steps=80,
            caption_scenes=200,
            train_scenes=300,
            val_scenes=50,
            test_scenes=100,
            retention_scenes=300,
        ),
        steps=50,
        align_steps=30,
        seeds=(0, 1),
    ),
    "full": Profile(
        parts.Sizes(),
        steps=200,
        align_steps=150,
        seeds=(0, 1, 2),
        sweep=("vision_tower_lr=1e-3,3e-4,1e-4,3e-5",),
    ),
    "gpu": Profile(
        parts.Sizes(
            image=224,
            grid=4,
            vision_hidden=384,
            vision_layers=6,
            vision_heads=6,
            text_hidden=512,
            text_layers=6,
            vision_steps=2000,
            text_steps=2000,
            text_scenes=10000,
            batch=128,
            pretrain_lr=5e-4,
            caption_scenes=4000,
            train_scenes=4000,
            val_scenes=250,
            test_scenes=1000,
            retention_scenes=1000,
        ),
        lr=2e-4,
        steps=600,
        batch=32,
        align_lr=1e-3,
        align_steps=300,
        logging_steps=20,
        seeds=(0, 1, 2),
        sweep=("vision_tower_lr=2e-4,6e-5,2e-5,6e-6",),
        extra={"bf16": True, "preprocessing_num_workers": 4},
    ),
}


def settings(profile: Profile) -> dict[str, dict[str, Any]]:
    """The fixed settings: module keys (and freeze flags) on top of the task-B config."""
    return {
        UNIFORM: {},
        LOWER: {"vision_tower_lr": profile.lr / 10},
        FROZEN: {"freeze_vision_tower": True},
    }


def checked(profile: Profile) -> Profile:
    """``--check``: the profile's sizes, two steps of everything, a few samples."""
    sizes = replace(
        profile.sizes,
        batch=4,  # the models keep their sizes; small batches keep the gpu profile's check minutes long on a CPU
        vision_steps=2,
        text_steps=2,
        text_scenes=8,
        caption_scenes=8,
        train_scenes=8,
        val_scenes=4,
        test_scenes=4,
        retention_scenes=8,
    )
    first = [axis.split(",")[0] for axis in profile.sweep]
    # On a CPU stand-in (the set-up check of bench/gpu_evidence.sh): fp32, since bf16 on CPU needs use_cpu.
    extra = {k: v for k, v in profile.extra.items() if k != "bf16" or torch.cuda.is_available()}
    return replace(
        profile,
        sizes=sizes,
        steps=2,
        batch=2,
        align_steps=2,
        logging_steps=1,
        seeds=profile.seeds[:1],
        sweep=first,
        sweep_steps=None,
        extra=extra,
    )


def digest(*parts_: Any) -> str:
    return hashlib.sha256(json.dumps(parts_, sort_keys=True, default=str).encode()).hexdigest()[:12]


def run(command: Sequence[str], log: Path, env: Mapping[str, str]) -> float:
    """Run ``command`` with its output in ``log``; its wall seconds. A failure stops the experiment."""
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    with log.open("w") as handle:
        done = subprocess.run(list(command), stdout=handle, stderr=subprocess.STDOUT, env=dict(env), check=False)
    if done.returncode != 0:
        tail = "\n".join(log.read_text().splitlines()[-30:])
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}); the end of {log}:\n{tail}")
    return time.monotonic() - start


# 1. Data and pretrained parts ----------------------------------------------------------------------------------


def build_data(sizes: parts.Sizes, folder: Path) -> Path:
    splits = {
        "captions": data.caption_split(SPLIT_SEEDS["captions"], sizes.caption_scenes, sizes.grid),
        "train": data.question_split(SPLIT_SEEDS["train"], sizes.train_scenes, sizes.questions_per_scene, sizes.grid),
        "val": data.question_split(SPLIT_SEEDS["val"], sizes.val_scenes, sizes.questions_per_scene, sizes.grid),
        "test": data.question_split(SPLIT_SEEDS["test"], sizes.test_scenes, sizes.questions_per_scene, sizes.grid),
    }
    for name, split in splits.items():
        data.write_split(split, f"evidence_{name}", folder, sizes.image)
    data.write_dataset_info(folder, [f"evidence_{name}" for name in DATASETS])
    return folder


def pretrain(sizes: parts.Sizes, folder: Path) -> dict[str, Any]:
    """The base checkpoint (``folder/base``), the task-A head (``folder/head.pt``) and what pretraining reached."""
    from bench.evidence_lf import text_encoder

    start = time.monotonic()
    processor = parts.processor_for(sizes)
    tower, linear = parts.pretrain_vision(sizes, processor)
    retention_pixels, retention_labels = parts.retention_set(sizes, processor)
    task_a = parts.cell_accuracy(tower, linear, retention_pixels, retention_labels, sizes.grid)
    print(f"  task A accuracy of the pretrained tower (held-out pictures): {task_a:.4f}", flush=True)
    base_config, _ = parts.tiny.llava_parts()
    text_config = parts.text_config(sizes, base_config.text_config)
    rows = parts.text_sequences(text_encoder(processor.tokenizer), sizes)
    text = parts.pretrain_text(sizes, text_config, rows)
    parts.compose(sizes, tower, text, processor, folder / "base")
    torch.save(linear.state_dict(), folder / "head.pt")
    return {"task_a_accuracy": task_a, "seconds": round(time.monotonic() - start, 1)}


def cached(folder: Path, build: Any) -> dict[str, Any]:
    """``build(folder)`` once (its result kept in ``folder/done.json``, written last); then read from there. A folder
    without ``done.json`` (an interrupted build) is built again from scratch."""
    done = folder / "done.json"
    if done.is_file():
        return json.loads(done.read_text())
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    result = build(folder) or {}
    done.write_text(json.dumps(result, indent=2) + "\n")
    return result


# 2. and 3. LLaMA-Factory runs ----------------------------------------------------------------------------------


def common(profile: Profile, model: Path, data_dir: Path, dataset: str) -> dict[str, Any]:
    return {
        "model_name_or_path": str(model),
        "stage": "sft",
        "do_train": True,
        "finetuning_type": "full",
        "dataset": dataset,
        "dataset_dir": str(data_dir),
        "template": "llava",
        "default_system": "",
        "cutoff_len": parts.cutoff(profile.sizes),
        "overwrite_cache": True,
        "preprocessing_num_workers": 1,
        "per_device_train_batch_size": profile.batch,
        "lr_scheduler_type": "cosine",
        "warmup_ratio": 0.05,
        "weight_decay": 0.01,
        "logging_steps": profile.logging_steps,
        "save_strategy": "no",
        "report_to": "none",
        "seed": 0,
        **profile.extra,
    }


def align_config(profile: Profile, base: Path, data_dir: Path, out: Path) -> dict[str, Any]:
    """Stage 2: only the projector trains, on captions."""
    return {
        **common(profile, base, data_dir, "evidence_captions"),
        "freeze_vision_tower": True,
        "freeze_language_model": True,
        "freeze_multi_modal_projector": False,
        "learning_rate": profile.align_lr,
        "max_steps": profile.align_steps,
        "output_dir": str(out),
    }


def task_config(profile: Profile, aligned: Path, data_dir: Path) -> dict[str, Any]:
    """Stage 3 without an output folder (``lf-multilr sweep`` sets each trial's): everything trains at ``lr``
    unless a setting says otherwise; the validation split is evaluated after training."""
    return {
        **common(profile, aligned, data_dir, "evidence_train"),
        "eval_dataset": "evidence_val",
        "do_eval": True,
        "per_device_eval_batch_size": 32,
        "freeze_vision_tower": False,
        "freeze_multi_modal_projector": False,
        "learning_rate": profile.lr,
        "max_steps": profile.steps,
    }


def write_yaml(path: Path, config: Mapping[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(dict(config), sort_keys=False))
    return path


def overrides(values: Mapping[str, Any]) -> list[str]:
    return [f"{key}={str(value).lower() if isinstance(value, bool) else value}" for key, value in values.items()]


def align(profile: Profile, base: Path, data_dir: Path, folder: Path, env: Mapping[str, str]) -> dict[str, Any]:
    """Stage 2 into ``folder/model`` (its config and log next to it)."""
    config = write_yaml(folder / "align.yaml", align_config(profile, base, data_dir, folder / "model"))
    seconds = run([str(BIN / "llamafactory-cli"), "train", str(config)], folder / "align.log", env)
    return {"seconds": round(seconds, 1)}


def best_row(rows: Sequence[Mapping[str, str]]) -> Mapping[str, str]:
    """The row of ``sweep.csv`` with the lowest final eval loss. Both sweeps write ``rank``, the swept keys and
    ``final_eval_loss`` (the grid sweep of main and the Optuna sweep alike); a failed or pruned trial leaves the loss
    empty or is not ranked first, so the lowest finite final eval loss is the setting both call best."""
    finished = []
    for row in rows:
        try:
            loss = float(row.get("final_eval_loss") or "nan")
        except ValueError:
            continue
        if math.isfinite(loss):
            finished.append((loss, int(row["rank"]), row))
    if not finished:
        raise SystemExit("lf-multilr sweep: no trial finished with an eval loss (see its sweep.csv)")
    return min(finished, key=lambda item: item[:2])[2]


def sweep(profile: Profile, config: Path, out: Path, env: Mapping[str, str]) -> dict[str, Any]:
    """``lf-multilr sweep`` over ``profile.sweep`` on the validation split (only its command line, which both the
    grid sweep and the Optuna sweep take): the best setting's keys by final eval loss, every trial's row of
    ``sweep.csv``, the wall seconds."""
    sets = [arg for axis in profile.sweep for arg in ("--set", axis)]
    steps = ["--max-steps", str(profile.sweep_steps)] if profile.sweep_steps else []
    command = [str(BIN / "lf-multilr"), "sweep", str(config), *sets, *steps, "--out", str(out)]
    seconds = run(command, out.parent / "sweep.log", env)
    with (out / "sweep.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    keys = [axis.split("=")[0] for axis in profile.sweep]
    best = best_row(rows)
    table = [{k: r.get(k, "") for k in ("rank", *keys, "final_eval_loss")} for r in rows]
    return {"best": {key: float(best[key]) for key in keys}, "trials": table, "seconds": round(seconds, 1)}


@dataclass(frozen=True)
class Run:
    setting: str
    seed: int
    keys: Mapping[str, Any]
    folder: Path


def train(run_: Run, config: Path, env: Mapping[str, str]) -> float:
    """One task-B run, with its own HF_HOME (runs side by side must not share the datasets cache and its locks)."""
    args = overrides({**run_.keys, "seed": run_.seed, "output_dir": str(run_.folder)})
    home = run_.folder.parent / f"{run_.folder.name}.hf_home"
    command = [str(BIN / "llamafactory-cli"), "train", str(config), *args]
    return run(command, run_.folder.parent / f"{run_.folder.name}.log", {**env, "HF_HOME": str(home)})


# 4. Measurements -----------------------------------------------------------------------------------------------


def measure(
    runs: Sequence[Run], aligned: Path, data_dir: Path, sizes: parts.Sizes, head_path: Path, work: Path
) -> list[tuple[dict[str, float], list[bool]]]:
    """Task-B answer accuracy on the test split and task-A retention, per run, in order; with each run's right or
    wrong answer per test question."""
    from transformers import LlavaForConditionalGeneration
    from transformers.utils import logging

    from bench.evidence_lf import AnswerScorer

    scorer = AnswerScorer(aligned, data_dir, "evidence_test", work, parts.cutoff(sizes))
    logging.set_verbosity_error()  # after LLaMA-Factory's parser, which sets it to info
    processor = parts.processor_for(sizes)
    pixels, labels = parts.retention_set(sizes, processor)
    linear = parts.head(sizes)
    linear.load_state_dict(torch.load(head_path))
    results = []
    for run_ in runs:
        model = LlavaForConditionalGeneration.from_pretrained(run_.folder, dtype=torch.float32).to(parts.device())
        right = scorer.correct(model)
        retention = parts.cell_accuracy(parts.tower_of(run_.folder), linear, pixels, labels, sizes.grid)
        results.append(({"task_accuracy": sum(right) / len(right), "retention": retention}, right))
        print(f"  {run_.setting} seed {run_.seed}: {results[-1][0]}", flush=True)
    return results


def answer_kinds(data_dir: Path) -> list[str]:
    rows = json.loads((data_dir / "evidence_test.json").read_text())
    return [data.kind_of(row["messages"][0]["content"]) for row in rows]


def by_kind(runs: Sequence[Run], right: Sequence[Sequence[bool]], kinds: Sequence[str]) -> dict[str, dict[str, float]]:
    """Per setting and kind of question, the share answered right over all its seeds' runs."""
    tally: dict[str, dict[str, list[bool]]] = {}
    for run_, answers in zip(runs, right, strict=True):
        for kind, ok in zip(kinds, answers, strict=True):
            tally.setdefault(run_.setting, {}).setdefault(kind, []).append(ok)
    return {setting: {kind: sum(v) / len(v) for kind, v in sorted(k.items())} for setting, k in tally.items()}


def majority_baseline(data_dir: Path) -> tuple[float, dict[str, float]]:
    """Accuracy of always answering the train split's most common answer to each kind of question: on the whole
    test split, and per kind."""

    def pairs(name: str) -> list[tuple[str, str]]:
        rows = json.loads((data_dir / f"evidence_{name}.json").read_text())
        return [(data.kind_of(r["messages"][0]["content"]), r["messages"][1]["content"]) for r in rows]

    counts: dict[str, dict[str, int]] = {}
    for kind, answer in pairs("train"):
        counts.setdefault(kind, {}).setdefault(answer, 0)
        counts[kind][answer] += 1
    guess = {kind: max(c, key=c.__getitem__) for kind, c in counts.items()}
    test = pairs("test")
    hits: dict[str, list[bool]] = {}
    for kind, answer in test:
        hits.setdefault(kind, []).append(guess.get(kind) == answer)
    overall = sum(sum(v) for v in hits.values()) / len(test)
    return overall, {kind: sum(v) / len(v) for kind, v in sorted(hits.items())}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--quick", action="store_true", help="the reduced version (3 settings, 2 seeds, < 5 min)")
    parser.add_argument("--profile", choices=sorted(PROFILES), help="full (default), quick or gpu")
    parser.add_argument("--cache", type=Path, help="generated data and checkpoints (default OUT/cache)")
    parser.add_argument("--jobs", type=int, default=2, help="LLaMA-Factory runs at once")
    parser.add_argument("--check", action="store_true", help="every stage for two steps on a few samples")
    args = parser.parse_args(argv)
    name = args.profile or ("quick" if args.quick else "full")
    profile = checked(PROFILES[name]) if args.check else PROFILES[name]
    out: Path = args.out.resolve()
    cache = (args.cache or out / "cache").resolve()
    out.mkdir(parents=True, exist_ok=True)
    env = clean_env(out / "hf_home")
    start = time.monotonic()
    timings: dict[str, float] = {}

    sizes = profile.sizes
    print(f"evidence ({name}{', check' if args.check else ''}): {asdict(sizes)}", flush=True)
    data_dir = cache / f"data-{digest(asdict(sizes), SPLIT_SEEDS, data.VERSION)}"
    cached(data_dir, lambda folder: build_data(sizes, folder) and None)
    print("1. pretraining the vision tower and the language model", flush=True)
    parts_dir = cache / f"pretrained-{digest(asdict(sizes), data.VERSION)}"
    pretrained = cached(parts_dir, lambda folder: pretrain(sizes, folder))
    print("2. aligning the projector (llamafactory-cli train)", flush=True)
    align_key = digest(
        parts_dir.name, data_dir.name, profile.align_lr, profile.align_steps, profile.batch, dict(profile.extra)
    )
    aligned_dir = cache / f"aligned-{align_key}"
    aligned_info = cached(aligned_dir, lambda folder: align(profile, parts_dir / "base", data_dir, folder, env))
    aligned = aligned_dir / "model"
    timings["align_seconds"] = aligned_info["seconds"]

    config = write_yaml(out / "task_b.yaml", task_config(profile, aligned, data_dir))
    fixed = settings(profile)

    def runs_of(setting: str, keys: Mapping[str, Any]) -> list[Run]:
        return [Run(setting, seed, keys, out / "runs" / f"{setting}-seed{seed}") for seed in profile.seeds]

    runs = [run_ for setting, keys in fixed.items() for run_ in runs_of(setting, keys)]
    swept: dict[str, Any] | None = None
    print(f"3. fine-tuning on task B: {len(runs)} runs of the fixed settings, {args.jobs} at once", flush=True)
    with ThreadPoolExecutor(args.jobs) as pool:
        # The sweep takes one of the slots while the fixed settings train in the others; its best setting's
        # seeds train when it is done.
        if profile.sweep:
            print(f"3a. lf-multilr sweep {' '.join(profile.sweep)} on the validation split, meanwhile", flush=True)
            shutil.rmtree(out / "sweep", ignore_errors=True)
            sweeping = pool.submit(sweep, profile, config, out / "sweep", env)
        trainings = [pool.submit(train, run_, config, env) for run_ in runs]
        if profile.sweep:
            swept = sweeping.result()
            fixed[SWEPT] = swept["best"]
            timings["sweep_seconds"] = swept["seconds"]
            print(f"  sweep done in {swept['seconds']:.0f} s; best: {swept['best']}", flush=True)
            best_runs = runs_of(SWEPT, swept["best"])
            runs += best_runs
            trainings += [pool.submit(train, run_, config, env) for run_ in best_runs]
        seconds = [training.result() for training in trainings]
    timings["fine_tune_seconds_each"] = round(sum(seconds) / len(seconds), 1)
    print("4. measuring", flush=True)
    results = measure(runs, aligned, data_dir, sizes, parts_dir / "head.pt", out / "measure")
    timings["total_seconds"] = round(time.monotonic() - start, 1)

    kinds = answer_kinds(data_dir)
    baseline, baseline_by_kind = majority_baseline(data_dir)
    evidence = {
        "settings": {
            setting: {
                "config": {"learning_rate": profile.lr, **keys},
                "seeds": [
                    {"seed": r.seed, **m} for r, (m, _) in zip(runs, results, strict=True) if r.setting == setting
                ],
            }
            for setting, keys in fixed.items()
        },
        "meta": {
            "profile": name,
            "check": args.check,
            "sizes": asdict(sizes),
            "steps": profile.steps,
            "batch": profile.batch,
            "pretrained_task_a_accuracy": pretrained["task_a_accuracy"],
            "majority_baseline": baseline,
            "majority_baseline_by_kind": baseline_by_kind,
            "test_questions": len(kinds),
            "task_accuracy_by_kind": by_kind(runs, [right for _, right in results], kinds),
            "sweep": swept,
            "timings": timings,
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}",
            "date": time.strftime("%Y-%m-%d"),
        },
    }
    (out / "evidence.json").write_text(json.dumps(evidence, indent=2) + "\n")
    print(plots.write_all(evidence, out, {r.setting: r.folder for r in runs if r.seed == profile.seeds[0]}))
    print(f"done in {timings['total_seconds']:.0f} s: {out / 'evidence.json'}")


if __name__ == "__main__":
    main()
