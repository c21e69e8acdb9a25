"""The real ``llamafactory-cli train`` on tiny Qwen3-VL, LLaVA-NeXT and Gemma 3, grouped by lf-multilr's module map.

One AdamW step (Adam's first step is ``lr * sign(grad)``) moves every changed tensor by exactly the LR of the module
lf-multilr gives it, the supplement's placements included: ``learning_rate`` (the `other` group's LR) differs from
all three module LRs, so a tensor the map missed would show. Qwen2-VL, Qwen2.5-VL and LLaVA: tests/test_train_e2e.py.
"""

from __future__ import annotations

import pytest
import torch

from lf_multilr.grouping.placement import ModuleMap
from tools.testing import log_records, one_step, train, weights, write_config

BASE = 5.0e-3
LRS = {"vision_tower_lr": 1.0e-4, "multi_modal_projector_lr": 1.0e-3, "language_model_lr": 1.0e-2}
EXPECTED = {"vision_tower": 1.0e-4, "multi_modal_projector": 1.0e-3, "language_model": 1.0e-2}
#: Per family: the names lf-multilr's supplement places (prefixes), and the tensors one step leaves unchanged.
SUPPLEMENTED = {"qwen3_vl": ("model.visual.deepstack_merger_list.",), "llava_next": ("model.image_newline",)}
STILL = {
    "qwen3_vl": set(),
    # vision_feature_layer -1 skips CLIP's post_layernorm
    "llava_next": {"model.vision_tower.post_layernorm.weight", "model.vision_tower.post_layernorm.bias"},
    "gemma3": set(),
}


def module_map(model_type: str) -> ModuleMap:
    from lf_multilr.patches.registry import module_map as read

    mapping = read(model_type)
    assert mapping is not None
    return mapping


def steps(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> dict[str, float]:
    """name -> max |dW| over the tensor."""
    return {name: (tensor - before[name]).abs().max().item() for name, tensor in after.items()}


@pytest.mark.parametrize("family", ["qwen3_vl", "llava_next", "gemma3"])
def test_one_adamw_step_moves_every_changed_tensor_by_its_modules_lr(family, tiny, data, tmp_path, env):
    config, out = write_config(tmp_path, tiny(family), data, family, learning_rate=BASE, **LRS)
    result = train(config, env)
    assert result.returncode == 0, result.stderr[-3000:]
    moved = steps(weights(tiny(family)), weights(out))
    mapping = module_map(family)
    assert {name for name, step in moved.items() if step == 0} == STILL[family]
    by_module: dict[str, list[float]] = {}
    for name, step in moved.items():
        if step:
            by_module.setdefault(mapping.owner(name), []).append(step)
    assert set(by_module) == set(EXPECTED)
    for module, values in by_module.items():
        assert values == one_step(EXPECTED[module], len(values)), module

    supplemented = {name for name in moved if mapping.placement(name).rule}
    assert supplemented == {name for name in moved if name.startswith(SUPPLEMENTED.get(family, ("-",)))}
    for name in supplemented:
        assert [moved[name]] == one_step(EXPECTED[mapping.owner(name)]), name
    if supplemented:
        assert f"supplement: {len(supplemented)} tensors" in result.stdout
    else:
        assert "supplement:" not in result.stdout
    (record,) = [r for r in log_records(out) if "loss" in r]
    assert (record["lr/vision_tower"], record["lr/multi_modal_projector"], record["lr"]) == (1.0e-4, 1.0e-3, 1.0e-2)


def test_llava_next_image_newline_trains_where_freeze_multi_modal_projector_cannot_reach(tiny, data, tmp_path, env):
    family = "llava_next"
    lrs = {key: value for key, value in LRS.items() if key != "multi_modal_projector_lr"}
    config, out = write_config(
        tmp_path, tiny(family), data, family, learning_rate=BASE, freeze_multi_modal_projector=True, **lrs
    )
    result = train(config, env)
    assert result.returncode == 0, result.stderr[-3000:]
    moved = steps(weights(tiny(family)), weights(out))
    projector = {name: step for name, step in moved.items() if "multi_modal_projector" in name}
    assert projector and not any(projector.values())  # LLaMA-Factory froze the registry's projector
    assert moved["model.image_newline"] == pytest.approx(BASE, rel=1e-3)  # the projector's LR: learning_rate
    assert "1 multi_modal_projector tensors still train although the rest of the multi_modal_projector" in (
        result.stdout + result.stderr
    )


def test_qwen3_vl_deepstack_mergers_frozen_by_freeze_vision_tower_are_warned_about(tiny, data, tmp_path, env):
    family = "qwen3_vl"
    config, out = write_config(
        tmp_path,
        tiny(family),
        data,
        family,
        learning_rate=BASE,
        freeze_vision_tower=True,
        multi_modal_projector_lr=1e-3,
    )
    result = train(config, env)
    assert result.returncode == 0, result.stderr[-3000:]
    moved = steps(weights(tiny(family)), weights(out))
    deepstack = {name: step for name, step in moved.items() if "deepstack_merger_list" in name}
    merger = {name: step for name, step in moved.items() if "visual.merger." in name}
    assert deepstack and not any(deepstack.values())
    assert merger and all(step == pytest.approx(1e-3, rel=1e-3) for step in merger.values())
    assert f"{len(deepstack)} multi_modal_projector tensors are frozen although the rest" in (
        result.stdout + result.stderr
    )
