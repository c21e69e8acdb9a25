"""Resuming: load a checkpoint's weights the way ``from_pretrained`` names them, verify every tensor, and never load
optimizer state into other param groups.

HF's Trainer (transformers >= 4.52) reloads a full fine-tuning checkpoint with a plain ``load_state_dict``; the
checkpoint is in the hub layout (``visual.*``, ``model.layers.*``) and the model is not (``model.visual.*``,
``model.language_model.*``), so nothing loads and training goes on from the initial weights with the checkpoint's
optimizer state. Here those checkpoints are loaded through the model's own key conversion, in place (parameters
keep their identity, ``requires_grad`` and device), one file at a time, and then accounted for
(:mod:`lf_multilr.training.resume`). Adapter checkpoints are loaded by PEFT as before and then checked value by
value. FSDP, DeepSpeed and SageMaker checkpoints are left to their own loaders.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from functools import wraps
from typing import Any

import torch

from lf_multilr.errors import ConfigError
from lf_multilr.grouping.digests import lr_changes, mismatch
from lf_multilr.training.resume import (
    Account,
    adapter_file,
    has_adapter,
    lr_message,
    refuse_incomplete,
    refuse_other_layout,
    weight_files,
)

from . import guard
from ._state import logger


def _is_peft(model: Any) -> bool:
    try:
        from peft import PeftModel
    except ImportError:
        return False
    return isinstance(model, PeftModel)


def _plain(model: Any) -> bool:
    """A transformers model (not a PEFT or value-head wrapper), the kind whose keys ``from_pretrained`` renames."""
    from transformers import PreTrainedModel

    return isinstance(model, PreTrainedModel)


def _own_loader_applies(trainer: Any) -> bool:
    """Whether a distributed backend loads the weights itself (then it is left alone)."""
    from transformers.utils import is_sagemaker_mp_enabled

    return bool(trainer.is_deepspeed_enabled or trainer.is_fsdp_enabled or is_sagemaker_mp_enabled())


def _read(path: str) -> dict[str, torch.Tensor]:
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path, device="cpu")
    return torch.load(path, map_location="cpu", weights_only=True)


def key_renamer(model: Any, own_keys: Iterable[str]) -> Callable[[str], tuple[str, bool]]:
    """``rename(checkpoint_key) -> (model_key, needs_tensor_conversion)``, as ``from_pretrained`` renames keys.

    transformers 5 describes renames as weight conversions (some also merge or split tensors); transformers 4
    as the model class's ``_checkpoint_conversion_mapping`` of regular expressions.
    """
    own = dict.fromkeys(own_keys, True)
    try:
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import WeightConverter, WeightRenaming, rename_source_key
    except ImportError:
        mapping = getattr(model, "_checkpoint_conversion_mapping", None) or {}

        def rename_v4(key: str) -> tuple[str, bool]:
            for pattern, replacement in mapping.items():
                renamed, count = re.subn(pattern, replacement, key)
                if count:
                    return renamed, False
            return key, False

        return rename_v4

    conversions = getattr(model, "_weight_conversions", None) or get_model_conversion_mapping(model)
    conversions = copy.deepcopy(list(conversions))  # matching marks them as used; keep the model's untouched
    renamings = [c for c in conversions if isinstance(c, WeightRenaming)]
    converters = [c for c in conversions if isinstance(c, WeightConverter)]
    prefix = getattr(model, "base_model_prefix", None) or None

    def rename_v5(key: str) -> tuple[str, bool]:
        renamed, pattern = rename_source_key(key, renamings, converters, prefix, own)
        return renamed, pattern is not None

    return rename_v5


def renamed_in_place(rename: Callable[[str], tuple[str, bool]], key: str, checkpoint: str, model_key: str) -> str:
    """The model's name for a checkpoint tensor ``key``; refused where the tensor must be merged or split to fit
    (``model_key``: how the fix names the config key that starts a new run from the checkpoint)."""
    new_key, converted = rename(key)
    if converted:
        raise ConfigError(
            "resume_from_checkpoint",
            checkpoint,
            f"its tensor `{key}` must be merged or split to fit this model (`{new_key}`), which lf-multilr cannot do "
            "in place",
            f"start a new run from its weights ({model_key})",
        )
    return new_key


def load_full_checkpoint(model: Any, checkpoint: str, files: list[str]) -> Account:
    """Load every file of a full-model checkpoint into ``model`` in place; the account of what was filled."""
    named = model.state_dict(keep_vars=True)
    account = Account({name: tensor.untyped_storage().data_ptr() for name, tensor in named.items()})
    rename = key_renamer(model, named)
    for path in files:
        renamed: dict[str, torch.Tensor] = {}
        for key, tensor in _read(path).items():
            new_key = renamed_in_place(rename, key, checkpoint, "`model_name_or_path` set to the checkpoint")
            if new_key in named:
                renamed[new_key] = tensor
            else:
                account.unexpected.append(key)
        model.load_state_dict(renamed, strict=False)
        account.loaded.update(renamed)
        del renamed
    return account


def check_adapter(model: Any, checkpoint: str) -> None:
    """After PEFT loaded an adapter checkpoint: every tensor the run trains holds the checkpoint's value."""
    from peft import get_peft_model_state_dict

    saved = _read(adapter_file(checkpoint))
    current = get_peft_model_state_dict(model, adapter_name=model.active_adapters[0])
    account = Account({name: name for name in current})
    for name, tensor in saved.items():
        if name not in current:
            account.unexpected.append(name)
        elif torch.equal(current[name].detach().cpu(), tensor.to(current[name].dtype)):
            account.loaded.add(name)
    refuse_incomplete(checkpoint, account)


def _ignored(model: Any) -> set[str]:
    return set(getattr(model, "_keys_to_ignore_on_save", None) or ())


def wrap_load_from_checkpoint(original: Any) -> Any:
    @wraps(original)
    def _load_from_checkpoint(self: Any, resume_from_checkpoint: str, model: Any = None, *args: Any) -> Any:
        target = self.model if model is None else model
        files = weight_files(resume_from_checkpoint)
        if _own_loader_applies(self) or not files or not _plain(target):
            result = original(self, resume_from_checkpoint, model, *args)
            if _is_peft(target) and not _own_loader_applies(self) and has_adapter(resume_from_checkpoint):
                check_adapter(target, resume_from_checkpoint)
            return result
        logger().info_rank0(f"lf-multilr: loading {resume_from_checkpoint} with from_pretrained's key conversion")
        account = load_full_checkpoint(target, resume_from_checkpoint, files)
        ignored = _ignored(target)
        refuse_incomplete(resume_from_checkpoint, account, ignored)
        if ignored:  # as HF does when only the keys it leaves out of checkpoints are missing
            target.tie_weights()
        return None

    return _load_from_checkpoint


def wrap_load_best_model(original: Any) -> Any:
    @wraps(original)
    def _load_best_model(self: Any, *args: Any, **kwargs: Any) -> Any:
        best = self.state.best_model_checkpoint
        files = weight_files(best) if best else []
        if _own_loader_applies(self) or not files or not _plain(self.model):
            return original(self, *args, **kwargs)
        logger().info_rank0(f"lf-multilr: loading the best model from {best} with from_pretrained's key conversion")
        account = load_full_checkpoint(self.model, best, files)
        refuse_incomplete(best, account, _ignored(self.model))
        return None

    return _load_best_model


def wrap_load_optimizer_and_scheduler(original: Any) -> Any:
    @wraps(original)
    def _load_optimizer_and_scheduler(self: Any, checkpoint: Any, *args: Any, **kwargs: Any) -> Any:
        optimizer = getattr(self, "optimizer", None)
        if checkpoint is None or optimizer is None or self.is_deepspeed_enabled:
            return original(self, checkpoint, *args, **kwargs)
        with checked_loading(optimizer, checkpoint, _is_peft(self.model)):
            return original(self, checkpoint, *args, **kwargs)

    return _load_optimizer_and_scheduler


@contextmanager
def checked_loading(optimizer: Any, checkpoint: str, lora: bool, weights_key: str | None = None) -> Iterator[None]:
    """While it lasts, ``optimizer.load_state_dict`` refuses a state saved for other param groups and names the LRs
    that stay in force (the checkpoint's); v0's and v1's resuming both load the optimizer state through it."""
    load = optimizer.load_state_dict

    def checked_load(state_dict: dict[str, Any], *load_args: Any, **load_kwargs: Any) -> Any:
        current = optimizer.param_groups
        why = mismatch(state_dict["param_groups"], current)
        if why is not None:
            refuse_other_layout(checkpoint, why, lora, weights_key)
        message = lr_message(checkpoint, lr_changes(state_dict["param_groups"], current))
        if message is not None:
            logger().warning_rank0(f"lf-multilr: {message}")
        loaded = load(state_dict, *load_args, **load_kwargs)
        guard.expect(optimizer.param_groups)  # the checkpoint's LRs are in force now, as the warning says
        return loaded

    optimizer.load_state_dict = checked_load
    try:
        yield
    finally:
        del optimizer.load_state_dict


@contextmanager
def hub_layout_loading(model: Any, checkpoint: str) -> Iterator[None]:
    """While it lasts, ``model.load_state_dict`` takes a state dict in the saved (hub) layout, renamed as
    ``from_pretrained`` renames it. LLaMA-Factory's v1 engine reloads a full checkpoint with a plain
    ``load_state_dict`` of the saved files, the same fault as HF's Trainer (see the module's docstring): nothing
    matches, and it stops on the missing keys."""
    if not _plain(model):
        yield
        return
    load = model.load_state_dict
    rename = key_renamer(model, model.state_dict().keys())

    def renamed_load(state_dict: Mapping[str, torch.Tensor], *load_args: Any, **load_kwargs: Any) -> Any:
        fix = "`model` set to the checkpoint's `model` folder"
        renamed = {renamed_in_place(rename, key, checkpoint, fix): tensor for key, tensor in state_dict.items()}
        return load(renamed, *load_args, **load_kwargs)

    model.load_state_dict = renamed_load
    try:
        yield
    finally:
        del model.load_state_dict
