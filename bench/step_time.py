"""Training step time: lf-multilr (three module groups, per-module metrics) against stock LLaMA-Factory.

One process, the same config, interleaved runs of four variants: stock (lf-multilr reverted) and lf-multilr, each
logging every step and every 10 steps. First one untimed warm-up run of each variant; then the timed repeats, each
running every variant once in the balanced order of `bench/order.py` (each variant in each position equally
often), so that a run's place in a repeat does not decide its time. A callback times each step from its start to
the next step's start (so the log, which HF writes after `on_step_end`, is inside), in wall and in CPU seconds; each
run drops its first steps and its last. Reported: per variant the median step time, and its ratio to the stock run
with the same logging in the same repeat (median and range over the repeats); and the runs' wall times by position
in their repeat, which shows how large the order effect the rotation cancels is. On a shared machine the CPU
seconds are the steadier measure (they leave out waiting for a core); on a GPU the wall seconds are the one.

The model is a Qwen2-VL scaled up from the project's tiny one (same tokenizer and processor) until a step on
one CPU thread takes well over 0.5 s.
Usage: OMP_NUM_THREADS=1 python bench/step_time.py [--repeats 8] [--steps 14] [--every 1 10]
(--repeats: a multiple of the number of variants, two per --every value)
GPU (see bench/gpu_step_time.sh): python bench/step_time.py --sizes bench/configs/qwen2_vl_2b --bf16 --every 10
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from transformers import AutoConfig, Qwen2VLForConditionalGeneration, TrainerCallback  # noqa: E402

import lf_multilr  # noqa: E402
from bench.order import check_repeats, orders, warm_up  # noqa: E402
from tools.tiny import build_dataset, build_model  # noqa: E402

WARMUP = 3
MODULE_LRS = {"vision_tower_lr": 2.0e-6, "multi_modal_projector_lr": 5.0e-6, "language_model_lr": 1.0e-5}


def build_mid_model(folder: Path, sizes: Path | None) -> Path:
    """A Qwen2-VL with the tiny model's tokenizer and processor: 32M parameters, or the sizes of a config.json."""
    tiny = build_model("qwen2_vl", folder / "tiny")
    config = AutoConfig.from_pretrained(tiny)
    if sizes is None:
        text = config.text_config
        text.hidden_size, text.intermediate_size, text.num_hidden_layers = 512, 1536, 8
        text.num_attention_heads, text.num_key_value_heads = 8, 4
        text.layer_types = ["full_attention"] * text.num_hidden_layers
        text.rope_parameters["mrope_section"] = [8, 12, 12]  # sums to head_dim / 2 = 32
        vision = config.vision_config
        vision.depth, vision.embed_dim, vision.num_heads, vision.hidden_size = 6, 256, 4, 512
    else:  # the published sizes, with the tiny tokenizer's special-token ids
        sized = AutoConfig.from_pretrained(sizes)
        for name in ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id"):
            setattr(sized, name, getattr(config, name))
        for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
            setattr(sized.text_config, name, getattr(config.text_config, name))
        config = sized
    torch.manual_seed(0)
    model = Qwen2VLForConditionalGeneration(config)
    print(f"model: Qwen2-VL, {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters", flush=True)
    mid = folder / "mid"
    model.save_pretrained(mid)
    for item in tiny.iterdir():
        if item.suffix != ".safetensors" and item.name != "config.json":
            shutil.copy(item, mid / item.name)
    return mid


class StepTimer(TrainerCallback):
    """A step's wall and CPU seconds, from one step's start to the next one's: the whole step, its log included (HF
    logs after ``on_step_end``, and the log is where lf-multilr adds its entries). The last step is not timed. CPU
    seconds (the process's, every thread) leave out the time spent waiting for a core on a shared machine."""

    def __init__(self) -> None:
        self.starts: list[tuple[float, float]] = []

    def on_step_begin(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
        _sync()  # on a GPU a step is only done when its kernels are
        self.starts.append((time.perf_counter(), time.process_time()))

    def steps(self) -> list[tuple[float, float]]:
        return [(b[0] - a[0], b[1] - a[1]) for a, b in zip(self.starts, self.starts[1:], strict=False)]


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def run(config: dict, steps: int) -> tuple[float, float]:
    """The median wall and CPU seconds of a run's steps after the first ``WARMUP``."""
    from llamafactory.train.tuner import run_exp

    timer = StepTimer()
    run_exp({**config, "max_steps": steps}, callbacks=[timer])
    timed = timer.steps()[WARMUP:]
    return statistics.median(w for w, _ in timed), statistics.median(c for _, c in timed)


STOCK = {1: "stock, log every step", 10: "stock, log every 10 steps"}
OURS = {1: "lf-multilr, log every step", 10: "lf-multilr, log every 10 steps"}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=8, help="timed repeats, a multiple of the number of variants")
    parser.add_argument(
        "--every", type=int, nargs="+", choices=sorted(STOCK), default=sorted(STOCK), help="logging_steps to time"
    )
    parser.add_argument("--steps", type=int, default=14)
    parser.add_argument("--sizes", type=Path, help="a Qwen2-VL config.json folder to take the sizes from (GPU runs)")
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--batch", type=int, default=4)
    options = parser.parse_args()
    if problem := check_repeats(options.repeats, 2 * len(set(options.every))):
        parser.error(f"--repeats: {problem}")
    if options.steps < WARMUP + 2:
        parser.error(f"--steps must be at least {WARMUP + 2}: each run drops its first {WARMUP} steps, and its last")
    os.environ.setdefault("LLAMAFACTORY_VERBOSITY", "WARN")
    with tempfile.TemporaryDirectory() as folder:
        base = Path(folder)
        os.environ["HF_HOME"] = str(base / "hf_home")
        model, data = build_mid_model(base, options.sizes), build_dataset(base / "data")
        config = {
            "model_name_or_path": str(model),
            "stage": "sft",
            "do_train": True,
            "finetuning_type": "full",
            "freeze_vision_tower": False,
            "freeze_multi_modal_projector": False,
            "dataset": "tiny_mm",
            "dataset_dir": str(data),
            "template": "qwen2_vl",
            "cutoff_len": 256,
            "preprocessing_num_workers": 1,
            "output_dir": str(base / "out"),
            "overwrite_output_dir": True,
            "bf16": options.bf16,
            "per_device_train_batch_size": options.batch,
            "learning_rate": 1.0e-5,
            "lr_scheduler_type": "cosine",
            "save_strategy": "no",
            "report_to": "none",
            "seed": 0,
            "disable_tqdm": True,
        }
        every = sorted(set(options.every))
        variants = {STOCK[n]: ({**config, "logging_steps": n}, False) for n in every}
        variants |= {OURS[n]: ({**config, **MODULE_LRS, "logging_steps": n}, True) for n in every}

        def timed(name: str, steps: int) -> tuple[float, float]:
            variant, active = variants[name]
            lf_multilr.apply() if active else lf_multilr.revert()
            return run(variant, steps)

        warm_up(list(variants), lambda name: timed(name, WARMUP + 2))
        medians: dict[str, list[tuple[float, float]]] = {name: [] for name in variants}
        by_position: list[list[float]] = [[] for _ in variants]  # a run's wall median over its repeat's mean
        for repeat, order in enumerate(orders(list(variants), options.repeats)):
            times = {name: timed(name, options.steps) for name in order}
            mean = statistics.fmean(wall for wall, _ in times.values())
            for position, name in enumerate(order):
                medians[name].append(times[name])
                by_position[position].append(times[name][0] / mean)
            shown = ", ".join(f"{name} {times[name][0]:.3f} s ({times[name][1]:.3f} s CPU)" for name in order)
            print(f"repeat {repeat}: {shown}", flush=True)
        lf_multilr.apply()
    print(
        "\n| variant | median step time, wall (s) | ratio to stock, wall | median step time, CPU (s) | "
        "ratio to stock, CPU |\n|---|---|---|---|---|"
    )
    for n in every:
        for name in (STOCK[n], OURS[n]):
            cells = []
            for kind in (0, 1):  # wall, CPU
                values = [times[kind] for times in medians[name]]
                stock = [times[kind] for times in medians[STOCK[n]]]
                ratios = [value / reference for value, reference in zip(values, stock, strict=True)]
                cells += [f"{statistics.median(values):.3f}", _spread(ratios)]
            print(f"| {name} | {' | '.join(cells)} |")
    print(
        f"\nratios: to the stock run with the same logging_steps in the same repeat, median (min-max) over "
        f"{options.repeats} repeats"
    )
    positions = ", ".join(f"{i + 1}: {statistics.median(values):.3f}" for i, values in enumerate(by_position))
    print(f"by position in a repeat, a run's median wall step time over its repeat's mean (median): {positions}")


def _spread(ratios: list[float]) -> str:
    return f"{statistics.median(ratios):.3f} ({min(ratios):.3f}-{max(ratios):.3f})"


if __name__ == "__main__":
    main()
