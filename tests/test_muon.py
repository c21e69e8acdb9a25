"""LLaMA-Factory's Muon (`use_muon`) with the module keys: its own class and split, each module at its LR.

In process: the split against LLaMA-Factory's own `_create_muon_optimizer`, and each tensor's step against a stock Muon
at that tensor's LR and weight decay. End to end: real `llamafactory-cli train` runs, stock and with the keys.
"""

import copy

import pytest
import torch

from tools.testing import base_config, clean_env, log_records, owner, train, weights, write_config

FAMILY = "qwen2_vl"
LRS = {"vision_tower_lr": 1.0e-4, "multi_modal_projector_lr": 1.0e-3, "language_model_lr": 1.0e-2}


@pytest.fixture
def prepared(tiny, data, tmp_path):
    """LLaMA-Factory's parsed args and a loaded tiny model with the vision tower unfrozen, in this process."""
    from llamafactory.hparams import get_train_args
    from transformers import AutoModelForImageTextToText

    def make(**overrides):
        config = {**base_config(tiny(FAMILY), data, FAMILY, tmp_path / "out"), "use_muon": True, **overrides}
        _, _, training_args, finetuning_args, _ = get_train_args(config)
        model = AutoModelForImageTextToText.from_pretrained(tiny(FAMILY))
        return model, training_args, finetuning_args

    return make


def stock_muon(model, training_args):
    """The optimizer stock LLaMA-Factory builds for `use_muon` (its factory's Muon branch, unpatched)."""
    from llamafactory.train.trainer_utils import _create_muon_optimizer

    return _create_muon_optimizer(model, training_args)


@pytest.mark.targets  # on LLaMA-Factory main too: its Muon split is the reference
def test_each_module_is_split_as_llamafactorys_muon_splits_the_model(prepared, tiny, data, tmp_path):
    from llamafactory.train.trainer_utils import create_custom_optimizer

    from lf_multilr.patches.dry_run import make_plan
    from lf_multilr.reports.table import format_table

    model, training_args, finetuning_args = prepared(**LRS)
    ours = create_custom_optimizer(model, training_args, finetuning_args)
    stock = stock_muon(model, training_args)
    assert type(ours) is type(stock) and type(ours).__module__ == "llamafactory.third_party.muon.muon"
    names = {id(param): name for name, param in model.named_parameters()}
    (stock_group,) = stock.param_groups
    stock_muon_names = {names[id(p)] for p in stock_group["params"] if stock.state[p]["use_muon"]}
    ours_by_role: dict[str, set[str]] = {"muon": set(), "adamw": set()}
    counts: dict[tuple[str, str], int] = {}
    for group in ours.param_groups:
        assert group["name"] == f"{group['module']}/{group['role']}" and group["role"] in ours_by_role
        for param in group["params"]:
            assert ours.state[param]["use_muon"] is (group["role"] == "muon")  # the class's own marks
            ours_by_role[group["role"]].add(names[id(param)])
            counts[group["module"], group["role"]] = counts.get((group["module"], group["role"]), 0) + 1
    assert ours_by_role["muon"] == stock_muon_names
    assert ours_by_role["adamw"] == {names[id(p)] for p in stock_group["params"]} - stock_muon_names
    # every module has both kinds here, and the groups carry its LR as Muon's `lr` and its weight decay as Muon's `wd`
    assert set(counts) == {(m, r) for m in LRS_BY_MODULE for r in ("muon", "adamw")}
    held = {(g["module"], g["lr"], g["wd"]) for g in ours.param_groups}
    assert held == {(module, lr, 0.0) for module, lr in LRS_BY_MODULE.items()}
    # the plan (`lf-multilr plan`) shows the same split, per module
    plan = make_plan({**base_config(tiny(FAMILY), data, FAMILY, tmp_path / "plan"), "use_muon": True, **LRS})
    table = format_table(plan)
    for module in LRS_BY_MODULE:
        line = next(line.strip() for line in table.splitlines() if line.strip().startswith(f"{module}: Muon"))
        assert line.startswith(f"{module}: Muon {counts[module, 'muon']} tensors (")
        assert f"AdamW {counts[module, 'adamw']} tensors (" in line
    assert "every tensor decays at its module's weight_decay" in table
    assert [(g["name"], len(g["params"])) for g in plan.param_groups] == [
        (g["name"], len(g["params"])) for g in ours.param_groups
    ]


LRS_BY_MODULE = {"language_model": 1.0e-2, "vision_tower": 1.0e-4, "multi_modal_projector": 1.0e-3}


def expected_lr_wd(name):
    """A tensor's LR and weight decay under LRS, `vision_tower_weight_decay: 0.1`, `weight_decay: 0.01` and
    `vision_tower_lr_layer_decay: 0.5`, stated independently: the tiny tower has two blocks, so block 1 trains at the
    vision LR, block 0 at half, the patch embedding below them at a quarter."""
    module = owner(FAMILY, name)
    if module != "vision_tower":
        return LRS_BY_MODULE[module], 0.01
    factor = 0.5 if ".blocks.0." in name else 0.25 if "patch_embed" in name else 1.0
    assert factor == 0.25 or ".blocks." in name, name
    return LRS_BY_MODULE[module] * factor, 0.1


@pytest.mark.targets
def test_every_tensor_steps_as_stock_muon_at_its_modules_lr_and_weight_decay(prepared):
    """Two steps on fixed gradients: each tensor ends exactly where stock Muon, built with that tensor's LR and weight
    decay as the run's, takes it (the Muon matrices and the AdamW rest alike; weight decay on every tensor)."""
    from llamafactory.train.trainer_utils import create_custom_optimizer

    keys = {**LRS, "vision_tower_weight_decay": 0.1, "vision_tower_lr_layer_decay": 0.5}
    model, training_args, finetuning_args = prepared(weight_decay=0.01, **keys)
    start = {name: param.detach().clone() for name, param in model.named_parameters()}
    ours = create_custom_optimizer(model, training_args, finetuning_args)
    settings = {expected_lr_wd(name) for name in start}
    assert len(settings) == 5
    stocks = {}
    for lr, wd in settings:  # one stock run per (LR, weight decay), on its own copy of the model
        copy_model = copy.deepcopy(model)
        args = copy.copy(training_args)
        args.learning_rate, args.weight_decay = lr, wd
        stocks[lr, wd] = (copy_model, stock_muon(copy_model, args))
    torch.manual_seed(0)
    for _ in range(2):
        grads = {name: torch.randn_like(param) for name, param in model.named_parameters()}
        for each, optimizer in [(model, ours), *stocks.values()]:
            for name, param in each.named_parameters():
                param.grad = grads[name].clone()
            optimizer.step()
    moved = 0
    for name, param in model.named_parameters():
        stock_model = stocks[expected_lr_wd(name)][0]
        assert torch.equal(param, dict(stock_model.named_parameters())[name]), name
        moved += not torch.equal(param, start[name])
    assert moved == len(start)


# End to end: stock `use_muon` for two steps (its first step saved as a checkpoint), the keys all at `learning_rate`
# for two steps, and three module LRs (the projector warming up over two steps, the vision tower decayed by layer) for
# one step. One step of Muon is linear in the LR (Newton-Schulz orthogonalises the momentum, then the update and the
# weight decay are scaled by the LR; the AdamW part's first step likewise), so each tensor's first step is the stock
# first step times its LR over `learning_rate`.
COMMON = {"use_muon": True, "weight_decay": 0.01, "adam_epsilon": 1.0e-8}


@pytest.fixture(scope="module")
def muon_runs(tiny, data, tmp_path_factory):
    folder = tmp_path_factory.mktemp("muon")
    (folder / "hf_home").mkdir()
    env = clean_env(folder / "hf_home")
    two = {"max_steps": 2, "save_strategy": "steps", "save_steps": 1, "save_only_model": True}
    same = {key: 1.0e-3 for key in LRS}
    keyed = {**LRS, "multi_modal_projector_warmup_steps": 2, "vision_tower_lr_layer_decay": 0.5}
    runs = {}
    for name, overrides, run_env in (
        ("stock", two, {**env, "LF_MULTILR_DISABLE": "1"}),
        ("same", {**two, **same}, env),
        ("keyed", keyed, env),
    ):
        config, out = write_config(folder / name, tiny(FAMILY), data, FAMILY, **COMMON, **overrides)
        result = train(config, run_env)
        assert result.returncode == 0, result.stderr[-3000:]
        runs[name] = (result, out)
    return runs


@pytest.mark.slow
def test_module_lrs_equal_to_learning_rate_reproduce_stock_muon_exactly(muon_runs):
    (stock, stock_out), (same, same_out) = muon_runs["stock"], muon_runs["same"]
    assert "lf-multilr" not in stock.stdout + stock.stderr and "language_model/muon" not in stock.stdout
    assert "use_muon: LLaMA-Factory's Muon steps the 2-D matrices" in same.stdout
    losses = [[r["loss"] for r in log_records(out) if "loss" in r] for out in (same_out, stock_out)]
    assert len(losses[0]) == 2 and losses[0] == losses[1]
    for step in ("checkpoint-1", "."):
        stock_weights, same_weights = weights(stock_out / step), weights(same_out / step)
        assert all(torch.equal(same_weights[name], tensor) for name, tensor in stock_weights.items()), step
    assert any(
        not torch.equal(a, b)
        for a, b in zip(weights(stock_out / "checkpoint-1").values(), weights(stock_out).values(), strict=True)
    )


@pytest.mark.slow
def test_three_module_lrs_scale_each_tensors_muon_step_by_its_module_lr(muon_runs, tiny):
    (_, stock_out), (keyed, keyed_out) = muon_runs["stock"], muon_runs["keyed"]
    before, stock, ours = weights(tiny(FAMILY)), weights(stock_out / "checkpoint-1"), weights(keyed_out)
    ratios: dict[str, set[float]] = {}
    for name, start in before.items():
        stock_step, our_step = stock[name] - start, ours[name] - start
        if not stock_step.any():
            assert not our_step.any(), name
            continue
        lr, _ = expected_lr_wd(name)
        ratio = lr / 1.0e-3 * (0.5 if owner(FAMILY, name) == "multi_modal_projector" else 1.0)  # its warm-up: 1/2
        # float32 stores each weight to half an ulp (at most 1.2e-7 for these weights, below 2), in both runs
        assert torch.allclose(our_step, stock_step * ratio, rtol=1e-3, atol=1.2e-7 * (1 + ratio)), name
        assert our_step.abs().max() > 100 * 1.2e-7 * (1 + ratio), name  # a step the tolerance cannot hide
        ratios.setdefault(owner(FAMILY, name), set()).add(ratio)
    assert ratios == {"language_model": {10.0}, "multi_modal_projector": {0.5}, "vision_tower": {0.1, 0.05, 0.025}}
    (record,) = [r for r in log_records(keyed_out) if "loss" in r]
    assert record["lr/language_model"] == 1.0e-2 and record["lr/multi_modal_projector"] == 0.5e-3
    assert "language_model: Muon " in keyed.stdout
