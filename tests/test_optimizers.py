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


def expected_lr_wd(name, weight_decay):
    """A tensor's LR and weight decay under LRS, `vision_tower_weight_decay: 0.1` and `vision_tower_lr_layer_decay:
    0.5`, stated independently: the tiny tower has two blocks, so block 1 trains at the vision LR, block 0 at half, the
    patch embedding below them at a quarter."""
    from tools.testing import owner

    module = owner(FAMILY, name)
    if module != "vision_tower":
        return LRS_BY_MODULE[module], weight_decay
    factor = 0.5 if ".blocks.0." in name else 0.25 if "patch_embed" in name else 1.0
    return LRS_BY_MODULE[module] * factor, 0.1


KEYS = {**LRS, "vision_tower_weight_decay": 0.1, "vision_tower_lr_layer_decay": 0.5}


def steps_match_stock(model, ours, stock_for, weight_decay, grad_hook=None, steps=2):
    """Step ``ours`` and one stock optimizer per (LR, weight decay) on the same fixed gradients; every tensor must end
    where the stock optimizer built with its LR and weight decay takes it, and every trainable one must move."""
    import copy

    start = {name: param.detach().clone() for name, param in model.named_parameters()}
    stocks = {}
    for lr, wd in {expected_lr_wd(name, weight_decay) for name in start}:
        copy_model = copy.deepcopy(model)
        stocks[lr, wd] = (copy_model, stock_for(copy_model, lr, wd))
    torch.manual_seed(0)
    for _ in range(steps):
        grads = {name: torch.randn_like(param) for name, param in model.named_parameters()}
        for each, optimizer in [(model, ours), *stocks.values()]:
            for name, param in each.named_parameters():
                if param.requires_grad:
                    param.grad = grads[name].clone()
                    if grad_hook is not None:
                        grad_hook(optimizer, param)
            optimizer.step()
            optimizer.zero_grad()
    moved = set()
    for name, param in model.named_parameters():
        stock_model = stocks[expected_lr_wd(name, weight_decay)][0]
        assert torch.equal(param, dict(stock_model.named_parameters())[name]), name
        if not torch.equal(param, start[name]):
            moved.add(name)
    return moved, len(stocks)


@pytest.mark.parametrize("kind", ["galore", "apollo"])
def test_every_tensor_steps_as_stock_galore_or_apollo_at_its_modules_lr(kind, prepared):
    """LLaMA-Factory's `use_galore` / `use_apollo` with the keys: each module's projected matrices and its other tensors
    in groups of their own, at its LR and weight decay; each tensor ends exactly where LLaMA-Factory's own optimizer,
    built with that LR and weight decay as the run's, takes it (APOLLO's random projections seeded as stock seeds
    them)."""
    import copy

    from llamafactory.train import trainer_utils

    flags = {f"use_{kind}": True, f"{kind}_rank": 4, f"{kind}_update_interval": 1, f"{kind}_target": "all"}
    flags["optim"] = "adamw_torch"  # LLaMA-Factory takes no other AdamW here (HF 5 defaults to the fused one)
    model, training_args, finetuning_args = prepared(weight_decay=0.01, **flags, **KEYS)
    ours = trainer_utils.create_custom_optimizer(model, training_args, finetuning_args)
    roles = {(group["module"], group["role"]) for group in ours.param_groups}
    assert {("language_model", kind), ("vision_tower", kind), ("language_model", "no_decay")} <= roles
    build = getattr(trainer_utils, f"_create_{kind}_optimizer")

    def stock_for(copy_model, lr, wd):
        args = copy.copy(training_args)
        args.learning_rate, args.weight_decay = lr, wd
        return build(copy_model, args, finetuning_args)

    moved, stocks = steps_match_stock(model, ours, stock_for, 0.01)
    assert stocks == 5 and moved == {name for name, param in model.named_parameters() if param.requires_grad}


def test_badam_ratio_mode_steps_each_module_at_its_lr_and_says_what_it_freezes(prepared):
    """BAdam's ratio mode takes the module groups; its sparse step at each tensor's LR matches stock BAdam built with
    that LR; the tensors it freezes itself, and its missing weight decay, are named in the plan's warnings."""
    import copy

    from llamafactory.train import trainer_utils

    from lf_multilr.config.settings import settings_of
    from lf_multilr.patches.optimizer import plan_for

    flags = {"use_badam": True, "badam_mode": "ratio", "badam_update_ratio": 0.5, "optim": "adamw_torch"}
    model, training_args, finetuning_args = prepared(**flags, **KEYS)
    torch.manual_seed(1)
    ours = trainer_utils.create_custom_optimizer(model, training_args, finetuning_args)
    assert type(ours).__name__ == "BlockOptimizerRatio"
    assert {group["module"] for group in ours.param_groups} == set(LRS_BY_MODULE)
    frozen = {name for name, param in model.named_parameters() if not param.requires_grad}
    assert frozen == {"model.visual.patch_embed.proj.weight", "lm_head.weight"}  # its first *embed* and *lm_head*

    def stock_for(copy_model, lr, wd):
        args = copy.copy(training_args)
        args.learning_rate, args.weight_decay = lr, wd
        torch.manual_seed(1)  # BAdam draws each tensor's mask seed at construction
        return trainer_utils._create_badam_optimizer(copy_model, args, finetuning_args)

    def sparse(optimizer, param):
        optimizer.sparse_hook(param)  # what its gradient hook does after a backward pass

    moved, _ = steps_match_stock(model, ours, stock_for, 0.0, grad_hook=sparse)
    trainable = {name for name, param in model.named_parameters() if param.requires_grad}
    assert moved == trainable and not moved & frozen

    model, training_args, finetuning_args = prepared(**flags, **KEYS)
    plan = plan_for(model, training_args, finetuning_args, settings_of(finetuning_args))
    warnings = "\n".join(plan.warnings)
    assert "freezes `model.visual.patch_embed.proj.weight` (vision_tower) itself" in warnings
    assert "freezes `lm_head.weight` (language_model) itself" in warnings
    assert "applies no weight decay: vision_tower_weight_decay do nothing" in warnings


@pytest.mark.parametrize("optim", ["galore_adamw", "apollo_adamw"])
def test_hf_s_galore_and_apollo_optims_step_each_tensor_at_its_modules_lr(optim, prepared):
    """HF's spelling (`optim: galore_adamw` / `apollo_adamw` with `optim_target_modules`) alike: HF's class, kwargs and
    projected tensors, split by module; every tensor ends where HF's own optimizer, built with its module's LR, takes
    it. HF's build applies no weight decay, so neither does this one (a module weight decay would be named in a
    warning)."""
    import copy

    from llamafactory.train import trainer_utils
    from transformers import Trainer

    settings = {"optim": optim, "optim_target_modules": "all-linear", "optim_args": "rank=4,update_proj_gap=1"}
    keys = {**LRS, "vision_tower_lr_layer_decay": 0.5}
    model, training_args, finetuning_args = prepared(weight_decay=0.01, **settings, **keys)
    ours = trainer_utils.create_custom_optimizer(model, training_args, finetuning_args)
    kind = optim.split("_")[0]
    assert {(g["module"], g["role"]) for g in ours.param_groups} >= {("language_model", kind), ("vision_tower", kind)}
    assert {g["weight_decay"] for g in ours.param_groups} == {0.0}

    def stock_for(copy_model, lr, wd):
        args = copy.copy(training_args)
        args.learning_rate = lr
        cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(args, copy_model)
        return cls(kwargs.pop("params"), **kwargs)

    moved, _ = steps_match_stock(model, ours, stock_for, 0.01)
    assert moved == {name for name, param in model.named_parameters() if param.requires_grad}
