import math

import pytest

from lf_multilr.config.keys import KEY_NAMES, KEYS, check_value
from lf_multilr.config.settings import Settings
from lf_multilr.errors import ConfigError

LR = KEYS[0]


def test_key_names_follow_the_freeze_family():
    assert KEY_NAMES == (
        "vision_tower_lr",
        "multi_modal_projector_lr",
        "language_model_lr",
        "audio_tower_lr",
        "vision_tower_weight_decay",
        "multi_modal_projector_weight_decay",
        "language_model_weight_decay",
        "audio_tower_weight_decay",
        "vision_tower_lr_layer_decay",
        "language_model_lr_layer_decay",
        "audio_tower_lr_layer_decay",
        "vision_tower_start_step",
        "multi_modal_projector_start_step",
        "language_model_start_step",
        "audio_tower_start_step",
        "vision_tower_warmup_steps",
        "multi_modal_projector_warmup_steps",
        "language_model_warmup_steps",
        "audio_tower_warmup_steps",
        "vision_tower_min_lr",
        "multi_modal_projector_min_lr",
        "language_model_min_lr",
        "audio_tower_min_lr",
    )


@pytest.mark.parametrize(("value", "expected"), [(None, None), (0, 0.0), (1e-5, 1e-5), ("2e-6", 2e-6), (" 3 ", 3.0)])
def test_accepted_values(value, expected):
    assert check_value(LR, value) == expected


@pytest.mark.parametrize(
    ("value", "why"),
    [
        (-1e-5, "cannot be negative"),
        (math.nan, "not a finite"),
        (math.inf, "not a finite"),
        ("fast", "not a number"),
        (True, "boolean"),
        ([1e-5], "list"),
    ],
)
def test_refused_values_name_key_value_why_and_fix(value, why):
    with pytest.raises(ConfigError) as error:
        check_value(LR, value)
    message = str(error.value)
    assert "vision_tower_lr" in message and repr(value) in message and why in message and "Fix:" in message


@pytest.mark.parametrize("name", ["vision_tower_lr_layer_decay", "language_model_lr_layer_decay"])
@pytest.mark.parametrize(
    ("value", "why"),
    [
        (math.nan, "it is not a finite number"),
        ("inf", "it is not a finite number"),
        (-0.5, "a layer-wise decay must be greater than 0 and at most 1"),
        (0, "a layer-wise decay must be greater than 0 and at most 1"),
        (1.5, "a layer-wise decay must be greater than 0 and at most 1"),
        (True, "it is a boolean, not a number"),
        ("steep", "it is not a number"),
    ],
)
def test_a_layer_decay_is_a_number_above_0_and_at_most_1(name, value, why):
    key = next(key for key in KEYS if key.name == name)
    with pytest.raises(ConfigError) as error:
        check_value(key, value)
    assert str(error.value) == (
        f"lf-multilr: `{name}: {value!r}` is refused: {why}. Fix: give a number with 0 < d <= 1 such as 0.9, or "
        "remove the key (unset: no decay)"
    )
    assert check_value(key, "0.9") == 0.9 and check_value(key, 1) == 1.0


def test_weight_decay_message_speaks_of_weight_decay():
    with pytest.raises(ConfigError, match="a weight decay cannot be negative.*inherit `weight_decay`"):
        check_value(next(key for key in KEYS if key.kind == "weight_decay"), -0.1)


def test_resolve_inherits_unset_keys():
    settings = Settings({**dict.fromkeys(KEY_NAMES), "vision_tower_lr": 1e-6, "language_model_weight_decay": 0.0})
    resolved = settings.resolve(1e-4, 0.1)
    assert resolved["vision_tower"] == (1e-6, 0.1)
    assert resolved["multi_modal_projector"] == (1e-4, 0.1)
    assert resolved["language_model"] == (1e-4, 0.0)
    assert resolved["other"] == (1e-4, 0.1)
    assert settings.any_set and settings.explicit("vision_tower") == ["vision_tower_lr"]
    assert not Settings(dict.fromkeys(KEY_NAMES)).any_set


def test_a_frozen_flag_the_registry_cannot_reach_is_left_to_the_prepared_model():
    from types import SimpleNamespace

    from lf_multilr.config.checks import refuse_frozen

    settings = Settings({**dict.fromkeys(KEY_NAMES), "vision_tower_lr": 1e-5})
    args = SimpleNamespace(finetuning_type="full", additional_target=None, freeze_vision_tower=True)
    with pytest.raises(ConfigError, match="freeze_vision_tower: true"):
        refuse_frozen(settings, args)
    refuse_frozen(settings, args, open_modules={"vision_tower"})  # e.g. Video-LLaVA: the flag freezes nothing


def test_a_projector_flag_leaves_qwen3_vls_deepstack_mergers_to_the_vision_towers_flag():
    """LLaMA-Factory's registry counts Qwen3-VL's DeepStack mergers (projector to lf-multilr) as vision tower: only
    `freeze_vision_tower` freezes them, so `freeze_multi_modal_projector: true` alone leaves the projector open."""
    from types import SimpleNamespace

    from lf_multilr.config.checks import refuse_frozen
    from lf_multilr.grouping.supplement import left_open

    settings = Settings({**dict.fromkeys(KEY_NAMES), "multi_modal_projector_lr": 1e-5})
    args = SimpleNamespace(finetuning_type="lora", additional_target=None, freeze_multi_modal_projector=True)
    assert left_open("qwen3_vl", {"multi_modal_projector"}) == {"multi_modal_projector"}
    refuse_frozen(settings, args, left_open("qwen3_vl", {"multi_modal_projector"}))
    assert left_open("qwen3_vl", {"multi_modal_projector", "vision_tower"}) == set()
    with pytest.raises(ConfigError, match="freeze_multi_modal_projector: true` freezes the multi_modal_projector"):
        refuse_frozen(settings, args, left_open("qwen3_vl", {"multi_modal_projector", "vision_tower"}))
    assert left_open("qwen2_vl", {"multi_modal_projector"}) == set()
