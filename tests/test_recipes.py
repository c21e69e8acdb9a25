"""Training recipes, measured on real runs: ViT layer-wise LR decay, delayed module start, per-module warm-up
(across a resume), and custom `lr_groups` on a multimodal and on a text-only model."""

import json
import math
import shutil

import pytest
import torch
from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

from tools.testing import log_records, train, weights, write_config

FAMILY = "qwen2_vl"


def steps_by_tensor(before, after):
    return {name: (after[name] - tensor).abs().max().item() for name, tensor in before.items()}


def test_vit_and_llm_layer_decay_follow_the_formula_in_one_adamw_step(tiny, data, tmp_path, env):
    config, out = write_config(
        tmp_path,
        tiny(FAMILY),
        data,
        FAMILY,
        vision_tower_lr=1.0e-2,
        vision_tower_lr_layer_decay=0.5,
        multi_modal_projector_lr=1.0e-4,
        language_model_lr=1.0e-3,
        language_model_lr_layer_decay=0.5,
    )
    result = train(config, env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "vision_tower: layer-wise decay 0.5 over 2 blocks: embeddings 2.500e-03, block0 5.000e-03, block1" in (
        result.stdout
    )
    assert "language_model: layer-wise decay 0.5 over 2 blocks: embeddings 2.500e-04, block0 5.000e-04, block1" in (
        result.stdout
    )
    steps = steps_by_tensor(weights(tiny(FAMILY)), weights(out))
    expected = {  # N = 2 in each: block1 at the module's LR, block0 at half, the embeddings at a quarter
        "visual.blocks.1.": 1.0e-2,
        "visual.blocks.0.": 5.0e-3,
        "visual.patch_embed.": 2.5e-3,
        "visual.merger.": 1.0e-4,
        "language_model.layers.1.": 1.0e-3,
        "language_model.layers.0.": 5.0e-4,
        "language_model.embed_tokens.": 2.5e-4,
        "language_model.norm.": 1.0e-3,  # the head: the final norm and lm_head at the module's LR
        "lm_head.": 1.0e-3,
    }
    for name, step in steps.items():
        (lr,) = [lr for prefix, lr in expected.items() if prefix in name]
        assert step == pytest.approx(lr, rel=1e-3), name


@pytest.mark.core
def test_a_module_with_a_start_step_holds_still_before_it_and_moves_after(tiny, data, tmp_path, env):
    # One run of three steps, saved after two: optimizer steps 0 and 1 (checkpoint-2), then step 2 (the end).
    config, out = write_config(
        tmp_path,
        tiny(FAMILY),
        data,
        FAMILY,
        max_steps=3,
        save_strategy="steps",
        save_steps=2,
        weight_decay=0.1,
        vision_tower_lr=1.0e-3,
        vision_tower_start_step=2,
    )
    result = train(config, env)
    assert result.returncode == 0, result.stderr[-3000:]
    before = weights(tiny(FAMILY))
    vision = [name for name in before if ".visual." in name and "merger" not in name]
    moved = {}
    for steps, saved in ((2, out / "checkpoint-2"), (3, out)):
        after = weights(saved)
        moved[steps] = [name for name in vision if not torch.equal(before[name], after[name])]
        assert any(not torch.equal(before[n], after[n]) for n in before if "language_model" in n)
    assert moved[2] == []  # optimizer steps 0 and 1: bit-identical vision weights
    assert len(moved[3]) == 25  # step 2: every vision tensor moves


@pytest.mark.targets
def test_warmup_and_floor_values_are_exact_and_survive_a_resume(tiny, data, tmp_path, env):
    """Per-module start and warm-up, per-module floors and an `lr_groups` entry's own start, warm-up and floor, under
    a cosine schedule: every logged `lr/<module>` is the formula of docs/recipes.md, before and after a resume."""
    groups = [
        {"name": "vit_last", "params": r"visual\.blocks\.1\.", "start_step": 2, "warmup_steps": 2, "min_lr": 1e-5}
    ]
    keys = dict(
        max_steps=5,
        save_steps=2,
        save_strategy="steps",
        lr_scheduler_type="cosine",
        vision_tower_lr=1.0e-4,
        vision_tower_start_step=1,
        vision_tower_warmup_steps=3,
        vision_tower_min_lr=2.0e-5,
        language_model_min_lr=1.0e-4,
        lr_groups=groups,
    )
    config, out = write_config(tmp_path, tiny(FAMILY), data, FAMILY, **keys)
    result = train(config, env)
    assert result.returncode == 0, result.stderr[-3000:]
    records = [r for r in log_records(out) if "lr/vision_tower" in r]
    # logged at step k, like HF's learning_rate: the LR step k used, i.e. 0-based optimizer step t = k - 1; the run's
    # cosine m(t) over 5 steps, no run warm-up; a floor f under an LR L: f + (L - f) * m(t)
    m = [0.5 * (1 + math.cos(math.pi * t / 5)) for t in range(5)]
    ramp = [0, 1 / 3, 2 / 3, 1, 1]  # vision: 0 before start step 1, then min(1, (t - 1 + 1) / 3)
    expected = {
        "lr/language_model": [1e-4 + 9e-4 * m[t] for t in range(5)],  # learning_rate 1e-3, floor 1e-4
        "lr/multi_modal_projector": [1e-3 * m[t] for t in range(5)],  # no floor: the run's cosine, to 0
        "lr/vision_tower": [(2e-5 + 8e-5 * m[t]) * ramp[t] for t in range(5)],
        "lr/vit_last": [0.0 if t < 2 else (1e-5 + 9e-5 * m[t]) * min(1, (t - 1) / 2) for t in range(5)],
    }
    for name, values in expected.items():
        assert [r[name] for r in records] == pytest.approx(values, rel=1e-9, abs=1e-15), name
    assert "vision_tower: LR 0 before optimizer step 1, then rises linearly over 3 steps" in result.stdout
    assert "vit_last: LR 0 before optimizer step 2, then rises linearly over 2 steps" in result.stdout
    assert "vision_tower: decays from 1.000e-04 to min_lr 2.000e-05 along the run's schedule" in result.stdout

    resumed_out = tmp_path / "resumed"
    shutil.copytree(out / "checkpoint-2", resumed_out / "checkpoint-2")
    result = train(config, env, f"output_dir={resumed_out}", f"resume_from_checkpoint={resumed_out / 'checkpoint-2'}")
    assert result.returncode == 0, result.stderr[-3000:]
    resumed = {r["current_steps"]: {n: r[n] for n in expected} for r in log_records(resumed_out) if "lr/vit_last" in r}
    assert resumed == {r["current_steps"]: {n: r[n] for n in expected} for r in records if r["current_steps"] > 2}


def test_lr_groups_train_the_last_vit_block_at_its_own_lr(tiny, data, tmp_path, env):
    groups = [{"name": "vit_last", "params": r"visual\.blocks\.1\.", "lr": 1.0e-2}]
    config, out = write_config(
        tmp_path,
        tiny(FAMILY),
        data,
        FAMILY,
        vision_tower_lr=1.0e-4,
        lr_groups=groups,
    )
    result = train(config, env)
    assert result.returncode == 0, result.stderr[-3000:]
    for name, step in steps_by_tensor(weights(tiny(FAMILY)), weights(out)).items():
        if "visual.blocks.1." in name:
            assert step == pytest.approx(1.0e-2, rel=1e-3), name
        elif "visual.blocks.0." in name or "patch_embed" in name:
            assert step == pytest.approx(1.0e-4, rel=1e-3), name
    (record,) = [r for r in log_records(out) if "loss" in r]
    assert record["lr/vit_last"] == 1.0e-2 and record["grad_norm/vit_last"] > 0


@pytest.fixture(scope="module")
def text_model(tiny, tmp_path_factory):
    """A tiny Qwen2 text model with the tiny Qwen2-VL's tokenizer."""
    folder = tmp_path_factory.mktemp("qwen2_text")
    tokenizer = AutoTokenizer.from_pretrained(tiny(FAMILY))
    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=len(tokenizer) + (-len(tokenizer)) % 8,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=False,
        eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tokenizer.pad_token_id,
    )
    Qwen2ForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_lr_groups_work_on_a_text_only_model(text_model, data, tmp_path, env):
    groups = json.dumps([{"name": "embeddings", "params": "embed_tokens", "lr": 1.0e-2}])
    config, out = write_config(
        tmp_path,
        text_model,
        data,
        FAMILY,
        dataset="tiny_text",
        template="qwen",
        learning_rate=1.0e-4,
    )
    result = train(config, env, f"lr_groups={groups}")
    assert result.returncode == 0, result.stderr[-3000:]
    from transformers import AutoModelForCausalLM

    before = dict(AutoModelForCausalLM.from_pretrained(text_model).named_parameters())
    after = dict(AutoModelForCausalLM.from_pretrained(out).named_parameters())
    for name, param in after.items():
        step = (param - before[name]).abs().max().item()
        assert step == pytest.approx(1.0e-2 if "embed_tokens" in name else 1.0e-4, rel=1e-3), name


def test_a_pattern_that_matches_nothing_is_refused(tiny, data, tmp_path, env, capsys, monkeypatch):
    from lf_multilr.cli import main

    config, out = write_config(tmp_path, tiny(FAMILY), data, FAMILY, lr_groups=[{"name": "x", "params": "nothing"}])
    result = train(config, env)
    assert result.returncode != 0
    assert "`lr_groups[0].params: 'nothing'` is refused: it matches no trainable parameter" in result.stderr
    assert not (out / "trainer_log.jsonl").exists()
    monkeypatch.setenv("LLAMAFACTORY_VERBOSITY", "WARN")  # what the command sets for itself
    capsys.readouterr()
    assert main(["plan", str(config)]) == 1  # `lf-multilr plan`'s function, in this process
    assert "`lr_groups[0].params: 'nothing'` is refused" in capsys.readouterr().err
