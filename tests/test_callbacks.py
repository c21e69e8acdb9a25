"""The run's extra callbacks (``trainer_callbacks``, ``LF_MULTILR_CALLBACKS``): names resolved and checked before any
weight loads, and the classes' instances in a real ``llamafactory-cli train`` run, with or without module LRs."""

from __future__ import annotations

import json
import textwrap

import pytest

from lf_multilr.config.callbacks import callback_classes, names_of
from lf_multilr.errors import ConfigError
from tools.testing import base_config, train, write_config

#: A module of two user callbacks, written next to the run: each records the steps it saw end in the output folder.
USER_CALLBACKS = """
import json
from pathlib import Path

from transformers import TrainerCallback


class Steps(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        path = Path(args.output_dir) / f"{type(self).__name__}.json"
        seen = json.loads(path.read_text()) if path.exists() else []
        path.write_text(json.dumps([*seen, state.global_step]))


class StopAfterOne(Steps):
    def on_step_end(self, args, state, control, **kwargs):
        super().on_step_end(args, state, control, **kwargs)
        control.should_training_stop = True


NOT_A_CALLBACK = 3
"""


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "user_callbacks.py").write_text(textwrap.dedent(USER_CALLBACKS))
    monkeypatch.syspath_prepend(str(tmp_path))
    return "user_callbacks"


def test_names_come_as_a_list_or_comma_separated_text():
    assert names_of(None) == () and names_of("") == ()
    assert names_of("a.b:C, d.E") == ("a.b:C", "d.E") and names_of(["a.b:C", " d.E "]) == ("a.b:C", "d.E")


def test_the_variable_s_classes_come_first_and_each_class_once(user_module):
    environ = {"LF_MULTILR_CALLBACKS": f"{user_module}:StopAfterOne"}
    found = callback_classes([f"{user_module}.Steps", f"{user_module}:StopAfterOne"], environ)
    assert [cls.__name__ for cls in found] == ["StopAfterOne", "Steps"]
    assert callback_classes(None, {}) == ()


@pytest.mark.parametrize(
    ("value", "why"),
    [
        (["no_such_module_xyz:Thing"], "`no_such_module_xyz:Thing` does not import (ModuleNotFoundError"),
        (["user_callbacks:Missing"], "`user_callbacks:Missing` does not import (AttributeError"),
        (["user_callbacks:NOT_A_CALLBACK"], "`user_callbacks:NOT_A_CALLBACK` is 3, not a TrainerCallback subclass"),
        (["json:JSONDecoder"], "is <class 'json.decoder.JSONDecoder'>, not a TrainerCallback subclass"),
        (["Steps"], "`Steps` is not a `module:Class` or `module.Class` name"),
        ({"a": 1}, "it is a dict, not a list of class names"),
        ([1], "it holds something other than class names"),
    ],
)
def test_a_name_that_cannot_serve_is_refused_with_key_value_why_and_fix(value, why, user_module):
    with pytest.raises(ConfigError) as refused:
        callback_classes(value, {})
    assert refused.value.key == "trainer_callbacks" and refused.value.value == value and why in refused.value.why
    assert refused.value.fix.startswith("name a `transformers.TrainerCallback` subclass as `module:Class`")
    with pytest.raises(ConfigError, match=r"`LF_MULTILR_CALLBACKS: 'json.JSONDecoder'` is refused"):
        callback_classes(None, {"LF_MULTILR_CALLBACKS": "json.JSONDecoder"})


def test_the_parsed_names_join_the_run_being_set_up_whatever_the_configs_form(tiny, data, tmp_path, user_module):
    """The names LLaMA-Factory's parser read (here `--key v1 v2` on a command line, a list the raw arguments do not
    show as one) go to the callbacks list of the run being set up, one instance each, once."""
    from llamafactory.hparams import get_train_args

    from lf_multilr.patches._state import STATE

    config = {**base_config(tiny("qwen2_vl"), data, "qwen2_vl", tmp_path / "o"), "max_steps": 1}
    argv = [f"--{key}={value}" if not isinstance(value, list) else f"--{key}={','.join(value)}"
            for key, value in config.items()]  # fmt: skip
    argv += ["--trainer_callbacks", f"{user_module}:Steps", f"{user_module}.StopAfterOne"]
    run: list = []
    STATE.run_callbacks = run
    try:
        get_train_args(argv)
    finally:
        STATE.run_callbacks = None
    assert [type(callback).__name__ for callback in run] == ["Steps", "StopAfterOne"]
    get_train_args(argv)  # no run being set up: nothing to fill, nothing filled twice
    assert len(run) == 2


@pytest.mark.core
def test_the_key_is_refused_by_the_parser_before_the_model_loads(tiny, data, tmp_path, user_module):
    from llamafactory.hparams import get_train_args

    args = base_config(tmp_path / "no_model", data, "qwen2_vl", tmp_path / "out")  # no weights anywhere
    with pytest.raises(ConfigError, match=r"`trainer_callbacks: \['user_callbacks:Missing'\]` is refused"):
        get_train_args({**args, "trainer_callbacks": ["user_callbacks:Missing"]})
    parsed = get_train_args({**base_config(tiny("qwen2_vl"), data, "qwen2_vl", tmp_path / "o"), "max_steps": 1,
                             "trainer_callbacks": "user_callbacks:Steps"})  # fmt: skip
    assert parsed[3].trainer_callbacks == ["user_callbacks:Steps"]  # one shape: a list of names


@pytest.mark.core
@pytest.mark.parametrize("module_lrs", [False, True])
def test_a_real_run_gets_the_callbacks_of_the_key_and_of_the_variable(module_lrs, tiny, data, tmp_path, env):
    (tmp_path / "user_callbacks.py").write_text(textwrap.dedent(USER_CALLBACKS))
    keys = {"vision_tower_lr": 1e-4} if module_lrs else {}
    config, output_dir = write_config(
        tmp_path, tiny("qwen2_vl"), data, "qwen2_vl", max_steps=3, trainer_callbacks=["user_callbacks.Steps"], **keys
    )
    env = {**env, "PYTHONPATH": f"{tmp_path}:{env.get('PYTHONPATH', '')}"}
    result = train(config, {**env, "LF_MULTILR_CALLBACKS": "user_callbacks:StopAfterOne"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((output_dir / "Steps.json").read_text()) == [1]  # the variable's callback stopped the run
    assert json.loads((output_dir / "StopAfterOne.json").read_text()) == [1]

    again = tmp_path / "again"
    result = train(config, env, f"output_dir={again}")  # the key alone: the run trains to its end
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((again / "Steps.json").read_text()) == [1, 2, 3] and not (again / "StopAfterOne.json").exists()
