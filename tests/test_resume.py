"""Resuming through the real ``llamafactory-cli train``: the checkpoint's weights are loaded (or the run is refused),
a resumed run ends exactly where the uninterrupted one does, and optimizer state never lands in other groups."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from tools.testing import RESUMABLE, clean_env, logged_steps, train, write_config

# Every test trains. Resuming is patched on every leg: `core` resumes full and LoRA runs of the keys, loads the best
# model, and refuses a broken checkpoint and foreign optimizer state; the other tests are variants of those paths (the
# full suite's).
pytestmark = pytest.mark.slow

LRS = {"vision_tower_lr": 1.0e-4, "multi_modal_projector_lr": 1.0e-3, "language_model_lr": 1.0e-2}
LORA = {"finetuning_type": "lora", "lora_target": "all", "additional_target": "merger"}


@pytest.fixture(scope="module")
def whole(tiny, data, tmp_path_factory):
    """``whole(family, **keys)``: the output folder of an uninterrupted run with those keys, trained once per module
    and shared by the tests that resume from it or refuse to (none of them changes it)."""
    made: dict[str, Path] = {}

    def get(family: str, **overrides) -> Path:
        name = json.dumps([family, overrides], sort_keys=True)
        if name not in made:
            folder = tmp_path_factory.mktemp("whole")
            (folder / "hf_home").mkdir()
            config, out = write_config(folder / "whole", tiny(family), data, family, **RESUMABLE, **overrides)
            result = train(config, clean_env(folder / "hf_home"))
            assert result.returncode == 0, result.stderr[-3000:]
            made[name] = out
        return made[name]

    return get


def _resume(tmp_path: Path, tiny, data, env, family: str, checkpoint: Path, name: str = "resumed", **overrides):
    config, out = write_config(
        tmp_path / name, tiny(family), data, family, **RESUMABLE, resume_from_checkpoint=str(checkpoint), **overrides
    )
    return train(config, env), out


@pytest.mark.parametrize(
    ("family", "keys"),
    [
        pytest.param("qwen2_vl", LRS, marks=pytest.mark.core),
        pytest.param("llava", LRS, marks=pytest.mark.core),  # transformers renames LLaVA's keys between releases
        ("qwen2_vl", {}),  # no key: the same patched path, the module groups stock
    ],
)
def test_full_fine_tuning_resumes_exactly_where_the_uninterrupted_run_goes(
    family, keys, whole, tiny, data, tmp_path, env
):
    whole = whole(family, **keys)
    result, resumed = _resume(tmp_path, tiny, data, env, family, whole / "checkpoint-2", **keys)
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    assert "with from_pretrained's key conversion" in output
    assert "missing keys" not in output and "unexpected keys" not in output
    expected, got = load_file(whole / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert expected.keys() == got.keys()
    assert all((expected[name] == got[name]).all() for name in expected)  # bit for bit
    before, after = logged_steps(whole), logged_steps(resumed)
    assert sorted(after) == [3, 4] and all(after[step] == before[step] for step in (3, 4))
    if keys:
        assert {"lr/vision_tower", "lr/multi_modal_projector", "lr/language_model"} <= after[3].keys()


@pytest.mark.core
def test_lora_resumes_exactly_where_the_uninterrupted_run_goes(whole, tiny, data, tmp_path, env):
    family = "qwen2_5_vl"
    whole = whole(family, **LORA, **LRS)
    result, resumed = _resume(tmp_path, tiny, data, env, family, whole / "checkpoint-2", **LORA, **LRS)
    assert result.returncode == 0, result.stderr[-3000:]
    expected, got = load_file(whole / "adapter_model.safetensors"), load_file(resumed / "adapter_model.safetensors")
    assert expected.keys() == got.keys() and any("merger" in name for name in got)
    assert all((expected[name] == got[name]).all() for name in expected)
    before, after = logged_steps(whole), logged_steps(resumed)
    assert all(after[step] == before[step] for step in (3, 4))


@pytest.mark.core
def test_a_checkpoint_without_some_weights_is_refused(whole, tiny, data, tmp_path, env):
    family = "qwen2_vl"
    whole = whole(family, **LRS)
    broken = tmp_path / "broken"
    shutil.copytree(whole / "checkpoint-2", broken)
    tensors = load_file(broken / "model.safetensors")
    dropped = sorted(name for name in tensors if "blocks.1.mlp.fc1.weight" in name)
    assert len(dropped) == 1
    del tensors[dropped[0]]
    save_file(tensors, broken / "model.safetensors", metadata={"format": "pt"})
    result, resumed = _resume(tmp_path, tiny, data, env, family, broken, **LRS)
    assert result.returncode != 0
    assert "lf-multilr: `resume_from_checkpoint:" in result.stderr
    assert "1 of the model's" in result.stderr and "blocks.1.mlp.fc1.weight" in result.stderr
    assert not (resumed / "model.safetensors").exists()


def test_an_adapter_checkpoint_without_some_tensors_is_refused(whole, tiny, data, tmp_path, env):
    family = "qwen2_5_vl"
    whole = whole(family, **LORA, **LRS)
    broken = tmp_path / "broken"
    shutil.copytree(whole / "checkpoint-2", broken)
    tensors = load_file(broken / "adapter_model.safetensors")
    dropped = sorted(name for name in tensors if "lora_B" in name)[0]
    del tensors[dropped]
    save_file(tensors, broken / "adapter_model.safetensors", metadata={"format": "pt"})
    result, _ = _resume(tmp_path, tiny, data, env, family, broken, **LORA, **LRS)
    assert result.returncode != 0
    assert "lf-multilr: `resume_from_checkpoint:" in result.stderr and dropped in result.stderr


@pytest.mark.parametrize(
    ("saved", "now", "told"),
    [
        pytest.param(
            LRS,
            {**LRS, "vision_tower_lr": None, "freeze_vision_tower": True},
            "this run has 4 groups",
            marks=pytest.mark.core,
        ),
        ({}, LRS, "the checkpoint has 2 groups: unnamed ("),
    ],
    ids=["vision-tower-frozen-since", "stock-checkpoint"],
)
def test_optimizer_state_for_other_groups_is_refused(saved, now, told, whole, tiny, data, tmp_path, env):
    """The refusal itself is :func:`lf_multilr.grouping.digests.mismatch` (tests/test_layout.py); here it stops the real
    CLI before a step, from checkpoints the other tests resume from."""
    family = "qwen2_vl"
    whole = whole(family, **saved)
    overrides = {key: value for key, value in now.items() if value is not None}
    result, resumed = _resume(tmp_path, tiny, data, env, family, whole / "checkpoint-2", **overrides)
    assert result.returncode != 0
    assert "its optimizer state was saved for other param groups" in result.stderr
    assert told in result.stderr, result.stderr[-2000:]
    assert not (resumed / "model.safetensors").exists()


def test_changed_module_lrs_say_which_values_are_in_force(whole, tiny, data, tmp_path, env):
    family = "qwen2_vl"
    whole = whole(family, **LRS)
    changed = {**LRS, "vision_tower_lr": 3.0e-4}
    result, resumed = _resume(tmp_path, tiny, data, env, family, whole / "checkpoint-2", **changed)
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    assert "the checkpoint's starting LRs stay in force" in output
    assert "vision_tower: 1.000e-04 (config: 3.000e-04)" in output
    assert "language_model:" not in output.split("stay in force", 1)[1].split("\n", 1)[0]
    before, after = logged_steps(whole), logged_steps(resumed)
    assert all(after[step] == before[step] for step in (3, 4))  # the message is true: the checkpoint's LRs ran


@pytest.mark.core
def test_the_best_model_is_loaded_with_its_weights(whole):
    """``load_best_model_at_end`` reloads a checkpoint the same way HF resumes, with the same fault (stock config)."""
    family = "qwen2_vl"
    whole = whole(
        family,
        val_size=0.25,
        eval_strategy="steps",
        eval_steps=2,
        per_device_eval_batch_size=2,
        load_best_model_at_end=True,
        metric_for_best_model="eval_loss",
        greater_is_better=True,  # the worse of the two evaluations (step 2), so that loading it changes weights
    )
    best = Path(json.loads((whole / "trainer_state.json").read_text())["best_model_checkpoint"])
    assert best.name == "checkpoint-2"
    expected, got = load_file(best / "model.safetensors"), load_file(whole / "model.safetensors")
    assert all((expected[name] == got[name]).all() for name in expected)
