"""Training step time: lf-multilr (three module groups, per-module metrics) against stock LLaMA-Factory.

One process, the same config, interleaved runs of four variants: stock (lf-multilr reverted) and lf-multilr, each
logging every step and every 10 steps. First one untimed warm-up run of each variant; then the timed repeats, each
running every variant once in the balanced order of `bench/order.py` (each variant in each position equally
often), so that a run's place in a repeat does not decide its time. A callback times each optimizer step; the first
steps of each run are dropped as well. Reported: per variant the median step time, and its ratio to the stock run
with the same logging in the same repeat (median and range over the repeats); and the runs' times by position in
their repeat, which shows how large the order effect the rotation cancels is.

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
    def __init__(self) -> None:
        self.times: list[float] = []
        self._start = 0.0

    def on_step_begin(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
        _sync()
        self._start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
        _sync()  # on a GPU a step is only done when its kernels are
        self.times.append(time.perf_counter() - self._start)


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def run(config: dict, steps: int) -> float:
    from llamafactory.train.tuner import run_exp

    timer = StepTimer()
    run_exp({**config, "max_steps": steps}, callbacks=[timer])
    return statistics.median(timer.times[WARMUP:])


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
    if options.steps <= WARMUP:
        parser.error(f"--steps must be more than the {WARMUP} warm-up steps each run drops")
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

        def timed(name: str, steps: int) -> float:
            variant, active = variants[name]
            lf_multilr.apply() if active else lf_multilr.revert()
            return run(variant, steps)

        warm_up(list(variants), lambda name: timed(name, WARMUP + 2))
        medians: dict[str, list[float]] = {name: [] for name in variants}
        by_position: list[list[float]] = [[] for _ in variants]  # a run's median over its repeat's mean
        for repeat, order in enumerate(orders(list(variants), options.repeats)):
            times = {name: timed(name, options.steps) for name in order}
            mean = statistics.fmean(times.values())
            for position, name in enumerate(order):
                medians[name].append(times[name])
                by_position[position].append(times[name] / mean)
            print(f"repeat {repeat}: " + ", ".join(f"{name} {times[name]:.3f} s" for name in order), flush=True)
        lf_multilr.apply()
    print(
        f"\n| variant | median step time (s) | ratio to stock with the same logging: median (min-max over "
        f"{options.repeats} repeats) |"
    )
    print("|---|---|---|")
    for n in every:
        stock = medians[STOCK[n]]
        for name in (STOCK[n], OURS[n]):
            ratios = [value / reference for value, reference in zip(medians[name], stock, strict=True)]
            print(
                f"| {name} | {statistics.median(medians[name]):.3f} | {statistics.median(ratios):.3f} "
                f"({min(ratios):.3f}-{max(ratios):.3f}) |"
            )
    positions = ", ".join(f"{i + 1}: {statistics.median(values):.3f}" for i, values in enumerate(by_position))
    print(f"\nby position in a repeat, a run's median step time over its repeat's mean (median): {positions}")


if __name__ == "__main__":
    main()
