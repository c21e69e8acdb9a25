"""Helpers for end-to-end runs of the real ``llamafactory-cli train`` on the project's tiny models."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import load_file

from conftest import BIN, run

TEMPLATE = {
    "qwen2_vl": "qwen2_vl",
    "qwen2_5_vl": "qwen2_vl",
    "qwen3_vl": "qwen3_vl_nothink",
    "llava": "llava",
    "llava_next": "llava_next",
    "gemma3": "gemma3",
}
PROJECTOR_COPY = {
    "qwen2_vl": "merger",
    "qwen2_5_vl": "merger",
    "qwen3_vl": "merger",
    "llava": "multi_modal_projector",
    "llava_next": "multi_modal_projector",
    "gemma3": "multi_modal_projector",
}


def base_config(model: Path, data: Path, family: str, output_dir: Path) -> dict[str, Any]:
    """The arguments every test run shares: ``family``'s tiny model, everything unfrozen, full fine-tuning."""
    return {
        "model_name_or_path": str(model),
        "stage": "sft",
        "do_train": True,
        "finetuning_type": "full",
        "freeze_vision_tower": False,
        "freeze_multi_modal_projector": False,
        "dataset": "tiny_mm",
        "dataset_dir": str(data),
        "template": TEMPLATE[family],
        "output_dir": str(output_dir),
        "report_to": "none",
    }


def write_config(tmp_path: Path, model: Path, data: Path, family: str, **overrides: Any) -> tuple[Path, Path]:
    """A training YAML for ``family`` (full fine-tuning, everything unfrozen, one constant-LR step by default)."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    output_dir = tmp_path / "out"
    config: dict[str, Any] = {
        **base_config(model, data, family, output_dir),
        "cutoff_len": 256,
        "max_samples": 16,
        "overwrite_cache": True,
        "preprocessing_num_workers": 1,
        "logging_steps": 1,
        "per_device_train_batch_size": 2,
        "learning_rate": 1.0e-3,
        "max_steps": 1,
        "lr_scheduler_type": "constant",
        "weight_decay": 0.0,
        "adam_epsilon": 1.0e-20,
        "save_strategy": "no",
        "seed": 0,
    }
    config.update(overrides)
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(config))
    return path, output_dir


def train(config: Path, env: dict[str, str], *extra: str, cli: str = "llamafactory-cli") -> Any:
    return run([str(BIN / cli), "train", str(config), *extra], env, cwd=config.parent)


def log_records(output_dir: Path) -> list[dict[str, Any]]:
    lines = (output_dir / "trainer_log.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def weights(model_dir: Path) -> dict[str, torch.Tensor]:
    """A saved full model's parameters under their in-memory names (transformers 5 saves the hub layout)."""
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32)
    return {name: param.detach().clone() for name, param in model.named_parameters()}


def adapter(output_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(output_dir / "adapter_model.safetensors"))


def owner(model_type: str, name: str) -> str:
    """The module LLaMA-Factory's registry gives ``name`` (substring match, projector first)."""
    from llamafactory.model.model_utils.visual import COMPOSITE_MODELS

    entry = COMPOSITE_MODELS[model_type]
    projector = getattr(entry, "projector_keys", None) or [entry.projector_key]  # one `projector_key` before 0.9.5
    for module, keys in (
        ("multi_modal_projector", projector),
        ("vision_tower", entry.vision_model_keys),
        ("language_model", entry.language_model_keys),
    ):
        if any(key in name for key in keys):
            return module
    return "other"


def max_steps_by_module(
    model_type: str, before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]
) -> dict[str, list[float]]:
    """Per module, the max |dW| of every tensor that changed."""
    steps: dict[str, list[float]] = {}
    for name, tensor in after.items():
        step = (tensor - before[name]).abs().max().item()
        if step > 0:
            steps.setdefault(owner(model_type, name), []).append(step)
    return steps


def zero_config(stage: int, **blocks: Any) -> dict[str, Any]:
    """LLaMA-Factory's examples/deepspeed/ds_z{2,3}_config.json, the essentials (no optimizer, no scheduler)."""
    zero: dict[str, Any] = {"stage": stage, "overlap_comm": False, "contiguous_gradients": True}
    if stage == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    return {
        "train_batch_size": "auto",
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
        "zero_allow_untested_optimizer": True,
        "fp16": {"enabled": "auto"},
        "bf16": {"enabled": "auto"},
        "zero_optimization": zero,
        **blocks,
    }


RESUMABLE = {  # four steps of warm-up + cosine with weight decay, a checkpoint every two steps
    "max_steps": 4,
    "save_steps": 2,
    "save_strategy": "steps",
    "lr_scheduler_type": "cosine",
    "warmup_steps": 1,
    "weight_decay": 0.01,
}


def logged_steps(output_dir: Path) -> dict[int, dict[str, float]]:
    """The loss and the ``lr/<module>`` values each training step logged, by step (``trainer_log.jsonl``)."""
    return {
        r["current_steps"]: {k: v for k, v in r.items() if k.startswith("lr/") or k == "loss"}
        for r in log_records(output_dir)
        if "loss" in r
    }
