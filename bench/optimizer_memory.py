"""Optimizer state memory: lf-multilr's module groups against stock LLaMA-Factory, in bytes.

Builds the optimizer both ways for the tiny Qwen2-VL (full fine-tuning, AdamW) through LLaMA-Factory's own
argument parser and `create_custom_optimizer` (stock: HF's two groups, as `Trainer.create_optimizer` builds
them), runs one step with the same gradients and sums the bytes of every state tensor.
Usage: python bench/optimizer_memory.py
Not order-sensitive (bench/order.py): it counts bytes of state tensors, which no run order or warm-up changes.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch
from transformers import AutoModelForImageTextToText, Trainer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import lf_multilr  # noqa: E402
from tools.tiny import build_model  # noqa: E402


def state_bytes(optimizer: torch.optim.Optimizer) -> int:
    return sum(v.numel() * v.element_size() for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v))


def one_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    torch.manual_seed(0)
    for param in model.parameters():
        param.grad = torch.randn_like(param)
    optimizer.step()


def main() -> None:
    from llamafactory.hparams import get_train_args
    from llamafactory.train.trainer_utils import create_custom_optimizer

    with tempfile.TemporaryDirectory() as folder:
        path = build_model("qwen2_vl", Path(folder) / "model")
        args = {
            "model_name_or_path": str(path),
            "stage": "sft",
            "do_train": True,
            "finetuning_type": "full",
            "freeze_vision_tower": False,
            "freeze_multi_modal_projector": False,
            "dataset": "x",
            "output_dir": str(Path(folder) / "out"),
            "weight_decay": 0.1,
            "report_to": "none",
            "vision_tower_lr": 2e-6,
            "multi_modal_projector_lr": 5e-6,
            "language_model_lr": 1e-5,
        }
        _, _, training_args, finetuning_args, _ = get_train_args(args)

        model = AutoModelForImageTextToText.from_pretrained(path)
        ours = create_custom_optimizer(model, training_args, finetuning_args)
        one_step(model, ours)

        lf_multilr.revert()
        stock_model = AutoModelForImageTextToText.from_pretrained(path)
        decay = set(Trainer.get_decay_parameter_names(None, stock_model))
        named = list(stock_model.named_parameters())
        groups = [
            {"params": [p for n, p in named if n in decay], "weight_decay": 0.1},
            {"params": [p for n, p in named if n not in decay], "weight_decay": 0.0},
        ]
        cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(training_args, stock_model)
        stock = cls(groups, **kwargs)
        one_step(stock_model, stock)
        lf_multilr.apply()

    print("| optimizer | param groups | state tensors | state bytes |")
    print("|---|---|---|---|")
    for name, optimizer in (("stock (HF default groups)", stock), ("lf-multilr (module groups)", ours)):
        tensors = sum(len(s) for s in optimizer.state.values())
        print(f"| {name} | {len(optimizer.param_groups)} | {tensors} | {state_bytes(optimizer)} |")
    print(f"\nequal: {state_bytes(stock) == state_bytes(ours)}")


if __name__ == "__main__":
    main()
