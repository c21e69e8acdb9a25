"""Time to build the param groups for Qwen2-VL 2B / 7B / 72B configs on the meta device.

Model construction (meta, no weights) is not timed; timed are, separately, HF's decay-name rule (which the
replaced path runs too) and lf-multilr's grouping itself (`build_plan` + `check_plan`): one untimed call of each,
then N runs of each in alternating order (`bench/order.py`). Median of N runs.
Usage: python bench/grouping.py [--runs 8]   (an even number)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForImageTextToText, Trainer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.order import check_repeats, orders, warm_up  # noqa: E402
from lf_multilr.config.keys import KEY_NAMES  # noqa: E402
from lf_multilr.config.settings import Settings  # noqa: E402
from lf_multilr.grouping.checks import check_plan  # noqa: E402
from lf_multilr.grouping.placement import normalize  # noqa: E402
from lf_multilr.grouping.plan import build_plan  # noqa: E402
from lf_multilr.patches.registry import module_map  # noqa: E402

SETTINGS = Settings(
    {**dict.fromkeys(KEY_NAMES), "vision_tower_lr": 2e-6, "multi_modal_projector_lr": 5e-6, "language_model_lr": 1e-5}
)


def timed(functions: dict[str, Callable[[], object]], runs: int) -> dict[str, float]:
    """Median seconds of each function: one untimed call of each, then ``runs`` calls in balanced order."""
    warm_up(list(functions), lambda name: functions[name]())
    times: dict[str, list[float]] = {name: [] for name in functions}
    for order in orders(list(functions), runs):
        for name in order:
            start = time.perf_counter()
            functions[name]()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=8)
    runs = parser.parse_args().runs
    if problem := check_repeats(runs, 2):
        parser.error(f"--runs: {problem}")
    mapping = module_map("qwen2_vl")
    assert mapping is not None
    print(
        "| config | tensors | parameters | HF decay names (ms) | lf-multilr grouping (ms) | grouping per tensor (us) |"
    )
    print("|---|---|---|---|---|---|")
    for size in ("2b", "7b", "72b"):
        config = AutoConfig.from_pretrained(ROOT / "bench" / "configs" / f"qwen2_vl_{size}")
        with torch.device("meta"):
            model = AutoModelForImageTextToText.from_config(config)
        tensors = len(list(model.parameters()))
        params = sum(p.numel() for p in model.parameters())
        decay = set(Trainer.get_decay_parameter_names(None, model))  # untimed: the input of the grouping

        def group():  # type: ignore[no-untyped-def]
            normalize.cache_clear()  # as a run's one call finds it: no name normalised yet
            plan = build_plan(model.named_parameters(), mapping, SETTINGS, 1e-5, 0.1, decay)  # noqa: B023
            check_plan(plan, "full")
            return plan

        def decay_names():  # type: ignore[no-untyped-def]
            return set(Trainer.get_decay_parameter_names(None, model))  # noqa: B023

        medians = timed({"decay": decay_names, "group": group}, runs)
        decay_time, group_time = medians["decay"], medians["group"]
        print(
            f"| Qwen2-VL-{size.upper()} | {tensors} | {params / 1e9:.2f}B | {decay_time * 1e3:.1f} | "
            f"{group_time * 1e3:.2f} | {group_time / tensors * 1e6:.2f} |"
        )


if __name__ == "__main__":
    main()
