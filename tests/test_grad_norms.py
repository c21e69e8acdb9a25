"""Per-module gradient norms: measured where HF measures grad_norm, consistent with it, cheap, and harmless."""

import math

import pytest
import torch
import yaml

from lf_multilr.training.metrics import GradNormMonitor
from tools.testing import TRANSFORMERS_4, log_records, step_records, train, weights, write_config

pytestmark = pytest.mark.targets  # patch targets' behaviour: the .venv-main leg runs these

MODULES = ("language_model", "vision_tower", "multi_modal_projector")
LRS = {"vision_tower_lr": 1.0e-4, "multi_modal_projector_lr": 1.0e-3, "language_model_lr": 1.0e-2}


def norms_add_up(records, max_grad_norm):
    for record in records:
        norms = [record[f"grad_norm/{m}"] for m in MODULES]
        assert all(n > 0 for n in norms)
        assert math.sqrt(sum(n * n for n in norms)) == pytest.approx(record["grad_norm"], rel=1e-5)
        if max_grad_norm:  # the norms are the pre-clip ones, like HF's
            assert record["grad_norm"] > 10 * max_grad_norm


@pytest.mark.parametrize(
    ("max_grad_norm", "clipped"),
    [
        # the module groups' norms (`core` measures the norms of a stock run's modules, clipped, below)
        (1.0e-3, True),
        # without clipping: the same path as with it on transformers 5, another one on 4.x (every leg where it differs)
        pytest.param(0.0, False, marks=pytest.mark.core if TRANSFORMERS_4 else ()),
    ],
)
def test_module_norms_add_up_to_hfs_grad_norm(max_grad_norm, clipped, tiny, data, tmp_path, env):
    family = "qwen2_vl"
    config, out = write_config(tmp_path, tiny(family), data, family, max_steps=3, max_grad_norm=max_grad_norm, **LRS)
    result = train(config, env)
    assert result.returncode == 0, result.stderr[-3000:]
    records = step_records(out)
    assert len(records) == 3
    if TRANSFORMERS_4 and not clipped:  # 4.x measures no grad_norm unless it clips: none per module either, said once
        assert not any(key.startswith("grad_norm") for record in records for key in record)
        assert (result.stdout + result.stderr).count("grad_norm/<module> is not logged: transformers 4.") == 1
        return
    norms_add_up(records, max_grad_norm)
    jsonl = [r for r in log_records(out) if "loss" in r]
    assert [[r[f"grad_norm/{m}"] for m in MODULES] for r in jsonl] == [
        [r[f"grad_norm/{m}"] for m in MODULES] for r in records
    ]


@pytest.mark.core
def test_logged_on_a_stock_multimodal_run_and_switched_off_without_changing_a_number(tiny, data, tmp_path, env):
    """The modules' norms of a run without LR keys (measured on the model's modules, not on lf-multilr's groups),
    clipped: they add up to HF's pre-clip grad_norm; switched off, the run is the same to the last bit."""
    family, clip = "qwen2_vl", {"max_steps": 2, "max_grad_norm": 1.0e-3}
    on_config, on_out = write_config(tmp_path / "on", tiny(family), data, family, **clip)
    off_config, off_out = write_config(tmp_path / "off", tiny(family), data, family, **clip, log_module_metrics=False)
    on, off = train(on_config, env), train(off_config, env)
    assert on.returncode == 0 and off.returncode == 0, on.stderr[-2000:] + off.stderr[-2000:]
    assert "lf-multilr param groups" not in on.stdout  # no LR key: the optimizer is stock
    on_records, off_records = step_records(on_out), step_records(off_out)
    assert len(on_records) == 2 and not any("lr/vision_tower" in r for r in on_records)
    norms_add_up(on_records, clip["max_grad_norm"])
    assert not any(k.startswith("grad_norm/") for r in off_records for k in r)
    assert [r["loss"] for r in on_records] == [r["loss"] for r in off_records]
    assert all(torch.equal(a, b) for a, b in zip(weights(on_out).values(), weights(off_out).values(), strict=True))


def test_measured_only_on_steps_that_log(tiny, data, tmp_path, monkeypatch):
    from llamafactory.train.tuner import run_exp

    steps = []
    measure = GradNormMonitor.measure
    monkeypatch.setattr(GradNormMonitor, "measure", lambda self, step: steps.append(step) or measure(self, step))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    family = "qwen2_vl"
    config, out = write_config(tmp_path, tiny(family), data, family, max_steps=5, logging_steps=2, **LRS)
    run_exp(yaml.safe_load(config.read_text()))
    assert steps == [2, 4]
    assert [r["current_steps"] for r in log_records(out) if "grad_norm/vision_tower" in r] == [2, 4]
