"""LLaMA-Factory's optional optimizers and bitsandbytes with the module keys, in .venv-optim (marked `optim`: the
packages are installed there only, since every LLaMA-Factory start-up imports GaLore and APOLLO where they are)."""

import pytest
import torch

from tools.testing import base_config

pytestmark = pytest.mark.optim

FAMILY = "qwen2_vl"
LRS = {"vision_tower_lr": 1.0e-4, "multi_modal_projector_lr": 1.0e-3, "language_model_lr": 1.0e-2}
LRS_BY_MODULE = {"language_model": 1.0e-2, "vision_tower": 1.0e-4, "multi_modal_projector": 1.0e-3}


@pytest.fixture
def prepared(tiny, data, tmp_path):
    """LLaMA-Factory's parsed args and a loaded tiny model with the vision tower unfrozen, in this process."""
    from llamafactory.hparams import get_train_args
    from transformers import AutoModelForImageTextToText

    def make(**overrides):
        config = {**base_config(tiny(FAMILY), data, FAMILY, tmp_path / "out"), **overrides}
        _, _, training_args, finetuning_args, _ = get_train_args(config)
        model = AutoModelForImageTextToText.from_pretrained(tiny(FAMILY))
        return model, training_args, finetuning_args

    return make


def registered_overrides():
    """What bitsandbytes' GlobalOptimManager holds: (module, parameter name, config) per override."""
    import bitsandbytes

    manager = bitsandbytes.optim.GlobalOptimManager.get_instance()
    return [(id(module), name, config) for module, name, config in manager.module_weight_config_triple]


def reset_overrides():
    import bitsandbytes

    bitsandbytes.optim.GlobalOptimManager.get_instance().initialize()


@pytest.mark.parametrize("optim", ["adamw_8bit", "paged_lion_8bit"])
def test_an_8bit_optimizer_keeps_hf_s_32bit_state_for_every_embedding(optim, prepared):
    """HF's Trainer registers 32-bit optimizer state for each nn.Embedding when it builds an 8-bit bitsandbytes
    optimizer itself (no keys); lf-multilr registers the same when it builds it, and the embedding's state is then
    32-bit after a step on CPU, the other large tensors' 8-bit."""
    from llamafactory.train.trainer_utils import create_custom_optimizer
    from transformers import Trainer

    model, training_args, finetuning_args = prepared(optim=optim)  # no key: HF builds the optimizer
    reset_overrides()
    Trainer(model=model, args=training_args).create_optimizer()
    stock = registered_overrides()
    embeddings = [m for m in model.modules() if isinstance(m, torch.nn.Embedding)]
    assert embeddings and stock == [(id(m), "weight", {"optim_bits": 32}) for m in embeddings]

    reset_overrides()
    model, training_args, finetuning_args = prepared(optim=optim, **LRS)
    optimizer = create_custom_optimizer(model, training_args, finetuning_args)
    assert "bitsandbytes" in type(optimizer).__module__ and {g["module"] for g in optimizer.param_groups} == set(
        LRS_BY_MODULE
    )
    embeddings = [m for m in model.modules() if isinstance(m, torch.nn.Embedding)]
    assert registered_overrides() == [(id(m), "weight", {"optim_bits": 32}) for m in embeddings]

    for param in model.parameters():
        param.grad = torch.randn_like(param)
    optimizer.step()
    big = {name: p for name, p in model.named_parameters() if p.numel() >= 4096}  # bitsandbytes' 8-bit minimum
    embedding_weights = {id(m.weight) for m in embeddings}
    assert any(id(p) not in embedding_weights for p in big.values())
    for name, param in big.items():
        want = torch.float32 if id(param) in embedding_weights else torch.uint8
        assert optimizer.state[param]["state1"].dtype == want, name
    reset_overrides()
