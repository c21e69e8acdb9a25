"""Every stage that runs in the pinned environment builds the module groups and logs per-module LRs.

PPO is not here: LLaMA-Factory 0.9.5 requires trl<=0.9.6 for PPO while its own pins install trl 0.24, so stock
PPO cannot start in this environment. Its trainer's ``create_custom_optimizer`` is patched like the others
(``test_targets``).
"""

import pytest

from tools.testing import log_records, max_steps_by_module, one_step, train, weights, write_config

pytestmark = pytest.mark.targets  # patch targets' behaviour: the .venv-main leg runs these

STAGES = {
    "pt": ("qwen2_vl", {"dataset": "tiny_text", "cutoff_len": 32}),
    "rm": ("qwen2_vl", {"dataset": "tiny_mm_pref"}),
    "dpo": ("qwen2_vl", {"dataset": "tiny_mm_pref"}),
    "kto": ("llava", {"dataset": "tiny_mm_kto"}),
}
LRS = {"vision_tower_lr": 2.0e-5, "multi_modal_projector_lr": 3.0e-4, "language_model_lr": 4.0e-3}
EXPECTED = {"vision_tower": 2.0e-5, "multi_modal_projector": 3.0e-4, "language_model": 4.0e-3}
#: What one step of each stage moves: pretraining on text alone gives the vision side no gradient.
MOVED = {"pt": {"language_model"}, "rm": set(EXPECTED), "dpo": set(EXPECTED), "kto": set(EXPECTED)}


@pytest.mark.parametrize("stage", list(STAGES))
def test_stage_trains_with_module_groups(stage, tiny, data, tmp_path, env):
    family, overrides = STAGES[stage]
    config, out = write_config(tmp_path, tiny(family), data, family, stage=stage, **overrides, **LRS)
    result = train(config, env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "lf-multilr param groups for model type" in result.stdout
    # One AdamW step (epsilon 1e-20): every tensor that changed moved by exactly its module's LR, as for sft.
    steps = max_steps_by_module(family, weights(tiny(family)), weights(out))
    assert set(steps) == MOVED[stage]
    for module, values in steps.items():
        assert values == one_step(EXPECTED[module], len(values)), (stage, module)
    records = [r for r in log_records(out) if "lr/vision_tower" in r]
    assert len(records) == 1
    for record in records:
        assert record["lr/vision_tower"] == 2.0e-5 and record["lr/multi_modal_projector"] == 3.0e-4
        assert record["lr/language_model"] == record["lr"] == 4.0e-3
    if stage == "rm":  # the value head matches no registry key: it trains at learning_rate in `other`
        assert all(r["lr/other"] == 1.0e-3 for r in records)
        assert "belong to no module" in result.stdout and "v_head" in result.stdout
