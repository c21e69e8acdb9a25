"""DeepSpeed ZeRO-2 / ZeRO-3 runs of the real ``llamafactory-cli train`` with three module LRs, checked, as markdown.

Each run is one AdamW step (adam_epsilon 1e-20, so every changed element moves by its group's LR) of the tiny
Qwen2-VL from ``tools/tiny.py`` through LLaMA-Factory's own launcher (``FORCE_TORCHRUN=1``, which LLaMA-Factory
requires for DeepSpeed) with LLaMA-Factory's example ZeRO config. Checked per run: the start-of-training table lists
the three modules with whole sizes, every rank built the same groups, each module's weights moved by exactly its LR,
``lr/<module>`` was logged, and ``grad_norm/<module>`` was withheld with one warning. Also checked: a DeepSpeed
config with an ``optimizer`` block is refused before any weight loads.

    python bench/deepspeed_run.py --out DIR [--stages 2 3] [--ranks N] [--check]

``--check`` builds the model and data and writes the configs, then prints the commands it would run and stops (no
GPU, no DeepSpeed needed). Exit status 0 when every check passed, 1 when one failed, 2 when nothing could run.
Not order-sensitive (bench/order.py): it checks each run's groups and steps; each run's seconds are shown, not compared.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

FAMILY = "qwen2_vl"
LRS = {"vision_tower_lr": 1.0e-4, "multi_modal_projector_lr": 1.0e-3, "language_model_lr": 1.0e-2}
EXPECTED = {"vision_tower": 1.0e-4, "multi_modal_projector": 1.0e-3, "language_model": 1.0e-2}
WITHHELD = "per-module gradient norms are not logged: under DeepSpeed"
SIGNATURE = re.compile(r"lf-multilr: rank (\d+) of (\d+): \d+ param groups, signature ([0-9a-f]{16})")


def prepare(work: Path, name: str, stage: int, **blocks: Any) -> tuple[Path, Path]:
    from tools.testing import write_config, zero_config

    folder = work / name
    folder.mkdir(parents=True, exist_ok=True)
    deepspeed = folder / "ds.json"
    deepspeed.write_text(json.dumps(zero_config(stage, **blocks), indent=2))
    return write_config(folder, work / "model", work / "data", FAMILY, deepspeed=str(deepspeed), **LRS)


def environment(ranks: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        FORCE_TORCHRUN="1",
        NPROC_PER_NODE=str(ranks),
        PATH=f"{Path(sys.executable).parent}:{env.get('PATH', '')}",  # the launcher runs `torchrun` from PATH
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        OMP_NUM_THREADS=env.get("OMP_NUM_THREADS", "4"),
    )
    return env


def command(config: Path) -> list[str]:
    return [sys.executable, "-m", "llamafactory.cli", "train", str(config)]


def train(config: Path, ranks: int, log: Path) -> tuple[int, str, float]:
    start = time.perf_counter()
    result = subprocess.run(command(config), env=environment(ranks), cwd=config.parent, capture_output=True, text=True)
    output = result.stdout + result.stderr
    log.write_text(output)
    return result.returncode, output, time.perf_counter() - start


def table_rows(output: str) -> dict[str, tuple[int, str, float]]:
    """The start-of-training table: module -> (tensors, params, lr)."""
    found = re.findall(r"\n  (\w+)\s+(\d+)\s+([\d.]+[kMB]?)\s+yes\s+([\d.e+-]+)", output)
    return {module: (int(tensors), params, float(lr)) for module, tensors, params, lr in found}


def check_run(name: str, output: str, code: int, out: Path, ranks: int, seconds: float) -> tuple[list[str], bool]:
    """One markdown row per module and whether every check passed."""
    from lf_multilr.reports.table import human
    from tools.testing import log_records, max_steps_by_module, weights

    problems = []
    if code != 0:
        return [f"| {name} | exit {code} | | | | | FAIL: see {name}.log |"], False
    expected_sizes: dict[str, list[int]] = {}
    from tools.testing import owner

    base = weights(out.parent.parent / "model")
    for tensor_name, tensor in base.items():
        size = expected_sizes.setdefault(owner(FAMILY, tensor_name), [0, 0])
        size[0], size[1] = size[0] + 1, size[1] + tensor.numel()
    rows = table_rows(output)
    signatures = SIGNATURE.findall(output)
    if ranks > 1 and (len(signatures) != ranks or len({digest for _, _, digest in signatures}) != 1):
        problems.append(f"rank signatures: {signatures}")
    steps = max_steps_by_module(FAMILY, base, weights(out))
    records = [r for r in log_records(out) if "loss" in r]
    record = records[0] if records else {}
    warnings = output.count(WITHHELD)
    if warnings != 1 or any(key.startswith("grad_norm/") for key in record):
        problems.append(f"grad_norm/<module>: {warnings} warnings, keys {[k for k in record if 'grad_norm/' in k]}")
    lines, ok = [], not problems
    for module, lr in EXPECTED.items():
        tensors, params = expected_sizes[module]
        row = rows.get(module)
        table_ok = row is not None and row[0] == tensors and row[1] == human(params) and math.isclose(row[2], lr)
        moved = steps.get(module, [])
        step_ok = len(moved) == tensors and all(math.isclose(step, lr, rel_tol=1e-3) for step in moved)
        logged = record.get(f"lr/{module}")
        lr_ok = logged is not None and math.isclose(float(logged), lr)
        ok = ok and table_ok and step_ok and lr_ok
        shown = f"{min(moved):.4e} .. {max(moved):.4e} ({len(moved)}/{tensors})" if moved else f"none (0/{tensors})"
        verdict = "pass" if table_ok and step_ok and lr_ok and not problems else "FAIL"
        table = f"{row[0]} / {row[1]} / {row[2]:.0e}" if row else "missing"
        lines.append(f"| {name} | {seconds:.0f} s | {module} | {lr:.0e} | {table} | {shown} | {logged} | {verdict} |")
    lines += [f"| {name} | | problem | | | | | FAIL: {problem} |" for problem in problems]
    return lines, ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", ".")), help="where results go")
    parser.add_argument("--work", type=Path, help="scratch folder (default: a new temporary one)")
    parser.add_argument("--stages", type=int, nargs="+", default=[2, 3], choices=[1, 2, 3])
    parser.add_argument("--ranks", type=int, default=1, help="processes (GPUs) per run")
    parser.add_argument("--check", action="store_true", help="prepare and print the commands; run nothing")
    args = parser.parse_args(argv)
    if args.ranks < 1:
        parser.error("--ranks must be at least 1")
    args.out.mkdir(parents=True, exist_ok=True)
    work = args.work or Path(tempfile.mkdtemp(prefix="lf_multilr_ds_"))

    from tools import tiny

    tiny.build_model(FAMILY, work / "model")
    tiny.build_dataset(work / "data")
    runs = {f"zero{stage}": prepare(work, f"zero{stage}", stage) for stage in args.stages}
    refused = prepare(work, "refused", 2, optimizer={"type": "AdamW", "params": {"lr": "auto"}})
    if args.check:
        for name, (config, _) in [*runs.items(), ("refused", refused)]:
            print(f"{name}: NPROC_PER_NODE={args.ranks} FORCE_TORCHRUN=1 {' '.join(command(config))}")
        return 0

    import torch

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA device"
    versions = {}
    for package in ("torch", "deepspeed", "transformers", "accelerate", "llamafactory", "lf-multilr"):
        from importlib.metadata import PackageNotFoundError, version

        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = "missing"
    lines = [
        "# lf-multilr under DeepSpeed",
        "",
        f"{time.strftime('%Y-%m-%d')}, {device}, {args.ranks} rank(s); "
        + ", ".join(f"{name} {value}" for name, value in versions.items()),
        "",
        "One AdamW step of the tiny Qwen2-VL (tools/tiny.py), full fine-tuning, three module LRs, through "
        "`FORCE_TORCHRUN=1 llamafactory-cli train` with LLaMA-Factory's example ZeRO config (bench/deepspeed_run.py).",
        "",
        "| run | time | module | LR set | table: tensors / params / LR | max abs step per tensor (changed/all) "
        "| lr/<module> logged | verdict |",
        "|---|---|---|---|---|---|---|---|",
    ]
    ok = True
    for name, (config, out) in runs.items():
        code, output, seconds = train(config, args.ranks, args.out / f"{name}.log")
        rows, passed = check_run(name, output, code, out, args.ranks, seconds)
        lines += rows
        ok = ok and passed
    code, output, seconds = train(refused[0], args.ranks, args.out / "refused.log")
    from tools.testing import WEIGHTS_LOADING

    refusal = code != 0 and "has a `optimizer` block" in output and WEIGHTS_LOADING not in output
    ok = ok and refusal
    lines += [
        "",
        f"DeepSpeed config with an `optimizer` block: exit {code}, "
        f"{'refused before any weight loaded' if refusal else 'NOT refused as expected'} ({seconds:.0f} s).",
    ]
    (args.out / "deepspeed.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
