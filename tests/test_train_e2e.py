"""The real ``llamafactory-cli train`` on tiny Qwen2-VL, Qwen2.5-VL and LLaVA: measured effects per module."""

import pytest
import torch

from tools.testing import (
    PROJECTOR_COPY,
    WEIGHTS_LOADING,
    adapter,
    log_records,
    max_steps_by_module,
    owner,
    train,
    weights,
    write_config,
)

LRS = {"vision_tower_lr": 1.0e-4, "multi_modal_projector_lr": 1.0e-3, "language_model_lr": 1.0e-2}
EXPECTED = {"vision_tower": 1.0e-4, "multi_modal_projector": 1.0e-3, "language_model": 1.0e-2}


@pytest.mark.parametrize(
    "family",
    [
        pytest.param("qwen2_vl", marks=pytest.mark.core),
        "qwen2_5_vl",  # Qwen2-VL's layout and names: the full suite's
        pytest.param("llava", marks=pytest.mark.core),
    ],
)
def test_full_one_adamw_step_moves_every_changed_tensor_by_its_module_lr(family, tiny, data, tmp_path, env):
    config, out = write_config(tmp_path, tiny(family), data, family, **LRS)
    result = train(config, env)
    assert result.returncode == 0, result.stderr[-3000:]
    steps = max_steps_by_module(family, weights(tiny(family)), weights(out))
    assert set(steps) == set(EXPECTED)
    for module, values in steps.items():
        assert values == pytest.approx([EXPECTED[module]] * len(values), rel=1e-3), module

    assert "lf-multilr param groups for model type" in result.stdout
    assert WEIGHTS_LOADING in result.stdout + result.stderr  # the refusal tests' marker: absent there, here present
    (record,) = [r for r in log_records(out) if "loss" in r]
    assert record["lr/vision_tower"] == 1.0e-4 and record["lr/multi_modal_projector"] == 1.0e-3
    assert record["lr/language_model"] == record["lr"] == 1.0e-2


@pytest.mark.parametrize(
    "family, overrides",
    [
        pytest.param("qwen2_5_vl", {"additional_target": PROJECTOR_COPY["qwen2_5_vl"]}, marks=pytest.mark.core),
        # LLaMA-Factory's `all` adapts Qwen3-VL's merger and DeepStack mergers when both freeze flags are false
        # (write_config's default): their adapters train at the projector's LR; under LoRA+ lora_B at LR x ratio
        pytest.param("qwen3_vl", {"loraplus_lr_ratio": 4.0}),
    ],
    ids=["qwen2_5_vl-copy", "qwen3_vl-merger-adapters-loraplus"],
)
def test_lora_groups_adapters_by_the_module_they_adapt(family, overrides, tiny, data, tmp_path, env):
    config, out = write_config(
        tmp_path, tiny(family), data, family, finetuning_type="lora", lora_target="all", **overrides, **LRS
    )
    result = train(config, env)
    assert result.returncode == 0, result.stderr[-3000:]
    base = weights(tiny(family))
    ratio = overrides.get("loraplus_lr_ratio", 1.0)
    seen: dict[str, set[str]] = {}
    for name, tensor in adapter(out).items():
        module = owner(family, name)
        if "lora_B" in name:  # B starts at zero, so its largest entry after one step is the step size
            assert tensor.abs().max().item() == pytest.approx(EXPECTED[module] * ratio, rel=1e-3), name
            seen.setdefault(module, set()).add(name)
        elif "lora_A" not in name:  # a copy in `additional_target` (A gets no gradient on the first step)
            original = base[name.replace("base_model.model.", "", 1)]
            assert (tensor - original).abs().max().item() == pytest.approx(EXPECTED[module], rel=1e-3), name
            seen.setdefault(module, set()).add(name)
    assert set(seen) == set(EXPECTED)
    if family == "qwen3_vl":
        projector = seen["multi_modal_projector"]
        assert all(".lora_B." in name for name in projector)
        assert {name.split(".linear_fc")[0].removeprefix("base_model.model.model.visual.") for name in projector} == {
            "merger",
            "deepstack_merger_list.0",
        }


@pytest.mark.core
def test_llava_lora_with_the_official_projector_lr(tiny, data, tmp_path, env):
    family = "llava"
    config, out = write_config(
        tmp_path,
        tiny(family),
        data,
        family,
        finetuning_type="lora",
        lora_target="all",
        freeze_vision_tower=True,
        additional_target="multi_modal_projector",
        learning_rate=2.0e-4,
        multi_modal_projector_lr=2.0e-5,
    )
    result = train(config, env)
    assert result.returncode == 0, result.stderr[-3000:]
    base = weights(tiny(family))
    tensors = adapter(out)
    projector = {n: t for n, t in tensors.items() if "multi_modal_projector" in n}
    lora_b = {n: t for n, t in tensors.items() if "lora_B" in n}
    assert projector and lora_b and not any("vision_tower" in n for n in tensors)
    for name, tensor in projector.items():
        step = (tensor - base[name.replace("base_model.model.", "", 1)]).abs().max().item()
        assert step == pytest.approx(2.0e-5, rel=1e-3), name
    for name, tensor in lora_b.items():
        assert tensor.abs().max().item() == pytest.approx(2.0e-4, rel=1e-3), name


@pytest.mark.core
def test_module_lrs_equal_to_learning_rate_reproduce_stock_exactly(tiny, data, tmp_path, env):
    family = "qwen2_vl"
    common = dict(max_steps=3, lr_scheduler_type="cosine", warmup_steps=1, weight_decay=0.01, adam_epsilon=1.0e-8)
    same = {key: 1.0e-3 for key in LRS}
    stock_config, stock_out = write_config(tmp_path / "stock", tiny(family), data, family, **common)
    ours_config, ours_out = write_config(tmp_path / "ours", tiny(family), data, family, **common, **same)
    stock = train(stock_config, {**env, "LF_MULTILR_DISABLE": "1"})
    ours = train(ours_config, env)
    assert stock.returncode == 0 and ours.returncode == 0, stock.stderr[-2000:] + ours.stderr[-2000:]
    assert "lf-multilr" not in stock.stdout + stock.stderr and "lf-multilr param groups" in ours.stdout
    losses = [[r["loss"] for r in log_records(out) if "loss" in r] for out in (ours_out, stock_out)]
    assert len(losses[0]) == 3 and losses[0] == losses[1]
    stock_weights, our_weights = weights(stock_out), weights(ours_out)
    assert all(torch.equal(our_weights[name], tensor) for name, tensor in stock_weights.items())


def test_vision_tower_lr_zero_holds_the_vision_weights_still(tiny, data, tmp_path, env):
    family = "qwen2_vl"
    config, out = write_config(tmp_path, tiny(family), data, family, max_steps=2, weight_decay=0.1, vision_tower_lr=0.0)
    result = train(config, env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "vision_tower_lr is 0" in result.stdout
    steps = max_steps_by_module(family, weights(tiny(family)), weights(out))
    assert "vision_tower" not in steps and {"multi_modal_projector", "language_model"} <= set(steps)


def test_vision_tower_lr_zero_under_lora_leaves_its_adapters_untouched(tiny, data, tmp_path, env):
    family = "qwen2_vl"
    config, out = write_config(
        tmp_path,
        tiny(family),
        data,
        family,
        finetuning_type="lora",
        lora_target="all",
        max_steps=2,
        vision_tower_lr=0.0,
    )
    result = train(config, env)
    assert result.returncode == 0, result.stderr[-3000:]
    vision_b = [t for n, t in adapter(out).items() if "lora_B" in n and ".visual." in n]
    llm_b = [t for n, t in adapter(out).items() if "lora_B" in n and ".visual." not in n]
    assert vision_b and all(torch.count_nonzero(t) == 0 for t in vision_b)
    assert llm_b and all(torch.count_nonzero(t) > 0 for t in llm_b)


@pytest.mark.targets
def test_lora_llm_with_the_vision_tower_trained_fully_as_copies(tiny, data, tmp_path, env):
    """examples/yaml/qwen2_5_vl_lora_llm_full_vit.yaml on the tiny model (two ViT blocks)."""
    family = "qwen2_5_vl"
    config, out = write_config(
        tmp_path,
        tiny(family),
        data,
        family,
        finetuning_type="lora",
        lora_target="all",
        freeze_vision_tower=True,
        additional_target="merger,patch_embed,visual.blocks.0,visual.blocks.1",
        **LRS,
    )
    result = train(config, env)
    assert result.returncode == 0, result.stderr[-3000:]
    base = weights(tiny(family))
    seen = {}
    for name, tensor in adapter(out).items():
        if "lora_B" in name:
            assert ".visual." not in name
            seen.setdefault("language_model", []).append(tensor.abs().max().item())
        elif "lora_A" not in name:  # A gets no gradient on the first step (B starts at zero)
            module = "multi_modal_projector" if "merger" in name else "vision_tower"
            step = (tensor - base[name.replace("base_model.model.", "", 1)]).abs().max().item()
            if step:
                seen.setdefault(module, []).append(step)
    assert set(seen) == set(EXPECTED)
    for module, steps in seen.items():
        assert steps == pytest.approx([EXPECTED[module]] * len(steps), rel=1e-3), module
