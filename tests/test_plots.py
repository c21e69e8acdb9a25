"""`plot_loss: true` draws per-module LR and gradient-norm plots next to LLaMA-Factory's loss plot."""

import json

import pytest
from PIL import Image

from lf_multilr.reports.plots import plot_module_metrics, series
from tools.testing import step_records, train, write_config


def test_series_orders_modules_and_skips_other_keys():
    history = [
        {"step": 1, "loss": 2.0, "lr/vision_tower": 1e-5, "lr/language_model": 1e-4, "lr/my_group": 3e-5},
        {"step": 2, "eval_loss": 1.0},
        {"step": 3, "loss": 1.5, "lr/vision_tower": 2e-5, "lr/language_model": 2e-4, "lr/my_group": 6e-5},
    ]
    assert series(history, "lr/") == {
        "language_model": ([1, 3], [1e-4, 2e-4]),
        "vision_tower": ([1, 3], [1e-5, 2e-5]),
        "my_group": ([1, 3], [3e-5, 6e-5]),
    }


def test_no_history_no_plots(tmp_path):
    assert plot_module_metrics(tmp_path) == []
    (tmp_path / "trainer_state.json").write_text(json.dumps({"log_history": [{"step": 1, "loss": 1.0}]}))
    assert plot_module_metrics(tmp_path) == []


@pytest.mark.targets
def test_a_run_with_plot_loss_draws_both_plots(tiny, data, tmp_path, env):
    family = "qwen2_vl"
    config, out = write_config(
        tmp_path,
        tiny(family),
        data,
        family,
        max_steps=6,
        plot_loss=True,
        lr_scheduler_type="cosine",
        warmup_steps=2,
        vision_tower_lr=1.0e-4,
        multi_modal_projector_lr=1.0e-3,
    )
    result = train(config, env)
    assert result.returncode == 0, result.stderr[-3000:]
    for name in ("training_loss.png", "training_lr.png", "training_grad_norm.png"):
        with Image.open(out / name) as image:
            assert image.format == "PNG" and image.size == ((640, 480) if name == "training_loss.png" else (750, 450))
            assert len(image.getcolors(maxcolors=1 << 16) or range(1 << 16)) > 50  # drawn lines, not a blank canvas
        assert f"Figure saved at: {out / name}" in result.stdout
    history = step_records(out)
    assert len({r["learning_rate"] for r in history}) > 3  # warm-up and cosine: the LR moves every step
    for record in history:  # the LR each step used, as HF's learning_rate (group 0, the language model) is
        assert record["lr/language_model"] == record["learning_rate"]
        assert record["lr/vision_tower"] == pytest.approx(record["learning_rate"] * 0.1, rel=1e-12)
