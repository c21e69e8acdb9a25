"""What resuming from a checkpoint must restore, and how to say when it does not.

HF's Trainer reloads a full fine-tuning checkpoint with a plain ``load_state_dict``, but ``save_pretrained``
wrote it in the original (hub) key layout, so on models that ``from_pretrained`` renames (Qwen2-VL, LLaVA, ...)
no key matches and training goes on from the initial weights. lf-multilr loads such checkpoints through the
same renaming and then accounts for every tensor of the model here: each one must have come from the checkpoint,
directly or through a tensor it shares storage with (tied embeddings).
"""

from __future__ import annotations

import json
import os
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

from lf_multilr.errors import ConfigError

KEY = "resume_from_checkpoint"
SAFE_WEIGHTS, SAFE_INDEX = "model.safetensors", "model.safetensors.index.json"
WEIGHTS, WEIGHTS_INDEX = "pytorch_model.bin", "pytorch_model.bin.index.json"
ADAPTER_SAFE, ADAPTER_BIN = "adapter_model.safetensors", "adapter_model.bin"


def weight_files(checkpoint: str) -> list[str]:
    """The full-model weight files of ``checkpoint``, in order; empty when it holds none (an adapter, say)."""
    for single, index in ((SAFE_WEIGHTS, SAFE_INDEX), (WEIGHTS, WEIGHTS_INDEX)):
        if os.path.isfile(os.path.join(checkpoint, single)):
            return [os.path.join(checkpoint, single)]
        index_path = os.path.join(checkpoint, index)
        if os.path.isfile(index_path):
            with open(index_path) as handle:
                shards = sorted(set(json.load(handle)["weight_map"].values()))
            return [os.path.join(checkpoint, shard) for shard in shards]
    return []


def has_adapter(checkpoint: str) -> bool:
    return any(os.path.isfile(os.path.join(checkpoint, name)) for name in (ADAPTER_SAFE, ADAPTER_BIN))


def adapter_file(checkpoint: str) -> str:
    """The adapter weights of a LoRA checkpoint: safetensors if there, else the pickled ones."""
    path = os.path.join(checkpoint, ADAPTER_SAFE)
    return path if os.path.isfile(path) else os.path.join(checkpoint, ADAPTER_BIN)


@dataclass
class Account:
    """Which of the model's tensors a checkpoint filled, and which checkpoint tensors had no place."""

    #: model tensor name -> storage it lives in (tied tensors share one)
    storage: Mapping[str, object]
    loaded: set[str] = field(default_factory=set)
    unexpected: list[str] = field(default_factory=list)

    def missing(self, ignored: Collection[str] = ()) -> list[str]:
        """Model tensors the checkpoint did not fill, directly or through a tied tensor."""
        filled = {self.storage[name] for name in self.loaded if name in self.storage}
        return [
            name
            for name, where in self.storage.items()
            if name not in self.loaded and where not in filled and name not in ignored
        ]


def _sample(names: list[str]) -> str:
    shown = ", ".join(names[:3])
    return shown + (f", ... ({len(names)} in all)" if len(names) > 3 else "")


def refuse_incomplete(checkpoint: str, account: Account, ignored: Collection[str] = ()) -> None:
    """Raise when the checkpoint leaves any model tensor unfilled or holds tensors the model has no place for."""
    missing = account.missing(ignored)
    if not missing and not account.unexpected:
        return
    parts = []
    if missing:
        total = len(account.storage)
        parts.append(f"{len(missing)} of the model's {total} tensors are not filled from it ({_sample(missing)})")
    if account.unexpected:
        extra = account.unexpected
        parts.append(f"{len(extra)} of its tensors match nothing in the model ({_sample(extra)})")
    raise ConfigError(
        KEY,
        checkpoint,
        "resuming would train on from weights that are not the checkpoint's: " + "; ".join(parts),
        "resume with the same model and `finetuning_type` the checkpoint was saved with, or start a new run from "
        "its weights (`model_name_or_path` set to the checkpoint, without `resume_from_checkpoint`)",
    )


def refuse_other_layout(checkpoint: str, why: str, lora: bool, weights_key: str | None = None) -> None:
    """Raise because the checkpoint's optimizer state belongs to other param groups
    (see :mod:`lf_multilr.grouping.digests`). ``weights_key``: the config key a new run takes the weights from, where
    it is not LLaMA-Factory's default engine's (v1's ``model``)."""
    weights = weights_key or ("adapter_name_or_path" if lora else "model_name_or_path")
    raise ConfigError(
        KEY,
        checkpoint,
        f"its optimizer state was saved for other param groups ({why}), so loading it would give parameters "
        "another parameter's optimizer state",
        "resume with the lf-multilr keys (and freeze flags) the checkpoint was trained with, or start a new run "
        f"from its weights (`{weights}` set to the checkpoint, without `resume_from_checkpoint`)",
    )


def lr_message(checkpoint: str, changes: list[tuple[str, float, float]]) -> str | None:
    """One message naming the LRs in force after resuming, when the config's differ from the checkpoint's."""
    if not changes:
        return None
    modules: dict[str, tuple[float, float]] = {}
    for module, was, now in changes:
        modules.setdefault(module, (was, now))
    listed = "; ".join(f"{module}: {was:.3e} (config: {now:.3e})" for module, (was, now) in modules.items())
    return (
        f"resuming from {checkpoint}: the checkpoint's starting LRs stay in force, because the optimizer and "
        f"scheduler state it holds carry them: {listed}. To train with the config's LRs, start a new run from the "
        "checkpoint's weights instead of resuming."
    )
