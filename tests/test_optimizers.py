"""LLaMA-Factory's optional optimizers and bitsandbytes with the module keys, in .venv-optim (marked `optim`: the
packages are installed there only, since every LLaMA-Factory start-up imports GaLore and APOLLO where they are)."""

import pytest
import torch

from tools.testing import base_config, clean_env, log_records, owner, train, weights, write_config

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


def backward_with(model, grads):
    """One backward pass whose gradient on every trainable tensor is ``grads[name]``: it fires the post-accumulate-grad
    hooks where a layer-wise optimizer steps, as a training step's backward pass does."""
    loss = sum((param * grads[name]).sum() for name, param in model.named_parameters() if param.requires_grad)
    loss.backward()


LAYERWISE = {
    "galore": {"use_galore": True, "galore_layerwise": True, "galore_rank": 4, "galore_update_interval": 1},
    "apollo": {"use_apollo": True, "apollo_layerwise": True, "apollo_rank": 4, "apollo_update_interval": 1},
    "galore_adamw_layerwise": {"optim": "galore_adamw_layerwise", "optim_args": "rank=4,update_proj_gap=1"},
    "apollo_adamw_layerwise": {"optim": "apollo_adamw_layerwise", "optim_args": "rank=4,update_proj_gap=1"},
}


@pytest.mark.parametrize("form", list(LAYERWISE))
def test_layerwise_galore_and_apollo_step_every_tensor_in_its_hook_as_stock_at_its_modules_lr(form, prepared):
    """The layer-wise forms, LLaMA-Factory's flags and HF's `optim: *_layerwise` alike: one optimizer per tensor, each
    holding a one-tensor copy of its module's group (LR, weight decay, role), stepped in the tensor's gradient hook;
    after two backward passes every tensor ends exactly where the stock layer-wise optimizer, built with its LR and
    weight decay as the run's, takes it (APOLLO seeds each one-tensor optimizer as stock does)."""
    import copy

    from llamafactory.train import trainer_utils
    from transformers import Trainer

    from lf_multilr.training.layerwise import LayerwiseOptimizer, stepping_groups

    own = not form.startswith(("galore_", "apollo_"))
    kind = form.split("_")[0]
    settings = {**LAYERWISE[form], "gradient_accumulation_steps": 1}
    settings.update(
        {"optim": "adamw_torch", f"{kind}_target": "all"} if own else {"optim_target_modules": "all-linear"}
    )
    keys = KEYS if own else {**LRS, "vision_tower_lr_layer_decay": 0.5}  # HF's build applies no weight decay
    model, training_args, finetuning_args = prepared(weight_decay=0.01, **settings, **keys)
    ours = trainer_utils.create_custom_optimizer(model, training_args, finetuning_args)
    assert type(ours) is LayerwiseOptimizer and ours.step() is None
    groups = stepping_groups(ours)
    trainable = [param for param in model.parameters() if param.requires_grad]
    assert len(groups) == len(trainable) and all(len(group["params"]) == 1 for group in groups)
    assert {(g["module"], g["role"]) for g in groups} >= {("language_model", kind), ("vision_tower", kind)}
    names = {id(param): name for name, param in model.named_parameters()}
    for group in groups:
        lr, wd = expected_lr_wd(names[id(group["params"][0])], 0.01)
        assert group["lr"] == pytest.approx(lr)
        assert group["weight_decay"] == (wd if own and group["role"] != "no_decay" else 0.0)  # HF's: none

    def stock_for(copy_model, lr, wd):  # registers its own hooks on copy_model, as stock does
        args = copy.copy(training_args)
        args.learning_rate, args.weight_decay = lr, wd
        if own:
            return getattr(trainer_utils, f"_create_{kind}_optimizer")(copy_model, args, finetuning_args)
        cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(args, copy_model)
        return kwargs["optimizer_dict"]

    start = {name: param.detach().clone() for name, param in model.named_parameters()}
    pairs = {expected_lr_wd(name, 0.01) for name in start}
    stocks = {}
    for lr, wd in pairs:
        copy_model = copy.deepcopy(model)
        for param in copy_model.parameters():
            param._post_accumulate_grad_hooks = None  # deepcopy carries ours along; stock registers its own
        stocks[lr, wd] = (copy_model, stock_for(copy_model, lr, wd))
    torch.manual_seed(0)
    for _ in range(2):
        grads = {name: torch.randn_like(param) for name, param in model.named_parameters()}
        for each in [model, *(copy_model for copy_model, _ in stocks.values())]:
            backward_with(each, grads)
    for name, param in model.named_parameters():
        stock_model = stocks[expected_lr_wd(name, 0.01)][0]
        assert torch.equal(param, dict(stock_model.named_parameters())[name]), name
        assert not torch.equal(param, start[name]) or not param.requires_grad, name
        assert param.grad is None or not param.grad.any(), name  # stepped and cleared in the hook


# End to end: real `llamafactory-cli train` runs of GaLore with the keys, layer-wise and not, four cosine steps with a
# module that starts late, one that warms up and one that decays to a floor of its own. Per tensor, the layer-wise step
# is the same GaLore AdamW step on the same gradient (nothing clips: `max_grad_norm: 0`, since the layer-wise form
# steps before HF would clip), so both runs must train alike, the schedule's gates included.
GALORE_RUN = {
    "use_galore": True,
    "galore_rank": 4,
    "galore_update_interval": 1,
    "galore_target": "all",
    "optim": "adamw_torch",
    "max_grad_norm": 0.0,
    "weight_decay": 0.01,
    "adam_epsilon": 1.0e-8,
    "max_steps": 4,
    "lr_scheduler_type": "cosine",
    "save_strategy": "steps",
    "save_steps": 2,
    "save_only_model": True,
    **LRS,
    "vision_tower_start_step": 2,
    "multi_modal_projector_warmup_steps": 2,
    "language_model_min_lr": 1.0e-3,
}


@pytest.fixture(scope="module")
def galore_runs(tiny, data, tmp_path_factory):
    folder = tmp_path_factory.mktemp("galore")
    (folder / "hf_home").mkdir()
    env = clean_env(folder / "hf_home")
    runs = {}
    for name, layerwise in (("grouped", False), ("layerwise", True)):
        config, out = write_config(folder / name, tiny(FAMILY), data, FAMILY, **GALORE_RUN, galore_layerwise=layerwise)
        result = train(config, env)
        assert result.returncode == 0, result.stderr[-3000:]
        runs[name] = (result, out)
    return runs


@pytest.mark.slow
def test_layerwise_galore_trains_as_grouped_galore_with_each_modules_start_warmup_and_floor(galore_runs, tiny):
    (_, grouped_out), (layerwise, layerwise_out) = galore_runs["grouped"], galore_runs["layerwise"]
    records = {name: [r for r in log_records(out) if "loss" in r] for name, (_, out) in galore_runs.items()}
    assert len(records["layerwise"]) == 4
    for ours, theirs in zip(records["layerwise"], records["grouped"], strict=True):
        lrs = {key: value for key, value in ours.items() if key.startswith("lr/")}
        assert lrs == pytest.approx({key: theirs[key] for key in lrs}, rel=1e-9)
        assert ours["loss"] == pytest.approx(theirs["loss"], rel=1e-5)
        assert not any(key.startswith("grad_norm/") for key in ours)  # none left to measure: said in the table
    first, second, third = records["layerwise"][:3]
    assert first["lr/vision_tower"] == second["lr/vision_tower"] == 0.0 < third["lr/vision_tower"]
    assert first["lr/multi_modal_projector"] == pytest.approx(0.5e-3)  # half of its warm-up
    assert records["layerwise"][-1]["lr/language_model"] > 1.0e-3  # on its way down to its floor, not below it
    assert "layer-wise GaLore / APOLLO: grad_norm/<module> is not logged" in layerwise.stdout
    before = weights(tiny(FAMILY))
    at_two, end, grouped_end = weights(layerwise_out / "checkpoint-2"), weights(layerwise_out), weights(grouped_out)
    moved_by_two = {owner(FAMILY, name) for name, tensor in at_two.items() if not torch.equal(tensor, before[name])}
    assert moved_by_two == {"language_model", "multi_modal_projector"}  # the vision tower starts at step 2
    for name, tensor in end.items():
        assert not torch.equal(tensor, before[name]), name
        assert torch.allclose(tensor, grouped_end[name], rtol=0, atol=1e-6), name


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (
            {"use_galore": True, "galore_layerwise": True, "gradient_accumulation_steps": 4},
            r"`gradient_accumulation_steps: 4` is refused: `galore_layerwise: true` steps each tensor's optimizer "
            r"inside its gradient hook after every backward pass, so it cannot accumulate gradients.*Fix: set "
            r"`gradient_accumulation_steps: 1`.*or use `galore_layerwise: false`",
        ),
        (
            {"use_apollo": True, "apollo_layerwise": True, "resume_from_checkpoint": "ckpt"},
            r"`resume_from_checkpoint: 'ckpt'` is refused: `apollo_layerwise: true` keeps each tensor's optimizer "
            r"state outside the checkpoint.*restart every tensor's Adam moments and GaLore / APOLLO projection "
            r"from zero.*Fix: train afresh",
        ),
    ],
    ids=["galore accumulation", "apollo resume"],
)
def test_what_the_layerwise_forms_cannot_do_is_refused_before_the_model_loads(flags, message, tiny, data, tmp_path):
    from llamafactory.hparams import get_train_args

    config = {**base_config(tiny(FAMILY), data, FAMILY, tmp_path / "out"), "vision_tower_lr": 1e-5, **flags}
    with pytest.raises(ValueError, match=message):
        get_train_args(config)
    assert not (tmp_path / "out").exists()
