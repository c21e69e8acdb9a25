"""LlamaBoard's own objects, built by its ``create_ui`` and driven through its runner without a browser: set fields
become config keys, bad ones are refused with the CLI's message before anything starts, saved configs stay
loadable by stock LlamaBoard, and the kill switch leaves the UI stock."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml

import lf_multilr
from lf_multilr.config.keys import KEY_NAMES
from lf_multilr.patches import _patching
from lf_multilr.patches.targets import TARGETS
from lf_multilr.webui import fields as webui_fields
from tools.testing import BIN, clean_env, full_suite_only, run

pytestmark = [full_suite_only("LlamaBoard"), pytest.mark.targets]  # patch targets of LlamaBoard

FIELD_IDS = {key.name: f"train.{key.name}" for key in webui_fields.ui_keys()}
MODEL_NAME = "Qwen2-VL-2B-Instruct"


@pytest.fixture(scope="module")
def board(tmp_path_factory, tiny, data):
    """The runner and manager of a real LlamaBoard, and a function that gives an event's inputs."""
    from llamafactory.webui.interface import create_ui

    assert lf_multilr.apply()
    workdir = tmp_path_factory.mktemp("board")
    previous = os.getcwd()
    os.chdir(workdir)  # LlamaBoard keeps its caches, configs and saves under the working directory
    try:
        demo = create_ui()
        start = next(fn for fn in demo.fns.values() if getattr(fn.fn, "__name__", "") == "run_train")
        runner = start.fn.__self__
        model = tiny("qwen2_vl")

        def inputs(**values):
            """What the Start button sends: the Train tab as it starts, set up for a tiny full fine-tuning run."""
            state = {
                "top.lang": "en",
                "top.model_name": MODEL_NAME,
                "top.model_path": str(model),
                "top.finetuning_type": "full",
                "top.template": "qwen2_vl",
                "train.dataset_dir": str(data),
                "train.dataset": ["tiny_mm"],
                "train.output_dir": "run",
                "train.config_path": "saved.yaml",
                "train.compute_type": "fp32",
                "train.cutoff_len": 256,
                "train.freeze_vision_tower": False,
                "train.freeze_multi_modal_projector": False,
            }
            state.update({FIELD_IDS.get(name, name): value for name, value in values.items()})
            found = {runner.manager.get_elem_by_id(elem_id): value for elem_id, value in state.items()}
            assert set(found) <= set(start.inputs)
            return {elem: found.get(elem, elem.value) for elem in start.inputs}

        yield runner, inputs, workdir
    finally:
        os.chdir(previous)


def original(method):
    target = next(target for target in TARGETS if target.dotted == f"llamafactory.webui.runner.Runner.{method}")
    return _patching.original_of(target)


def output(runner, events):
    box = runner.manager.get_elem_by_id("train.output_box")
    return [event[box] for event in events if box in event]


def test_blank_fields_leave_llamaboard_stock(board):
    runner, inputs, _ = board
    data = inputs()
    assert runner._parse_train_args(data) == original("_parse_train_args")(runner, data)
    assert runner._initialize(data, True, False) == ""
    stock_config = original("_build_config_dict")(runner, data)
    assert runner._build_config_dict(data) == {k: v for k, v in stock_config.items() if k not in FIELD_IDS.values()}


def test_set_fields_become_config_keys_in_preview_and_run(board):
    runner, inputs, _ = board
    extra = json.dumps({"optim": "adamw_torch", "vision_tower_lr": 9.0, "language_model_lr": 5e-4})
    data = inputs(vision_tower_lr=" 2e-6", multi_modal_projector_lr="1,5e-4", **{"train.extra_args": extra})
    args = runner._parse_train_args(data)
    assert (args["vision_tower_lr"], args["multi_modal_projector_lr"], args["language_model_lr"]) == (
        2e-6,
        1.5e-4,
        5e-4,
    )
    assert "vision_tower_weight_decay" not in args
    [preview] = output(runner, runner.preview_train(data))
    assert "--vision_tower_lr 2e-06" in preview and "--multi_modal_projector_lr 0.00015" in preview
    assert "--language_model_lr 0.0005" in preview


REFUSALS = {
    "negative": (
        {"vision_tower_lr": "-1e-5"},
        {"vision_tower_lr": -1e-5},
        "lf-multilr: `vision_tower_lr: -1e-05` is refused: a learning rate cannot be negative. Fix: give a number >= 0",
    ),
    "not a number": (
        {"multi_modal_projector_weight_decay": "0.o1"},
        {"multi_modal_projector_weight_decay": "0.o1"},
        "lf-multilr: `multi_modal_projector_weight_decay: '0.o1'` is refused: it is not a number. Fix: ",
    ),
    "frozen vision tower": (
        {"vision_tower_lr": "2e-6", "train.freeze_vision_tower": True},
        {"vision_tower_lr": 2e-6},
        "lf-multilr: `vision_tower_lr: 2e-06` is refused: `freeze_vision_tower: true` freezes the vision_tower, so its "
        "value would do nothing. Fix: set `freeze_vision_tower: false`, or remove the key",
    ),
    "LoRA projector without a copy": (
        {"multi_modal_projector_lr": "1e-4", "top.finetuning_type": "lora"},
        {"multi_modal_projector_lr": 1e-4},
        "lf-multilr: `multi_modal_projector_lr: 0.0001` is refused: the multi_modal_projector has nothing trainable in "
        "this run: LoRA put no adapter on it",
    ),
    "BAdam's layer mode": (
        {"language_model_lr": "1e-4", "train.use_badam": True, "train.badam_mode": "layer"},
        {"language_model_lr": 1e-4},
        "lf-multilr: `language_model_lr: 0.0001` is refused: `badam_mode: layer` is set, and BAdam's BlockOptimizer "
        "gives every group the first group's LR before each step",
    ),
    "bad value in the extra arguments": (
        {"train.extra_args": '{"optim": "adamw_torch", "vision_tower_lr": "fast"}'},
        {},
        "lf-multilr: `vision_tower_lr: 'fast'` is refused: it is not a number",
    ),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_refusals_show_the_message_and_start_nothing(board, case):
    runner, inputs, workdir = board
    fields, _, message = REFUSALS[case]
    data = inputs(**fields)
    refusal = runner._initialize(data, True, False)
    assert refusal.startswith(message), refusal
    assert output(runner, runner.preview_train(data)) == [refusal]
    assert output(runner, runner.run_train(data)) == [refusal]
    assert runner.trainer is None and not runner.running
    assert output(runner, [runner.save_args(data)]) == [refusal]
    for finetuning_type in ("full", "lora"):
        assert not (workdir / "saves" / MODEL_NAME / finetuning_type / "run").exists()
    assert not (workdir / "llamaboard_config" / "saved.yaml").exists()


@pytest.mark.parametrize(
    ("case", "cli"),
    [
        ("negative", False),
        pytest.param("frozen vision tower", True, marks=pytest.mark.slow),
        ("LoRA projector without a copy", False),
    ],
)
def test_the_refusal_is_the_clis(board, case, cli, tmp_path):
    """The config the UI would run, given to LLaMA-Factory's parser, and for one case to ``llamafactory-cli train``
    itself: it fails with the very same message."""
    from llamafactory.hparams import get_train_args

    runner, inputs, _ = board
    fields, as_yaml, _ = REFUSALS[case]
    data = inputs(**fields)
    refusal = runner._initialize(data, True, False)
    args = {**original("_parse_train_args")(runner, data), **as_yaml, "output_dir": str(tmp_path / "out")}
    with pytest.raises(ValueError) as parsed:
        get_train_args(dict(args))
    assert str(parsed.value) == refusal
    if cli:
        config = tmp_path / "ui.yaml"
        config.write_text(yaml.safe_dump(args))
        result = run([str(BIN / "llamafactory-cli"), "train", str(config)], clean_env(tmp_path), cwd=tmp_path)
        assert result.returncode != 0
        assert result.stderr.splitlines()[-1].endswith(f"Error: {refusal}"), result.stderr[-3000:]
    assert not (tmp_path / "out").exists()


def test_saved_configs_round_trip_and_stay_loadable_by_stock_llamaboard(board):
    runner, inputs, workdir = board
    manager = runner.manager
    data = inputs(vision_tower_lr="2e-6", language_model_weight_decay="0", **{"train.config_path": "multilr.yaml"})
    assert output(runner, [runner.save_args(data)]) == ["Arguments have been saved at: llamaboard_config/multilr.yaml"]
    saved = yaml.safe_load((workdir / "llamaboard_config" / "multilr.yaml").read_text())
    stock_ids = {elem_id for elem_id in manager._id_to_elem if elem_id not in FIELD_IDS.values()}
    assert set(saved) <= stock_ids  # stock LlamaBoard's loader finds every element it names
    assert json.loads(saved["train.extra_args"]) == {
        "optim": "adamw_torch",
        "vision_tower_lr": 2e-6,
        "language_model_weight_decay": 0.0,
    }

    loaded = runner.load_args("en", "multilr.yaml")
    texts = {elem_id: loaded[manager.get_elem_by_id(elem_id)] for elem_id in (*FIELD_IDS.values(), "train.extra_args")}
    assert texts == {
        **dict.fromkeys(FIELD_IDS.values(), ""),
        "train.vision_tower_lr": "2e-06",
        "train.language_model_weight_decay": "0.0",
        "train.extra_args": '{"optim": "adamw_torch"}',
    }
    assert loaded[manager.get_elem_by_id("train.output_box")] == "Arguments have been restored."

    # What LlamaBoard saved before lf-multilr was installed: loads, and clears the fields.
    stock = original("_build_config_dict")(runner, inputs())
    stock = {elem_id: value for elem_id, value in stock.items() if elem_id not in FIELD_IDS.values()}
    (workdir / "llamaboard_config" / "stock.yaml").write_text(yaml.safe_dump(stock))
    loaded = runner.load_args("en", "stock.yaml")
    assert [loaded[manager.get_elem_by_id(elem_id)] for elem_id in FIELD_IDS.values()] == [""] * len(FIELD_IDS)

    # The config a run leaves in its output dir restores the fields when that dir is picked again.
    run_dir = workdir / "saves" / MODEL_NAME / "full" / "earlier"
    run_dir.mkdir(parents=True)
    (run_dir / "llamaboard_config.yaml").write_text(yaml.safe_dump(saved))
    restored = runner.check_output_dir("en", MODEL_NAME, "full", "earlier")
    assert restored[manager.get_elem_by_id("train.vision_tower_lr")] == "2e-06"
    assert restored[manager.get_elem_by_id("train.extra_args")] == '{"optim": "adamw_torch"}'


UI_PROBE = """
import json, sys
from llamafactory.webui import interface, runner
from llamafactory.webui.locales import LOCALES
SUFFIXES = ("_lr", "_weight_decay", "_layer_decay", "_start_step", "_warmup_steps", "_min_lr", "lr_groups")
demo = interface.create_ui()
methods = ("_initialize", "_parse_train_args", "_build_config_dict", "load_args", "check_output_dir")
print(json.dumps({
    "patches": "lf_multilr.patches" in sys.modules,
    "wrapped": [name for name in methods if hasattr(getattr(runner.Runner, name), "__wrapped__")]
    + (["create_train_tab"] if hasattr(interface.create_train_tab, "__wrapped__") else []),
    "labels": sorted(name for name in LOCALES if "lf_multilr" in name or name.endswith(SUFFIXES)),
    "elements": sorted(str(block.elem_id) for block in demo.blocks.values() if "lf_multilr" in str(block.elem_id)),
}))
"""


@pytest.mark.slow  # two LlamaBoard servers
def test_kill_switch_gives_the_stock_ui(tmp_path):
    """``LF_MULTILR_DISABLE=1``: nothing of lf-multilr loads and LlamaBoard builds exactly its own UI."""
    procs = {}
    for name, extra in (("stock", {"LF_MULTILR_DISABLE": "1"}), ("active", {})):
        (tmp_path / name).mkdir()
        procs[name] = subprocess.Popen(
            [sys.executable, "-c", UI_PROBE],
            env=clean_env(tmp_path / name, **extra),
            cwd=tmp_path / name,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    found = {}
    for name, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, stderr
        found[name] = json.loads(stdout.splitlines()[-1])
    assert found["stock"] == {"patches": False, "wrapped": [], "labels": [], "elements": []}
    assert found["active"]["patches"] and len(found["active"]["wrapped"]) == 6
    assert set(found["active"]["labels"]) == {*KEY_NAMES, "lr_groups", webui_fields.TAB, webui_fields.VIEWER}
    assert "lf_multilr_tab" in found["active"]["elements"]


def test_web_ui_imported_before_apply_gets_every_target(env):
    code = (
        "import os; del os.environ['LF_MULTILR_DISABLE']\n"
        "import llamafactory.webui.interface as interface\nimport lf_multilr\nassert lf_multilr.apply()\n"
        "from lf_multilr import patches\n"
        "print(sum(t.startswith('llamafactory.webui') for t in patches.applied()), "
        "hasattr(interface.create_train_tab, '__wrapped__'))\n"
    )
    result = run([sys.executable, "-c", code], {**env, "LF_MULTILR_DISABLE": "1"})
    assert result.returncode == 0, result.stderr
    webui_targets = sum(target.owner.startswith("llamafactory.webui") for target in TARGETS)
    assert result.stdout.split() == [str(webui_targets), "True"]
