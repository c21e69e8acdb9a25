"""The web UI's fields without a UI: what a typed text means, the labels in every language, the saved form,
and the per-module view of a training log."""

import json
from dataclasses import replace

import pytest

from lf_multilr.config.keys import KEY_NAMES, KEYS, LR_GROUPS, check_value, keys_of
from lf_multilr.errors import ConfigError
from lf_multilr.modules import TABLE
from lf_multilr.webui import fields as webui_fields
from lf_multilr.webui import view as webui_view

VISION_LR = next(key for key in KEYS if key.name == "vision_tower_lr")
FIELD_IDS = {key.name: f"train.{key.name}" for key in webui_fields.ui_keys()}
EXTRA = "train.extra_args"


@pytest.mark.parametrize("text", [None, "", "   ", "\t\n", "\u3000"])
def test_a_blank_field_is_unset(text):
    assert webui_fields.value(VISION_LR, text) is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1e-5", 1e-5),
        ("1E-05", 1e-5),
        ("1.0e-5", 1e-5),
        (" 2e-6 ", 2e-6),
        ("0.0001", 1e-4),
        ("0", 0.0),
        ("1,5e-5", 1.5e-5),  # a decimal comma, as typed in de/fr/ru locales
        ("0,01", 0.01),
        ("１ｅ－５", 1e-5),  # full-width, as a CJK input method types it
        ("１，５ｅ－５", 1.5e-5),
        (3e-4, 3e-4),
    ],
)
def test_typed_numbers(text, expected):
    assert webui_fields.value(VISION_LR, text) == expected


@pytest.mark.parametrize(
    ("text", "as_cli"),
    [
        ("-1e-5", -1e-5),  # the CLI reads the YAML number, the UI the text: same message
        ("−1e-5", -1e-5),  # a typographic minus
        ("abc", "abc"),
        ("1,000.5", "1,000.5"),
        ("1,5,3", "1,5,3"),
        ("nan", float("nan")),
        ("inf", float("inf")),
    ],
)
def test_bad_text_gets_the_clis_message(text, as_cli):
    with pytest.raises(ConfigError) as ui:
        webui_fields.value(VISION_LR, text)
    with pytest.raises(ConfigError) as cli:
        check_value(VISION_LR, as_cli)
    assert str(ui.value) == str(cli.value)
    assert str(ui.value).startswith("lf-multilr: `vision_tower_lr: ")
    assert "is refused: " in str(ui.value) and ". Fix: " in str(ui.value)


def test_values_keeps_only_set_keys_and_raises_on_the_first_bad_one():
    assert webui_fields.values({"vision_tower_lr": "2e-6", "language_model_lr": "", "unknown": "1"}) == {
        "vision_tower_lr": 2e-6
    }
    with pytest.raises(ConfigError, match="multi_modal_projector_weight_decay"):
        webui_fields.values({"multi_modal_projector_weight_decay": "-0.1"})


def test_every_key_has_a_label_and_help_in_every_language():
    entries = webui_fields.locales()
    for name in (*KEY_NAMES, webui_fields.TAB, webui_fields.VIEWER):
        assert set(entries[name]) == set(webui_fields.LANGUAGES), name
        for lang, entry in entries[name].items():
            assert entry["label"].strip(), (name, lang)
    for key in KEYS:
        for lang in webui_fields.LANGUAGES:
            entry = entries[key.name][lang]
            assert entry["info"].strip() and entry["label"] != key.name, (key.name, lang)
    for lang in webui_fields.LANGUAGES:  # six fields a user can tell apart
        assert len({entries[key.name][lang]["label"] for key in KEYS}) == len(KEYS), lang


def test_english_and_chinese_labels():
    entries = webui_fields.locales()
    assert entries[webui_fields.TAB]["en"]["label"] == "Module learning rates (lf-multilr)"
    assert entries["vision_tower_lr"]["en"]["label"] == "Vision tower learning rate"
    assert entries["multi_modal_projector_weight_decay"]["en"]["label"] == "Multimodal projector weight decay"
    assert entries["vision_tower_lr"]["zh"]["label"] == "视觉编码器学习率"
    assert entries["language_model_weight_decay"]["zh"]["label"] == "语言模型权重衰减"


def test_a_module_without_words_in_a_language_gets_fields_with_its_name_and_cli_help():
    unlabelled = replace(TABLE["vision_tower"], name="speech_tower", what="the speech tower", priority=9, order=9)
    table = TABLE.with_row(replace(unlabelled, labels={}))
    later = next(key for key in keys_of(table) if key.name == "speech_tower_lr")
    entries = webui_fields.locales(table)
    for lang in webui_fields.LANGUAGES:
        assert entries["speech_tower_lr"][lang] == {"label": "speech_tower_lr", "info": later.help}
    assert later.help.startswith("Learning rate of the speech tower (lf-multilr).")
    assert later in webui_fields.rows(table)[0]


def test_the_languages_are_llamaboards():
    from llamafactory.webui.locales import LOCALES

    assert set(LOCALES["learning_rate"]) == set(webui_fields.LANGUAGES)
    assert {lang for entry in LOCALES.values() for lang in entry} == set(webui_fields.LANGUAGES)


def test_rows_hold_every_key_once_in_table_order():
    rows = webui_fields.rows()
    assert [key for row in rows for key in row] == [*KEYS, LR_GROUPS]
    assert all(len({key.kind for key in row}) == 1 for row in rows)


def saved(**fields):
    config = {"top.model_name": "Qwen2-VL-2B-Instruct", EXTRA: '{"optim": "adamw_torch"}'}
    config.update({FIELD_IDS[name]: fields.get(name, "") for name in KEY_NAMES})
    return config


def test_fold_moves_set_fields_into_the_extra_arguments():
    folded = webui_fields.fold(saved(vision_tower_lr="2e-6", multi_modal_projector_lr="1,5e-4"), FIELD_IDS, EXTRA)
    assert not set(folded) & set(FIELD_IDS.values())  # stock LlamaBoard loads only elements it has
    assert json.loads(folded[EXTRA]) == {
        "optim": "adamw_torch",
        "vision_tower_lr": 2e-6,
        "multi_modal_projector_lr": 1.5e-4,
    }
    assert folded["top.model_name"] == "Qwen2-VL-2B-Instruct"


def test_fold_with_nothing_set_is_llamaboards_config():
    config = saved()
    folded = webui_fields.fold(config, FIELD_IDS, EXTRA)
    assert folded == {key: value for key, value in config.items() if key not in FIELD_IDS.values()}
    assert folded[EXTRA] == '{"optim": "adamw_torch"}'  # untouched text
    eval_config = {"eval.output_dir": "x"}  # not a train config: nothing to fold
    assert webui_fields.fold(eval_config, FIELD_IDS, EXTRA) == eval_config


def test_unfold_restores_the_fields_and_the_extra_arguments():
    folded = webui_fields.fold(saved(vision_tower_lr="2e-6", language_model_weight_decay="0"), FIELD_IDS, EXTRA)
    texts = webui_fields.unfold(folded, FIELD_IDS, EXTRA)
    assert json.loads(texts.pop(EXTRA)) == {"optim": "adamw_torch"}
    assert texts == {
        **dict.fromkeys(FIELD_IDS.values(), ""),
        "train.vision_tower_lr": "2e-06",
        "train.language_model_weight_decay": "0.0",
    }
    assert webui_fields.values({name: texts[FIELD_IDS[name]] for name in KEY_NAMES}) == {
        "vision_tower_lr": 2e-6,
        "language_model_weight_decay": 0.0,
    }


def test_unfold_of_a_config_saved_without_lf_multilr_blanks_the_fields():
    stock = {"top.model_name": "Qwen2-VL-2B-Instruct", EXTRA: '{"optim": "adamw_torch"}'}
    assert webui_fields.unfold(stock, FIELD_IDS, EXTRA) == dict.fromkeys(FIELD_IDS.values(), "")
    assert webui_fields.unfold({**stock, EXTRA: "{not json"}, FIELD_IDS, EXTRA) == dict.fromkeys(FIELD_IDS.values(), "")
    assert webui_fields.unfold({"eval.output_dir": "x"}, FIELD_IDS, EXTRA) == {}


def test_set_names_sees_fields_and_extra_arguments():
    assert webui_fields.set_names({"vision_tower_lr": " ", "language_model_lr": None}, '{"optim": "sgd"}') == []
    assert webui_fields.set_names({"vision_tower_lr": "1e-6"}, '{"language_model_lr": 1}') == [
        "vision_tower_lr",
        "language_model_lr",
    ]
    assert webui_fields.set_names({}, "{broken") == []


RECORDS = [
    {"current_steps": 1, "loss": 6.0, "lr": 1e-3, "lr/language_model": 1e-3, "lr/vision_tower": 2e-6},
    {
        "current_steps": 2,
        "loss": 5.9,
        "lr": 1e-3,
        "lr/language_model": 1e-3,
        "lr/vision_tower": 2e-6,
        "grad_norm/language_model": 2.5,
        "grad_norm/vision_tower": 0.25,
    },
    {"current_steps": 2, "total_steps": 2},
]


def test_series_and_table_are_generic_over_the_prefixes():
    found = webui_view.series(RECORDS)
    assert found == {
        "lr/": {"language_model": ([1, 2], [1e-3, 1e-3]), "vision_tower": ([1, 2], [2e-6, 2e-6])},
        "grad_norm/": {"language_model": ([2], [2.5]), "vision_tower": ([2], [0.25])},
    }
    assert list(webui_view.series(list(reversed(RECORDS)))) == ["lr/", "grad_norm/"]  # the prefixes' order
    assert webui_view.table(found).splitlines() == [
        "step 2             lr  grad_norm",
        "language_model  0.001        2.5",
        "vision_tower    2e-06       0.25",
    ]
    later = {"lr/": {"language_model": ([3], [1e-4])}, "grad_norm/": {"vision_tower": ([3], [0.5])}}
    assert webui_view.table(later).splitlines() == [
        "step 3              lr  grad_norm",
        "language_model  0.0001          -",
        "vision_tower         -        0.5",
    ]
    assert webui_view.series(RECORDS, ("grad_norm/",)) == {"grad_norm/": found["grad_norm/"]}
    assert webui_view.series([{"current_steps": 1, "loss": 1.0, "lr": 1e-3}]) == {}
    assert webui_view.table({}) == ""


def test_figure_has_a_panel_per_logged_prefix():
    figure = webui_view.figure(webui_view.series(RECORDS))
    assert [ax.get_ylabel() for ax in figure.axes] == ["lr", "grad_norm"]
    assert [line.get_label() for line in figure.axes[0].get_lines()] == ["language_model", "vision_tower"]


def test_read_records_skips_a_line_being_written(tmp_path):
    path = tmp_path / "trainer_log.jsonl"
    assert webui_view.read_records(path) == []
    path.write_text(json.dumps(RECORDS[0]) + "\n" + '{"current_steps": 2, "lo')
    assert webui_view.read_records(path) == [RECORDS[0]]


def test_lr_groups_is_a_json_field_checked_like_the_cli():
    groups = '[{"name": "vit_last", "params": "visual\\\\.blocks\\\\.1\\\\.", "lr": 1e-2}]'
    assert webui_fields.values({"lr_groups": groups}) == {
        "lr_groups": [{"name": "vit_last", "params": "visual\\.blocks\\.1\\.", "lr": 1e-2}]
    }
    assert webui_fields.values({"lr_groups": "  "}) == {}
    with pytest.raises(ConfigError, match=r"`lr_groups: '\[\{'` is refused: it is not valid JSON"):
        webui_fields.values({"lr_groups": "[{"})
    with pytest.raises(ConfigError, match=r"`lr_groups\[0\].params: '\('`"):
        webui_fields.values({"lr_groups": '[{"name": "a", "params": "("}]'})
    for lang in webui_fields.LANGUAGES:
        assert webui_fields.locales()["lr_groups"][lang]["label"] != "lr_groups"


def test_lr_groups_round_trip_through_a_saved_config():
    groups = '[{"name": "emb", "params": "embed_tokens", "lr": 0.0001}]'
    config = {"top.model_name": "Qwen2-VL-2B-Instruct", EXTRA: "{}", **dict.fromkeys(FIELD_IDS.values(), "")}
    config[FIELD_IDS["lr_groups"]] = groups
    folded = webui_fields.fold(config, FIELD_IDS, EXTRA)
    assert json.loads(folded[EXTRA]) == {"lr_groups": [{"name": "emb", "params": "embed_tokens", "lr": 0.0001}]}
    texts = webui_fields.unfold(folded, FIELD_IDS, EXTRA)
    assert json.loads(texts[FIELD_IDS["lr_groups"]]) == json.loads(groups) and json.loads(texts[EXTRA]) == {}
