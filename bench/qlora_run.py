"""QLoRA with module LRs on a GPU: a Qwen2-VL built from a config, 4-bit, ``paged_adamw_8bit``, bf16, checked.

Three things, each through the real ``llamafactory-cli train``:

1. One step with ``vision_tower_lr`` and ``language_model_lr`` set (LoRA on both; the projector has no adapter):
   LoRA's B matrices start at zero, and the first step of Adam moves each element by its group's LR, so the
   largest |B| of each module's adapters is that module's LR (to the 8-bit optimizer's quantization).
2. The logged ``lr/<module>`` and ``grad_norm/<module>`` of that step, and that the norms add up to ``grad_norm``.
3. The step-time ratio against stock LLaMA-Factory (the same config without the keys, lf-multilr switched off):
   ``--steps`` steps each, ``--repeats`` pairs (an even number) whose order alternates (``bench/order.py``), the
   ratio of ``train_runtime`` per pair. Each run is a fresh process, so every variant pays the same start-up; the
   one-step check, run first, warms the files (model, data) both read.

    python bench/qlora_run.py --out DIR [--sizes bench/configs/qwen2_vl_2b] [--steps 30] [--repeats 2]
    python bench/qlora_run.py --out DIR --cpu     # the CPU stand-in: tiny model, fp32, adamw_torch, no 4-bit

The CPU stand-in checks the set-up and every measurement path where no GPU (and no bitsandbytes kernel) is at hand;
its numbers say nothing about QLoRA. Exit 0 when every check passed, 1 when one failed, 2 when nothing could run.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from bench.order import check_repeats, orders  # noqa: E402

FAMILY = "qwen2_vl"
LRS = {"vision_tower_lr": 1.0e-4, "language_model_lr": 1.0e-3}
MODULE_OF = (("visual.", "vision_tower"), ("language_model", "language_model"))


def build(work: Path, sizes: Path | None, cpu: bool) -> Path:
    """The model: the tiny Qwen2-VL on the CPU stand-in, else one with ``sizes``' config (random bf16 weights)."""
    from tools import tiny

    tiny.build_dataset(work / "data")
    if cpu:
        return tiny.build_model(FAMILY, work / "model")
    from step_time import build_mid_model  # bench/step_time.py: a Qwen2-VL of a config's sizes, tiny tokenizer

    return build_mid_model(work, sizes)


def config(work: Path, model: Path, name: str, cpu: bool, steps: int, keys: bool) -> tuple[Path, Path]:
    from tools.testing import write_config

    overrides: dict[str, Any] = {
        "finetuning_type": "lora",
        "lora_target": "all",
        "lora_rank": 8,
        "freeze_vision_tower": False,
        "max_steps": steps,
        "learning_rate": 1.0e-3,
        "adam_epsilon": 1.0e-20,
        "max_grad_norm": 1.0,
    }
    if not cpu:
        overrides.update(quantization_bit=4, optim="paged_adamw_8bit", bf16=True)
    if keys:
        overrides.update(LRS)
    return write_config(work / name, model, work / "data", FAMILY, **overrides)


def train(path: Path, log: Path, stock: bool) -> tuple[int, str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    if stock:
        env["LF_MULTILR_DISABLE"] = "1"
    result = subprocess.run(
        [sys.executable, "-m", "llamafactory.cli", "train", str(path)],
        env=env,
        cwd=path.parent,
        capture_output=True,
        text=True,
    )
    output = result.stdout + result.stderr
    log.write_text(output)
    return result.returncode, output


def module_of(name: str) -> str | None:
    return next((module for key, module in MODULE_OF if key in name), None)


def one_step(out: Path) -> tuple[list[str], bool]:
    """Rows for the one-step check and whether it passed."""
    from tools.testing import adapter, step_records

    largest: dict[str, float] = {}
    for name, tensor in adapter(out).items():
        module = module_of(name)
        if "lora_B" in name and module is not None:
            largest[module] = max(largest.get(module, 0.0), float(tensor.float().abs().max()))
    (record,) = step_records(out)  # HF's log: grad_norm is there
    rows, ok = [], True
    for key, lr in LRS.items():
        module = key.removesuffix("_lr")
        step = largest.get(module)
        logged = record.get(f"lr/{module}")
        norm = record.get(f"grad_norm/{module}")
        passed = (
            step is not None
            and math.isclose(step, lr, rel_tol=5e-2)
            and logged is not None
            and math.isclose(float(logged), lr)
            and norm is not None
            and norm > 0
        )
        ok = ok and passed
        step_text = "none" if step is None else f"{step:.4e}"
        rows.append(f"| {module} | {lr:.0e} | {step_text} | {logged} | {norm} | {'pass' if passed else 'FAIL'} |")
    norms = [value for key, value in record.items() if key.startswith("grad_norm/")]
    whole = math.sqrt(sum(value * value for value in norms))
    adds_up = "grad_norm" in record and math.isclose(whole, float(record["grad_norm"]), rel_tol=1e-3)
    verdict = "pass" if adds_up else "FAIL"
    rows.append(f"| all | | | | sqrt(sum of squares) {whole:.5g} vs grad_norm {record.get('grad_norm')} | {verdict} |")
    return rows, ok and adds_up


def runtime(out: Path) -> float:
    return float(json.loads((out / "all_results.json").read_text())["train_runtime"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", ".")))
    parser.add_argument("--work", type=Path, help="scratch folder (default: a new temporary one)")
    parser.add_argument("--sizes", type=Path, default=ROOT / "bench" / "configs" / "qwen2_vl_2b")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--cpu", action="store_true", help="the CPU stand-in (see above)")
    args = parser.parse_args(argv)
    if problem := check_repeats(args.repeats, 2):
        parser.error(f"--repeats: {problem}")
    import torch

    if not args.cpu and not torch.cuda.is_available():
        print("no CUDA GPU: run this on the GPU machine, or pass --cpu for the stand-in", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    work = args.work or Path(tempfile.mkdtemp(prefix="lf_multilr_qlora_"))
    model = build(work, None if args.cpu else args.sizes, args.cpu)
    device = "CPU stand-in (tiny model, fp32, adamw_torch, no 4-bit)" if args.cpu else torch.cuda.get_device_name(0)
    lines = [
        "# QLoRA with module LRs" + (" (CPU stand-in: checks the set-up, not QLoRA)" if args.cpu else ""),
        "",
        f"{time.strftime('%Y-%m-%d')}, {device}; bench/qlora_run.py",
        "",
        "One step, LoRA (rank 8, all linear layers) on the vision tower and the language model"
        + ("" if args.cpu else ", quantization_bit 4, paged_adamw_8bit, bf16")
        + ": the largest |lora_B| per module after one step equals the module's LR.",
        "",
        "| module | LR set | max abs lora_B after 1 step | lr/<module> logged | grad_norm/<module> | verdict |",
        "|---|---|---|---|---|---|",
    ]
    path, out = config(work, model, "one_step", args.cpu, 1, keys=True)
    code, output = train(path, args.out / "one_step.log", stock=False)
    if code != 0:
        lines.append(f"| | | exit {code}: see one_step.log | | | FAIL |")
        ok = False
    else:
        rows, ok = one_step(out)
        lines += rows
    ratios = []
    for repeat, order in enumerate(orders([("stock", True), ("lf-multilr", False)], args.repeats)):
        times = {}
        for variant, stock in order:
            path, out = config(work, model, f"{variant}_{repeat}", args.cpu, args.steps, keys=not stock)
            code, _ = train(path, args.out / f"{variant}_{repeat}.log", stock=stock)
            if code != 0:
                lines.append(f"\n{variant} run {repeat}: exit {code} (see {variant}_{repeat}.log)")
                ok = False
                break
            times[variant] = runtime(out)
        if len(times) == 2:
            ratios.append(times["lf-multilr"] / times["stock"])
            lines.append(
                f"\nrepeat {repeat} ({order[0][0]} first): {args.steps} steps, train_runtime stock "
                f"{times['stock']:.2f} s, lf-multilr {times['lf-multilr']:.2f} s, ratio {ratios[-1]:.3f}"
            )
    if ratios:
        lines.append(
            f"\nStep-time ratio lf-multilr / stock: median {statistics.median(ratios):.3f} "
            f"(range {min(ratios):.3f}-{max(ratios):.3f}, {len(ratios)} pairs, order alternating)"
        )
    (args.out / "qlora.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
