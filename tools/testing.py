"""What the tests and the benchmarks share: a clean environment for subprocesses, end-to-end runs of the real
``llamafactory-cli train`` on the project's tiny models, and a toy network with Qwen2-VL's parameter names.

Imported as ``tools.testing`` (the repository root is on the path in the dev environment, and pytest adds it).
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from safetensors.torch import load_file
from torch import nn

from lf_multilr.grouping.placement import ModuleMap

ROOT = Path(__file__).resolve().parents[1]
#: What transformers prints as it starts reading a model's weights (``from_pretrained``, INFO): a run refused before
#: any weight loads never prints it; every run that trains does (tests/test_train_e2e.py checks it does).
WEIGHTS_LOADING = "loading weights file"

BIN = Path(sys.executable).parent
#: The installed LLaMA-Factory: 0.9.5 in .venv runs the full suite, 0.9.4 in .venv-lf094 the `core` tests.
LLAMAFACTORY = importlib.metadata.version("llamafactory")
TRANSFORMERS_4 = importlib.metadata.version("transformers").startswith("4.")
INHERITED_OUT = (
    *("FORCE_TORCHRUN", "USE_V1", "CUDA_VISIBLE_DEVICES", "NPROC_PER_NODE", "NNODES", "NODE_RANK", "MASTER_ADDR"),
    *("MASTER_PORT", "LF_MULTILR_DISABLE", "USE_MCA", "USE_MEGATRON_BRIDGE"),
)


def full_suite_only(what: str) -> Any:
    """Skip ``what`` where the installed LLaMA-Factory is not one the full suite verifies (0.9.5 and main)."""
    import pytest

    from lf_multilr.compat import LLAMAFACTORY_FULL

    return pytest.mark.skipif(
        LLAMAFACTORY not in LLAMAFACTORY_FULL,
        reason=f"{what}: verified on LLaMA-Factory {', '.join(LLAMAFACTORY_FULL)} only, installed {LLAMAFACTORY}",
    )


def clean_env(home: Path, **extra: str) -> dict[str, str]:
    """An environment for a CPU training subprocess: one thread, offline, its own HF_HOME."""
    env = {key: value for key, value in os.environ.items() if key not in INHERITED_OUT}
    env.update(
        OMP_NUM_THREADS="1",
        HF_HOME=str(home),
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        DISABLE_VERSION_CHECK=os.environ.get("DISABLE_VERSION_CHECK", "0"),  # 1 on the transformers 5.7.0 leg
        PYTHONWARNINGS="ignore",
    )
    # DeepSpeed builds its CPU ops just in time into torch's extension folder: one per environment, or two
    # environments running tests side by side rebuild each other's.
    env.setdefault("TORCH_EXTENSIONS_DIR", str(Path(sys.prefix) / "torch_extensions"))
    env.update(extra)
    return env


def run(
    args: list[str], env: dict[str, str], cwd: Path | None = None, timeout: int = 600
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    if env.get("DISABLE_VERSION_CHECK") == "1":  # the .venv-t57 leg: LLaMA-Factory's notice of it, on stdout
        result.stdout = "".join(line for line in result.stdout.splitlines(True) if VERSION_CHECK_OFF not in line)
    return result


#: What LLaMA-Factory prints (to stdout, at its first import) when DISABLE_VERSION_CHECK=1 lets it run on a newer
#: transformers than it pins, as the .venv-t57 leg does.
VERSION_CHECK_OFF = "Version checking has been disabled, may lead to unexpected behaviors."


TEMPLATE = {
    "qwen2_vl": "qwen2_vl",
    "qwen2_5_vl": "qwen2_vl",
    "qwen3_vl": "qwen3_vl_nothink",
    "llava": "llava",
    "llava_next": "llava_next",
    "gemma3": "gemma3",
    "qwen2_audio": "qwen2_audio",
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


def step_records(output_dir: Path) -> list[dict[str, Any]]:
    """The training steps' records in HF's own log (``trainer_state.json``): ``grad_norm`` and ``learning_rate``
    are there, where LLaMA-Factory's ``trainer_log.jsonl`` leaves the first out and names the second ``lr``."""
    history = json.loads((output_dir / "trainer_state.json").read_text())["log_history"]
    return [record for record in history if "loss" in record]


def weights(model_dir: Path) -> dict[str, torch.Tensor]:
    """A saved full model's parameters under their in-memory names (transformers 5 saves the hub layout)."""
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32)
    return {name: param.detach().clone() for name, param in model.named_parameters()}


def adapter(output_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(output_dir / "adapter_model.safetensors"))


def owner(model_type: str, name: str) -> str:
    """The module lf-multilr gives ``name`` in ``model_type``: the product's lookup (LLaMA-Factory's registry keys,
    the table's priority where they overlap, lf-multilr's supplement), ``other`` for a type the registry lacks."""
    from lf_multilr.patches.registry import module_map

    mapping = module_map(model_type)
    return "other" if mapping is None else mapping.owner(name)


#: What float32 keeps of one step: a weight of magnitude below 2 (these tiny models' norms start at 1) stores w - lr to
#: within half its ulp, 6e-8, which is 0.3% of a 2e-5 step.
ROUNDING = 6e-8


def one_step(lr: float, count: int = 1) -> Any:
    """``count`` tensors' max |dW| after one AdamW step at ``lr`` (epsilon 1e-20, no weight decay), as stored."""
    return pytest.approx([lr] * count, rel=1e-3, abs=ROUNDING)


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


# A toy network with the parameter names of a Qwen2-VL, for tests that need no LLaMA-Factory.

QWEN2_VL = ModuleMap.of(
    "qwen2_vl", ["visual.merger"], ["visual.patch_embed", "visual.blocks"], ["language_model", "lm_head"]
)


class Visual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.patch_embed = nn.Linear(4, 8, bias=False)
        self.blocks = nn.ModuleList([nn.Sequential(nn.LayerNorm(8), nn.Linear(8, 8)) for _ in range(2)])
        self.merger = nn.Sequential(nn.LayerNorm(8), nn.Linear(8, 6))


class Inner(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.visual = Visual()
        self.language_model = nn.Sequential(nn.Embedding(10, 6), nn.Linear(6, 6), nn.LayerNorm(6))


class Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.model = Inner()
        self.lm_head = nn.Linear(6, 10, bias=False)
        self.v_head = nn.Linear(6, 1)  # matches no registry key: lands in `other`

    def forward(self, pixels: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        visual = self.model.visual
        x = visual.patch_embed(pixels)
        for block in visual.blocks:
            x = block(x)
        image = visual.merger(x).mean(0)
        hidden = self.model.language_model(tokens) + image
        return self.lm_head(hidden).sum() + self.v_head(hidden).sum()


def decay_names(model: nn.Module) -> set[str]:
    """HF's default rule, restated for the toy: no decay for biases and LayerNorm weights."""
    norms = {f"{name}.weight" for name, module in model.named_modules() if isinstance(module, nn.LayerNorm)}
    return {name for name, _ in model.named_parameters() if "bias" not in name and name not in norms}


def rank_signature(groups: int) -> re.Pattern[str]:
    """The line each of two ranks says of its ``groups`` param groups; ``findall`` gives (rank, signature) pairs."""
    return re.compile(
        rf"lf-multilr: rank (\d) of 2: {groups} param groups, signature ([0-9a-f]{{16}}), the same on every rank"
    )
