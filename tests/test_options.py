"""Options that change the groups or their optimizer: LoRA+, the user's `optim:`, TensorBoard logging."""

import pytest
import torch

from tools.testing import adapter, base_config, train, write_config

LRS = {"vision_tower_lr": 1.0e-4, "multi_modal_projector_lr": 1.0e-3, "language_model_lr": 1.0e-2}


def test_loraplus_multiplies_each_module_lr_for_lora_b(tiny, data, tmp_path, env):
    family = "qwen2_vl"
    config, out = write_config(
        tmp_path,
        tiny(family),
        data,
        family,
        finetuning_type="lora",
        lora_target="all",
        loraplus_lr_ratio=4.0,
        vision_tower_lr=1.0e-4,
        language_model_lr=1.0e-3,
    )
    result = train(config, env)
    assert result.returncode == 0, result.stderr[-3000:]
    lora_b = {n: t.abs().max().item() for n, t in adapter(out).items() if "lora_B" in n}
    assert lora_b
    for name, step in lora_b.items():
        assert step == pytest.approx(4.0e-4 if ".visual." in name else 4.0e-3, rel=1e-3), name


@pytest.fixture
def prepared(tiny, data, tmp_path):
    """LLaMA-Factory's parsed args and a loaded tiny model with the vision tower unfrozen, in this process."""
    from llamafactory.hparams import get_train_args
    from transformers import AutoModelForImageTextToText

    def make(**overrides):
        config = {**base_config(tiny("qwen2_vl"), data, "qwen2_vl", tmp_path / "out"), **LRS, **overrides}
        _, _, training_args, finetuning_args, _ = get_train_args(config)
        model = AutoModelForImageTextToText.from_pretrained(tiny("qwen2_vl"))
        return model, training_args, finetuning_args

    return make


def test_the_users_optim_class_and_kwargs_are_honoured(prepared):
    from llamafactory.train.trainer_utils import create_custom_optimizer

    model, training_args, finetuning_args = prepared(optim="sgd", optim_args="momentum=0.5")
    optimizer = create_custom_optimizer(model, training_args, finetuning_args)
    assert type(optimizer) is torch.optim.SGD
    assert {g["momentum"] for g in optimizer.param_groups} == {0.5}
    assert {g["module"]: g["lr"] for g in optimizer.param_groups} == {
        "language_model": 1.0e-2,
        "vision_tower": 1.0e-4,
        "multi_modal_projector": 1.0e-3,
    }

    model, training_args, finetuning_args = prepared(adam_beta2=0.95)
    optimizer = create_custom_optimizer(model, training_args, finetuning_args)
    assert type(optimizer) is torch.optim.AdamW and {g["betas"] for g in optimizer.param_groups} == {(0.9, 0.95)}


def test_an_optim_that_builds_its_own_structure_is_refused(prepared):
    from llamafactory.train.trainer_utils import create_custom_optimizer
    from transformers.training_args import OptimizerNames

    # The parser refuses it before any weight loads (tests/test_bad_input.py); the factory still refuses what reaches
    # it another way, here arguments changed after parsing.
    model, training_args, finetuning_args = prepared()
    training_args.optim = OptimizerNames("adalomo")
    with pytest.raises(ValueError, match=r"`optim: adalomo` builds its own parameter structure"):
        create_custom_optimizer(model, training_args, finetuning_args)


@pytest.mark.targets
def test_module_lrs_and_grad_norms_reach_tensorboard(tiny, data, tmp_path, env):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    family = "qwen2_vl"
    config, out = write_config(tmp_path, tiny(family), data, family, max_steps=2, report_to="tensorboard", **LRS)
    result = train(config, {**env, "TENSORBOARD_LOGGING_DIR": str(tmp_path / "tb")})
    assert result.returncode == 0, result.stderr[-3000:]
    events = EventAccumulator(str(tmp_path / "tb")).Reload()
    for tag, value in (("vision_tower", 1.0e-4), ("multi_modal_projector", 1.0e-3), ("language_model", 1.0e-2)):
        scalars = events.Scalars(f"train/lr/{tag}")
        assert [s.step for s in scalars] == [1, 2]
        assert all(s.value == pytest.approx(value) for s in scalars)
        assert [s.step for s in events.Scalars(f"train/grad_norm/{tag}")] == [1, 2]


def test_a_ppo_run_says_in_its_table_what_it_does_not_log(prepared):
    """PPO's own loop logs neither lr/<module> nor grad_norm/<module>: the start-of-training table says so."""
    from lf_multilr.config.settings import settings_of
    from lf_multilr.patches.optimizer import plan_for
    from lf_multilr.reports.table import format_table
    from lf_multilr.training.metrics import PPO_UNLOGGED, stage_notes

    model, training_args, finetuning_args = prepared()
    plan = plan_for(model, training_args, finetuning_args, settings_of(finetuning_args))
    assert stage_notes("sft") == [] and PPO_UNLOGGED not in format_table(plan)
    plan.notes.extend(stage_notes("ppo"))
    assert f"  {PPO_UNLOGGED}" in format_table(plan).splitlines()
