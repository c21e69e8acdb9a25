"""LLaMA-Factory's v1 engine (``USE_V1=1``, LLaMA-Factory main): lf-multilr's keys in ``optim_config: {name: multilr}``
and its schedule in ``lr_scheduler_config: {name: multilr}``, through v1's own plugin registries.

Real ``llamafactory-cli sft`` runs of the tiny Qwen2.5-VL on the v1 engine's data format, measured per module; the
scheduler and the refusals in-process, through v1's own registries and parser.
"""

from __future__ import annotations

import importlib.util
import math
import os

import pytest
import torch
import yaml

from tools.testing import BIN, LLAMAFACTORY, ROOT, max_steps_by_module, one_step, owner, rank_signature, run, weights

FAMILY = "qwen2_5_vl"
#: The v1 engine with one registry per plugin family (LLaMA-Factory main); 0.9.5's refuses the plugins by name.
HAS_REGISTRIES = importlib.util.find_spec("llamafactory.v1") is not None and (
    importlib.util.find_spec("llamafactory.v1.plugins.trainer_plugins.optimizers") is not None
)
HAS_V1_TRAIN = importlib.util.find_spec("llamafactory.v1") is not None and LLAMAFACTORY not in ("0.9.4",)
pytestmark = pytest.mark.targets
needs_registries = pytest.mark.skipif(
    not HAS_REGISTRIES, reason=f"LLaMA-Factory {LLAMAFACTORY}'s v1 engine has no plugin families"
)
LRS = {"vision_tower_lr": 1.0e-4, "multi_modal_projector_lr": 1.0e-3, "language_model_lr": 1.0e-2}
EXPECTED = {"vision_tower": 1.0e-4, "multi_modal_projector": 1.0e-3, "language_model": 1.0e-2}
MODULES = tuple(EXPECTED)
#: What transformers prints as it loads a model's weights (a progress bar): a run refused before the model loads
#: never prints it.
LOADING = "Loading weights"


@pytest.fixture(scope="session")
def v1_data(tmp_path_factory):
    from tools import tiny as builder

    return builder.build_v1_dataset(tmp_path_factory.mktemp("v1_data"))


def v1_config(tmp_path, model, data, name="train", **overrides):
    """A v1 training YAML: one step at a constant LR of 1e-3, fp32, one process's batch of two samples."""
    out = tmp_path / f"out_{name}"
    config = {
        "model": str(model),
        "train_dataset": str(data),
        "output_dir": str(out),
        "micro_batch_size": 2,
        "global_batch_size": 2,
        "cutoff_len": 256,
        "learning_rate": 1.0e-3,
        "max_steps": 1,
        "bf16": False,
        "batching_workers": 0,
        "enable_activation_checkpointing": False,
        "seed": 0,
        "logging_steps": 1,
        **overrides,
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path, out


def sft(config, env, **extra_env):
    return run([str(BIN / "llamafactory-cli"), "sft", str(config)], {**env, "USE_V1": "1", **extra_env})


def v1_log(out):
    import json

    return [json.loads(line) for line in (out / "trainer_log.jsonl").read_text().splitlines()]


@needs_registries
def test_one_adamw_step_moves_every_changed_tensor_by_its_module_lr_and_logs_each_module(tiny, v1_data, tmp_path, env):
    optim = {"name": "multilr", **LRS, "weight_decay": 0.0, "eps": 1.0e-20}
    config, out = v1_config(tmp_path, tiny(FAMILY), v1_data, optim_config=optim)
    result = sft(config, env)
    assert result.returncode == 0, result.stderr[-3000:]
    steps = max_steps_by_module(FAMILY, weights(tiny(FAMILY)), weights(out))
    assert set(steps) == set(EXPECTED)
    for module, values in steps.items():
        assert values == one_step(EXPECTED[module], len(values)), module

    output = result.stdout + result.stderr
    assert "lf-multilr param groups for model type `qwen2_5_vl`:" in output
    assert LOADING in output  # the refusal tests' marker: absent there, here present
    (record,) = v1_log(out)
    assert {module: record[f"lr/{module}"] for module in MODULES} == EXPECTED
    norms = [record[f"grad_norm/{module}"] for module in MODULES]
    assert all(norm > 0 for norm in norms)
    assert math.sqrt(sum(norm * norm for norm in norms)) == pytest.approx(record["grad_norm"], rel=1e-5)


@needs_registries
def test_module_lrs_equal_to_learning_rate_reproduce_a_stock_v1_run_exactly(tiny, v1_data, tmp_path, env):
    stock, stock_out = v1_config(tmp_path, tiny(FAMILY), v1_data, name="stock")
    same = {"name": "multilr", **dict.fromkeys(LRS, 1.0e-3)}  # no weight-decay key: torch's AdamW default, as stock
    ours, our_out = v1_config(tmp_path, tiny(FAMILY), v1_data, name="multilr", optim_config=same)
    for config in (stock, ours):
        result = sft(config, env)
        assert result.returncode == 0, result.stderr[-3000:]
    before, after_stock, after_ours = weights(tiny(FAMILY)), weights(stock_out), weights(our_out)
    moved = [name for name in before if not torch.equal(before[name], after_stock[name])]
    assert len(moved) > 50  # the control: the stock step moved (nearly) every tensor
    unequal = [name for name in after_stock if not torch.equal(after_stock[name], after_ours[name])]
    assert unequal == []
    (stock_record,), (our_record,) = v1_log(stock_out), v1_log(our_out)
    assert our_record["loss"] == stock_record["loss"] and our_record["grad_norm"] == stock_record["grad_norm"]


@needs_registries
def test_muon_as_the_base_reproduces_stock_v1_muon_and_steps_each_tensor_by_its_module_lr(tiny, v1_data, tmp_path, env):
    """``base: muon``: v1's own Muon class over the module groups. With every module LR at ``learning_rate`` the run is
    stock ``{name: muon}``'s tensor for tensor; with three module LRs each tensor's first step is the stock step times
    its module's LR over ``learning_rate`` (Muon's and its AdamW's first updates are linear in the LR; no decay)."""
    from tools.testing import owner

    stock = {"name": "muon", "wd": 0.0}
    same = {"name": "multilr", "base": "muon", "weight_decay": 0.0, **dict.fromkeys(LRS, 1.0e-3)}
    modules = {"name": "multilr", "base": "muon", "weight_decay": 0.0, **LRS}
    after = {}
    for name, optim in (("stock", stock), ("same", same), ("modules", modules)):
        config, out = v1_config(tmp_path, tiny(FAMILY), v1_data, name=name, optim_config=optim)
        result = sft(config, env)
        assert result.returncode == 0, result.stderr[-3000:]
        after[name] = weights(out)
    output = result.stdout + result.stderr
    assert "base: muon: v1's Muon steps the 2-D matrices" in output  # the table's Muon / AdamW split, per module
    assert "vision_tower: Muon 10 tensors (32.77k params), AdamW 15 tensors (38.59k params)" in output
    before = weights(tiny(FAMILY))
    moved = [name for name in before if not torch.equal(before[name], after["stock"][name])]
    assert len(moved) > 50
    assert [name for name in before if not torch.equal(after["stock"][name], after["same"][name])] == []
    for name in moved:
        ratio = EXPECTED[owner(FAMILY, name)] / 1.0e-3
        stock_step, module_step = after["stock"][name] - before[name], after["modules"][name] - before[name]
        assert torch.allclose(module_step, stock_step * ratio, rtol=1e-3, atol=1e-7), (name, ratio)


def expected_lr(module, step, total, warmup, start, ramp):
    """The LR the schedule must give ``module`` at optimizer step ``step`` (0-based), written out from its definition:
    HF's linear warm-up and cosine decay, times the module's own start and warm-up."""
    if step < warmup:
        shape = step / warmup
    else:
        shape = 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / (total - warmup)))
    gate = 0.0 if step < start else min(1.0, (step - start + 1) / ramp) if ramp else 1.0
    return EXPECTED[module] * shape * gate


@needs_registries
def test_the_scheduler_plugin_gives_every_module_its_exact_lr_at_every_step_of_warmup_and_cosine(tiny, tmp_path):
    from llamafactory.v1.plugins.trainer_plugins.lr_scheduler import LRSchedulerPlugin
    from llamafactory.v1.plugins.trainer_plugins.optimizers.optimizer import OptimizerPlugin
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(tiny(FAMILY), dtype=torch.float32)
    keys = {**LRS, "vision_tower_start_step": 3, "multi_modal_projector_warmup_steps": 4}
    optimizer = OptimizerPlugin("multilr")(model, {"name": "multilr", "lr": 1.0e-3, **keys})  # v1 adds `lr`
    total, warmup = 12, 2
    own = {"vision_tower": (3, None), "multi_modal_projector": (0, 4), "language_model": (0, None)}
    # the scheduler is handed only the optimizer, the step count and its config: the starts travel in the groups
    scheduler = LRSchedulerPlugin("multilr")(optimizer, total, {"name": "multilr", "warmup_steps": warmup})
    seen = {module: [] for module in MODULES}
    for step in range(total):
        for group in optimizer.param_groups:
            module = group["module"]
            want = expected_lr(module, step, total, warmup, *own[module])
            assert group["lr"] == pytest.approx(want, rel=1e-12, abs=1e-18), (module, step)
        for module in MODULES:
            seen[module].append(next(g["lr"] for g in optimizer.param_groups if g["module"] == module))
        optimizer.step()
        scheduler.step()
    assert seen["vision_tower"][:3] == [0.0, 0.0, 0.0] and seen["vision_tower"][3] > 0  # held, then started
    assert seen["language_model"][0] == 0.0 and seen["language_model"][1] == pytest.approx(0.5e-2)  # the warm-up
    torch.save(scheduler.state_dict(), tmp_path / "scheduler.pt")  # v1 checkpoints it: the multipliers pickle


@needs_registries
def test_the_scheduler_plugin_decays_each_floored_module_to_its_own_floor_exactly(tiny):
    """``<module>_min_lr`` under the scheduler plugin, as in v0: after the warm-up a floored module follows the cosine
    rescaled to run from its LR down to its floor (f + (L - f) * cosine), the others the plain cosine; with a start
    step on top."""
    from llamafactory.v1.plugins.trainer_plugins.lr_scheduler import LRSchedulerPlugin
    from llamafactory.v1.plugins.trainer_plugins.optimizers.optimizer import OptimizerPlugin
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(tiny(FAMILY), dtype=torch.float32)
    floors = {"language_model": 2.0e-3, "vision_tower": 5.0e-5}
    keys = {**LRS, "language_model_min_lr": 2.0e-3, "vision_tower_min_lr": 5.0e-5, "vision_tower_start_step": 2}
    optimizer = OptimizerPlugin("multilr")(model, {"name": "multilr", "lr": 1.0e-3, **keys})
    total, warmup = 10, 2
    scheduler = LRSchedulerPlugin("multilr")(optimizer, total, {"name": "multilr", "warmup_steps": warmup})
    last = {}
    for step in range(total + 1):
        for group in optimizer.param_groups:
            module, lr, floor = group["module"], EXPECTED[group["module"]], floors.get(group["module"])
            progress = min(1.0, (step - warmup) / (total - warmup))
            cosine = step / warmup if step < warmup else 0.5 * (1.0 + math.cos(math.pi * progress))
            want = lr * cosine if floor is None or step < warmup else floor + (lr - floor) * cosine
            if module == "vision_tower" and step < 2:
                want = 0.0
            assert group["lr"] == pytest.approx(want, rel=1e-12, abs=1e-18), (module, step)
            last[module] = group["lr"]
        optimizer.step()
        scheduler.step()
    assert last == pytest.approx({"vision_tower": 5.0e-5, "multi_modal_projector": 0.0, "language_model": 2.0e-3})


def parse_v1(tmp_path, model, **keys):
    """v1's own parser on a config with ``keys`` (the run's checks before the model loads); the error it raises."""
    from llamafactory.v1.config import get_args

    from lf_multilr.patches import guard

    args = {"model": str(model), "output_dir": str(tmp_path / "out"), **keys}
    try:
        get_args(args)
    except ValueError as error:
        return str(error)
    finally:
        guard.disarm()
    return "ACCEPTED"


REFUSED = [
    (
        {"optim_config": {"name": "multilr", "vision_lr": 1.0e-5}},
        "lf-multilr: `optim_config.vision_lr: 1e-05` is refused: it is not a key of lf-multilr's optimizer plugin "
        "`multilr`. Fix: remove it, or use one of: lr, weight_decay, betas, eps, base, momentum, nesterov, ns_steps, "
        "adamw_betas, adamw_eps, vision_tower_lr,",
    ),
    (  # the same key, check and message as v0's
        {"optim_config": {"name": "multilr", "vision_tower_lr": -1.0}},
        "lf-multilr: `vision_tower_lr: -1.0` is refused: a learning rate cannot be negative. Fix: give a number >= 0 "
        "such as 1.0e-5, or remove the key to inherit `learning_rate`",
    ),
    (
        {"optim_config": {"name": "multilr", "vision_tower_start_step": 2.5}},
        "lf-multilr: `vision_tower_start_step: 2.5` is refused: a number of steps must be a whole number",
    ),
    (
        {"optim_config": {"name": "multilr", "lr_groups": [{"name": "x"}]}},
        "lf-multilr: `lr_groups[0]",
    ),
    (
        {"optim_config": {"name": "multilr", "weight_decay": "much"}},
        "lf-multilr: `optim_config.weight_decay: 'much'` is refused: it is not a number",
    ),
    (
        {"lr_scheduler_config": {"name": "multilr", "warmup": 10}},
        "lf-multilr: `lr_scheduler_config.warmup: 10` is refused: it is not a key of lf-multilr's scheduler plugin "
        "`multilr`. Fix: remove it, or use one of: warmup_steps, decay, min_lr_rate",
    ),
    (
        {"lr_scheduler_config": {"name": "multilr", "decay": "step"}},
        "lf-multilr: `lr_scheduler_config.decay: 'step'` is refused: it is not a decay the plugin knows. Fix: use one "
        "of: cosine, linear, constant",
    ),
    (
        {"optim_config": {"name": "multilr", "base": "sgd"}},
        "lf-multilr: `optim_config.base: 'sgd'` is refused: it is not an optimizer the plugin builds on. Fix: use one "
        "of: adamw, muon",
    ),
    (
        {"optim_config": {"name": "multilr", "base": "muon", "betas": [0.9, 0.99]}},
        "lf-multilr: `optim_config.betas: [0.9, 0.99]` is refused: it is a key of the adamw base, and the plugin "
        "builds on muon. Fix: set `base: adamw`, or remove the key (Muon's AdamW takes `adamw_betas` and `adamw_eps`)",
    ),
    (  # the audio tower apart is v0's
        {"optim_config": {"name": "multilr", "audio_tower_lr": 1.0e-6}},
        "lf-multilr: `optim_config.audio_tower_lr: 1e-06` is refused: the v1 plugin does not take the audio tower "
        "apart from the vision tower",
    ),
    (  # a floor needs a decay: v1 alone keeps a constant LR
        {"optim_config": {"name": "multilr", "language_model_min_lr": 1.0e-6}},
        "lf-multilr: `optim_config.language_model_min_lr: 1e-06` is refused: without `lr_scheduler_config: {name: "
        "multilr}` the v1 engine keeps a constant LR, so there is no floor to decay to. Fix: add "
        "`lr_scheduler_config: {name: multilr, decay: cosine}`",
    ),
    (
        {
            "optim_config": {"name": "multilr", "language_model_min_lr": 1.0e-6},
            "lr_scheduler_config": {"name": "multilr", "decay": "constant"},
        },
        "lf-multilr: `optim_config.language_model_min_lr: 1e-06` is refused: the scheduler plugin's `decay: constant` "
        "does not decay, so there is no floor to decay to",
    ),
    (  # v0's freeze flag inside optim_config, with v0's check of a key for the module it freezes
        {"optim_config": {"name": "multilr", "vision_tower_lr": 1.0e-4, "freeze_vision_tower": True}},
        "lf-multilr: `vision_tower_lr: 0.0001` is refused: `freeze_vision_tower: true` freezes the vision_tower, so "
        "its value would do nothing. Fix: set `freeze_vision_tower: false`",
    ),
    (
        {"optim_config": {"name": "multilr", "freeze_vision_tower": "yes"}},
        "lf-multilr: `optim_config.freeze_vision_tower: 'yes'` is refused: it is not true or false",
    ),
    (  # a v0 key at the top level of a v1 config
        {"vision_tower_lr": 1.0e-4},
        "lf-multilr: `vision_tower_lr: 0.0001` is refused: `USE_V1=1` trains with LLaMA-Factory's v1 engine, which "
        "takes lf-multilr's keys inside `optim_config`. Fix: move it there: `optim_config: {name: multilr, "
        "vision_tower_lr: 0.0001}`",
    ),
]


@needs_registries
@pytest.mark.parametrize(("keys", "message"), REFUSED, ids=[str(i) for i in range(len(REFUSED))])
def test_a_bad_v1_config_is_refused_by_v1s_parser_naming_the_key(keys, message, tiny, tmp_path):
    assert parse_v1(tmp_path, tiny(FAMILY), **keys).startswith(message)


@needs_registries
def test_module_keys_for_a_model_type_the_registry_does_not_know_are_refused_before_it_loads(tiny, tmp_path):
    text_only = tmp_path / "qwen2"
    text_only.mkdir()
    (text_only / "config.json").write_text('{"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"]}')
    refused = parse_v1(tmp_path, text_only, optim_config={"name": "multilr", **LRS})
    assert refused.startswith(
        "lf-multilr: `vision_tower_lr: 0.0001` is refused: model type `qwen2` is not in LLaMA-Factory's "
        "composite-model registry"
    )
    assert parse_v1(tmp_path, tiny(FAMILY), optim_config={"name": "multilr", **LRS}) == "ACCEPTED"  # the control


@needs_registries
def test_the_cli_refuses_before_the_model_loads_with_nothing_written_and_plan_says_the_same(
    tiny, v1_data, tmp_path, env
):
    bad = {"name": "multilr", **LRS, "vision_lr": 1.0e-5}
    config, out = v1_config(tmp_path, tiny(FAMILY), v1_data, optim_config=bad)
    result = sft(config, env)
    message = "lf-multilr: `optim_config.vision_lr: 1e-05` is refused: it is not a key of lf-multilr's optimizer"
    assert result.returncode != 0 and message in result.stderr
    assert LOADING not in result.stdout + result.stderr and not out.exists()
    plan = run([str(BIN / "lf-multilr"), "plan", str(config)], {**env, "USE_V1": "1"})
    assert plan.returncode != 0 and message in plan.stderr

    good, _ = v1_config(tmp_path, tiny(FAMILY), v1_data, name="good", optim_config={"name": "multilr", **LRS})
    plan = run([str(BIN / "lf-multilr"), "plan", str(good)], {**env, "USE_V1": "1"})
    assert plan.returncode == 0, plan.stderr[-3000:]
    rows = {line.split()[0]: line.split() for line in plan.stdout.splitlines()[2:5]}
    assert plan.stdout.startswith("lf-multilr param groups for model type `qwen2_5_vl`:")
    assert {module: float(rows[module][4]) for module in MODULES} == EXPECTED


@pytest.mark.skipif(HAS_REGISTRIES or not HAS_V1_TRAIN, reason="a v1 engine with one registry per plugin family")
def test_a_v1_engine_with_one_shared_registry_refuses_the_plugins_by_name(tiny, tmp_path):
    for section in ("optim_config", "lr_scheduler_config"):
        refused = parse_v1(tmp_path, tiny(FAMILY), **{section: {"name": "multilr"}})
        assert refused.startswith(
            f"lf-multilr: `{section}.name: 'multilr'` is refused: this LLaMA-Factory's v1 engine keeps one plugin "
            "registry for every plugin family (an optimizer and a scheduler both named `multilr` would overwrite each "
            "other) and has no multimodal data path. Fix: train with LLaMA-Factory's default engine"
        ), refused


#: A v1 run whose trainer builds its optimizer itself (overriding v1's `_init_optimizer`), ignoring `optim_config`.
BYPASSING = """
import sys

import torch
from llamafactory.v1.trainers import sft_trainer


class BypassingTrainer(sft_trainer.SFTTrainer):
    def _init_optimizer(self):
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=self.args.learning_rate)


sft_trainer.SFTTrainer = BypassingTrainer
sft_trainer.run_sft()
"""


@needs_registries
def test_a_v1_trainer_whose_optimizer_lacks_the_groups_is_stopped_before_its_first_step(tiny, v1_data, tmp_path, env):
    config, out = v1_config(tmp_path, tiny(FAMILY), v1_data, optim_config={"name": "multilr", **LRS})
    result = run([str(BIN / "python"), "-c", BYPASSING, str(config)], env, cwd=tmp_path)
    assert result.returncode != 0
    assert (
        "lf-multilr: the optimizer about to take the first step does not hold lf-multilr's module groups: it holds "
        "1 group: unnamed (57)" in result.stderr
    ), result.stderr[-3000:]
    assert "from `BypassingTrainer._init_optimizer`, not lf-multilr's optimizer plugin" in result.stderr
    assert "Fix: let the v1 engine build the optimizer from `optim_config: {name: multilr, ...}`" in result.stderr
    assert not (out / "trainer_log.jsonl").exists()  # no step was taken, none logged


#: v1 on two CPU ranks needs one shim (tests/v1_cpu/sitecustomize.py: torch's CUDA build takes CUDA for the
#: accelerator that v1 synchronizes after every step).
CPU_SHIM = ROOT / "tests" / "v1_cpu"
SIGNATURE = rank_signature(4)


def two_ranks(env):
    return {
        "FORCE_TORCHRUN": "1",
        "NPROC_PER_NODE": "2",
        "PATH": f"{BIN}:{env['PATH']}",  # v1's launcher runs `torchrun` from PATH
        "PYTHONPATH": os.pathsep.join([str(CPU_SHIM), *filter(None, [env.get("PYTHONPATH")])]),
    }


@needs_registries
def test_two_ddp_ranks_build_the_same_groups_step_every_module_by_its_lr_and_leave_a_frozen_one(
    tiny, v1_data, tmp_path, env
):
    """v1 has no freeze flags: the plugin's ``freeze_multi_modal_projector`` leaves the projector without gradients,
    groups or optimizer state, on the DDP fallback (which wrapped the model before the plugin froze it)."""
    trained = {"vision_tower_lr": LRS["vision_tower_lr"], "language_model_lr": LRS["language_model_lr"]}
    optim = {"name": "multilr", **trained, "freeze_multi_modal_projector": True, "weight_decay": 0.0, "eps": 1.0e-20}
    config, out = v1_config(tmp_path, tiny(FAMILY), v1_data, micro_batch_size=1, save_steps=1, optim_config=optim)
    result = sft(config, env, **two_ranks(env))
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "falling back to DistributedDataParallel" in output  # v1's DDP fallback, not one process
    found = dict(SIGNATURE.findall(output))
    assert set(found) == {"0", "1"} and found["0"] == found["1"], output[-3000:]
    before = weights(tiny(FAMILY))
    steps = max_steps_by_module(FAMILY, before, weights(out))
    assert set(steps) == {"vision_tower", "language_model"}  # the projector did not move
    for module, values in steps.items():
        assert values == one_step(EXPECTED[module], len(values)), module
    (record,) = v1_log(out)
    assert "lr/multi_modal_projector" not in record and "grad_norm/multi_modal_projector" not in record
    norms = [record[f"grad_norm/{module}"] for module in trained and ("vision_tower", "language_model")]
    assert math.sqrt(sum(norm * norm for norm in norms)) == pytest.approx(record["grad_norm"], rel=1e-5)
    state = torch.load(out / "checkpoint-1" / "optimizer" / "state_dict.pt", weights_only=True)
    grouped = [index for group in state["param_groups"] for index in group["params"]]
    assert {group["module"] for group in state["param_groups"]} == {"vision_tower", "language_model"}
    projector = [name for name in before if owner(FAMILY, name) == "multi_modal_projector"]
    assert projector and len(grouped) == len(state["state"]) == len(before) - len(projector)


@needs_registries
def test_a_v1_checkpoint_resumes_with_its_groups_and_one_of_another_layout_is_refused(tiny, v1_data, tmp_path, env):
    """Two steps of the module LRs under the plugin's cosine decay, a checkpoint after each; resumed from the first,
    the run ends tensor for tensor where the uninterrupted one does (the optimizer state in its groups, the
    schedule's step), and a run whose groups differ (the vision tower frozen since) is refused before it steps."""
    schedule = {"name": "multilr"}  # cosine over the two steps: the second step's LRs are half the first's
    two = {"max_steps": 2, "save_steps": 1, "lr_scheduler_config": schedule}
    whole, whole_out = v1_config(
        tmp_path, tiny(FAMILY), v1_data, name="whole", optim_config={"name": "multilr", **LRS}, **two
    )
    result = sft(whole, env)
    assert result.returncode == 0, result.stderr[-3000:]
    checkpoint = whole_out / "checkpoint-1"
    resumed, resumed_out = v1_config(
        tmp_path,
        tiny(FAMILY),
        v1_data,
        name="resumed",
        optim_config={"name": "multilr", **LRS},
        resume_from_checkpoint=str(checkpoint),
        **two,
    )
    result = sft(resumed, env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Resumed from checkpoint: step=1" in result.stdout + result.stderr
    after_whole, after_resumed = weights(whole_out), weights(resumed_out)
    assert [name for name in after_whole if not torch.equal(after_whole[name], after_resumed[name])] == []
    last = v1_log(whole_out)[-1]
    (record,) = v1_log(resumed_out)
    assert (
        {module: record[f"lr/{module}"] for module in MODULES}
        == {module: last[f"lr/{module}"] for module in MODULES}
        == {module: lr / 2 for module, lr in EXPECTED.items()}
    )
    assert record["loss"] == last["loss"]

    frozen = {"name": "multilr", **LRS, "freeze_vision_tower": True}
    del frozen["vision_tower_lr"]
    other, other_out = v1_config(
        tmp_path,
        tiny(FAMILY),
        v1_data,
        name="other",
        optim_config=frozen,
        resume_from_checkpoint=str(checkpoint),
        **two,
    )
    result = sft(other, env)
    assert result.returncode != 0
    assert "its optimizer state was saved for other param groups" in result.stderr, result.stderr[-3000:]
    assert "this run has 2 groups: language_model/decay (27), multi_modal_projector/decay (5))" in result.stderr
    assert "start a new run from its weights (`model` set to the checkpoint" in result.stderr
    assert not (other_out / "trainer_log.jsonl").exists()


@needs_registries
def test_two_fsdp2_ranks_on_gloo_step_every_module_by_its_lr_leave_a_frozen_one_and_resume_from_dcp(
    tiny, v1_data, tmp_path, env
):
    """v1's FSDP2 plugin (``dist_config: {name: fsdp2}``) shards every parameter into a DTensor before the plugin
    sees the model; the groups are placed by name all the same, and the frozen vision tower stays as it was. Its
    checkpoints are torch DCP: resumed from the first, the run ends where the uninterrupted one does; a run with the
    vision tower trained since is refused."""
    trained = {
        "multi_modal_projector_lr": LRS["multi_modal_projector_lr"],
        "language_model_lr": LRS["language_model_lr"],
    }
    optim = {"name": "multilr", **trained, "freeze_vision_tower": True, "weight_decay": 0.0, "eps": 1.0e-20}
    fsdp2 = {
        "micro_batch_size": 1,
        "dist_config": {"name": "fsdp2"},
        "max_steps": 2,
        "save_steps": 1,
        "save_ckpt_as_hf": True,  # the weights after the first step, beside the DCP checkpoint
    }
    config, out = v1_config(tmp_path, tiny(FAMILY), v1_data, optim_config=optim, **fsdp2)
    result = sft(config, env, **two_ranks(env))
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "Applying per-layer FSDP to" in output  # v1's FSDP2 plugin, not the DDP fallback
    found = dict(SIGNATURE.findall(output))
    assert set(found) == {"0", "1"} and found["0"] == found["1"], output[-3000:]
    checkpoint = out / "checkpoint-1"
    steps = max_steps_by_module(FAMILY, weights(tiny(FAMILY)), weights(checkpoint / "hf_model"))
    assert set(steps) == {"multi_modal_projector", "language_model"}  # the vision tower did not move
    for module, values in steps.items():
        assert values == one_step(EXPECTED[module], len(values)), module
    first = v1_log(out)[0]
    assert {key for key in first if key.startswith("lr/")} == {"lr/multi_modal_projector", "lr/language_model"}

    resumed, resumed_out = v1_config(
        tmp_path,
        tiny(FAMILY),
        v1_data,
        name="resumed",
        optim_config=optim,
        resume_from_checkpoint=str(checkpoint),
        **fsdp2,
    )
    result = sft(resumed, env, **two_ranks(env))
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    after_whole, after_resumed = weights(out), weights(resumed_out)
    assert [name for name in after_whole if not torch.equal(after_whole[name], after_resumed[name])] == []

    unfrozen = {"name": "multilr", **LRS, "weight_decay": 0.0, "eps": 1.0e-20}
    other, other_out = v1_config(
        tmp_path,
        tiny(FAMILY),
        v1_data,
        name="other",
        optim_config=unfrozen,
        resume_from_checkpoint=str(checkpoint),
        **fsdp2,
    )
    result = sft(other, env, **two_ranks(env))
    assert result.returncode != 0
    # torch's DCP loader refuses it first: the run's fifth group is not in the checkpoint
    assert "Missing key in checkpoint state_dict: param_groups.4.lr" in result.stdout + result.stderr
    assert not (other_out / "trainer_log.jsonl").exists()
