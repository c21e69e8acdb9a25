"""The module-LR fields of LlamaBoard (LLaMA-Factory's web UI): their labels, their values, their saved form.

One text field per key of the table of modules (:mod:`lf_multilr.modules`), named after the key; blank means "not
set" (the module inherits). A field's label is its kind's template (below) around the module's name in that
language (the table's ``labels``). Everything here is plain Python: ``patches.webui`` puts it into the UI.
"""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Mapping
from typing import Any

from lf_multilr.config.custom_groups import parse_lr_groups
from lf_multilr.config.keys import LR_GROUPS, Key, check_value, keys_of
from lf_multilr.modules import TABLE, Table


def ui_keys(table: Table = TABLE) -> tuple[Key, ...]:
    """The accordion's fields: every key of ``table``'s modules, then ``lr_groups`` as JSON text."""
    return (*keys_of(table), LR_GROUPS)


#: The languages LlamaBoard offers (``webui/locales.py``).
LANGUAGES: tuple[str, ...] = ("en", "ru", "zh", "ko", "ja")
#: The element names of the accordion that holds the fields and of the per-module plot.
TAB = "lf_multilr_tab"
VIEWER = "lf_multilr_viewer"

_TAB_LABEL = {
    "en": "Module learning rates (lf-multilr)",
    "ru": "Скорости обучения модулей (lf-multilr)",
    "zh": "模块学习率 (lf-multilr)",
    "ko": "모듈별 학습률 (lf-multilr)",
    "ja": "モジュール別学習率 (lf-multilr)",
}
_VIEWER_LABEL = {  # one short line: the label sits over the top of the plot
    "en": "Per module: LR, grad norm",
    "ru": "По модулям: LR, норма градиента",
    "zh": "各模块：学习率、梯度范数",
    "ko": "모듈별: 학습률, 그래디언트 노름",
    "ja": "モジュール別：学習率、勾配ノルム",
}
#: Per language and kind of key, the label around the module's name (the table's ``labels``).
_LABEL = {
    "en": {
        "lr": "{module} learning rate",
        "weight_decay": "{module} weight decay",
        "layer_decay": "{module} layer-wise LR decay",
        "start_step": "{module} start step",
        "warmup_steps": "{module} warm-up steps",
        "min_lr": "{module} minimum LR (floor)",
    },
    "ru": {
        "lr": "Скорость обучения {module}",
        "weight_decay": "Затухание весов {module}",
        "layer_decay": "Послойное затухание скорости обучения {module}",
        "start_step": "Шаг начала обучения {module}",
        "warmup_steps": "Шаги прогрева {module}",
        "min_lr": "Минимальная скорость обучения {module}",
    },
    "zh": {
        "lr": "{module}学习率",
        "weight_decay": "{module}权重衰减",
        "layer_decay": "{module}逐层学习率衰减",
        "start_step": "{module}起始步数",
        "warmup_steps": "{module}预热步数",
        "min_lr": "{module}最低学习率",
    },
    "ko": {
        "lr": "{module} 학습률",
        "weight_decay": "{module} 가중치 감쇠",
        "layer_decay": "{module} 층별 학습률 감쇠",
        "start_step": "{module} 시작 스텝",
        "warmup_steps": "{module} 워밍업 스텝",
        "min_lr": "{module} 최소 학습률",
    },
    "ja": {
        "lr": "{module}の学習率",
        "weight_decay": "{module}の重み減衰",
        "layer_decay": "{module}の層別学習率減衰",
        "start_step": "{module}の開始ステップ",
        "warmup_steps": "{module}のウォームアップステップ数",
        "min_lr": "{module}の最小学習率",
    },
}
_INFO = {
    "en": {
        "lr": "Blank: the learning rate above. Example: 1e-6.",
        "weight_decay": "Blank: weight_decay (set in extra arguments, 0 by default). Example: 0.01.",
        "layer_decay": "Block i of N (each stack on its own) trains at the module's LR x d^(N-1-i). Blank: no decay. "
        "Example: 0.9.",
        "start_step": "The module's LR is 0 before this optimizer step. Blank: 0. Example: 500.",
        "warmup_steps": "From its start step the LR rises linearly over this many steps. Blank: none. Example: 100.",
        "min_lr": "The LR the module decays to under a decaying schedule (cosine, linear, ...). Blank: the schedule's "
        "own end. Example: 1e-7.",
    },
    "ru": {
        "lr": "Пусто: общая скорость обучения выше. Пример: 1e-6.",
        "weight_decay": "Пусто: weight_decay (задаётся в дополнительных аргументах, по умолчанию 0). Пример: 0.01.",
        "layer_decay": "Блок i из N (в каждом стеке) обучается со скоростью модуля x d^(N-1-i). Пусто: без затухания. "
        "Пример: 0.9.",
        "start_step": "До этого шага оптимизатора скорость обучения модуля равна 0. Пусто: 0. Пример: 500.",
        "warmup_steps": "С шага начала скорость растёт линейно столько шагов. Пусто: без прогрева. Пример: 100.",
        "min_lr": "Скорость, до которой модуль затухает при убывающем расписании (cosine, linear, ...). Пусто: как "
        "у расписания. Пример: 1e-7.",
    },
    "zh": {
        "lr": "留空则沿用上方的学习率。例如：1e-6。",
        "weight_decay": "留空则沿用 weight_decay（可在额外参数中设置，默认为 0）。例如：0.01。",
        "layer_decay": "（每个堆栈各自计数）N 个块中的第 i 块以模块学习率 × d^(N-1-i) 训练。留空则不衰减。例如：0.9。",
        "start_step": "在此优化步之前该模块的学习率为 0。留空则为 0。例如：500。",
        "warmup_steps": "从起始步起，学习率在这么多步内线性上升。留空则不单独预热。例如：100。",
        "min_lr": "在衰减型调度（cosine、linear 等）下该模块最终衰减到的学习率。留空则沿用调度本身的终点。例如：1e-7。",
    },
    "ko": {
        "lr": "비워 두면 위의 학습률을 사용합니다. 예: 1e-6.",
        "weight_decay": "비워 두면 weight_decay(추가 인수에서 설정, 기본값 0)를 사용합니다. 예: 0.01.",
        "layer_decay": "(스택마다 따로) N개 블록 중 i번째 블록은 모듈 학습률 × d^(N-1-i)로 학습합니다. "
        "비워 두면 감쇠 없음. 예: 0.9.",
        "start_step": "이 옵티마이저 스텝 전에는 모듈의 학습률이 0입니다. 비워 두면 0. 예: 500.",
        "warmup_steps": "시작 스텝부터 이 스텝 수 동안 학습률이 선형으로 올라갑니다. 비워 두면 없음. 예: 100.",
        "min_lr": "감쇠 스케줄(cosine, linear 등)에서 모듈이 감쇠해 도달하는 학습률입니다. 비워 두면 스케줄 자체의 "
        "끝값. 예: 1e-7.",
    },
    "ja": {
        "lr": "空欄の場合は上の学習率を使います。例：1e-6。",
        "weight_decay": "空欄の場合は weight_decay（追加引数で設定、既定値は 0）を使います。例：0.01。",
        "layer_decay": "（スタックごとに）N 個中 i 番目のブロックはモジュールの学習率 × d^(N-1-i) で学習します。"
        "空欄：減衰なし。例：0.9。",
        "start_step": "この最適化ステップまでモジュールの学習率は 0 です。空欄：0。例：500。",
        "warmup_steps": "開始ステップからこのステップ数で学習率が線形に上がります。空欄：なし。例：100。",
        "min_lr": "減衰するスケジュール（cosine、linear など）でモジュールが最後に下がりきる学習率です。空欄："
        "スケジュール自体の終点。例：1e-7。",
    },
}


_GROUPS = {
    "en": {
        "label": "Custom groups (lr_groups, JSON)",
        "info": "Matched before the modules; lr, weight_decay, start_step, warmup_steps and min_lr inherit. Example: "
        '[{"name": "vit_last", "params": "visual[.]blocks[.]31[.]", "lr": 1e-5}]',
    },
    "ru": {
        "label": "Собственные группы (lr_groups, JSON)",
        "info": "Проверяются раньше модулей; lr, weight_decay, start_step, warmup_steps и min_lr наследуются. Пример: "
        '[{"name": "vit_last", "params": "visual[.]blocks[.]31[.]", "lr": 1e-5}]',
    },
    "zh": {
        "label": "自定义参数组（lr_groups，JSON）",
        "info": "先于各模块匹配；lr、weight_decay、start_step、warmup_steps 与 min_lr 可继承。例如："
        '[{"name": "vit_last", "params": "visual[.]blocks[.]31[.]", "lr": 1e-5}]',
    },
    "ko": {
        "label": "사용자 정의 그룹 (lr_groups, JSON)",
        "info": "모듈보다 먼저 일치시킵니다. lr, weight_decay, start_step, warmup_steps, min_lr은 상속됩니다. 예: "
        '[{"name": "vit_last", "params": "visual[.]blocks[.]31[.]", "lr": 1e-5}]',
    },
    "ja": {
        "label": "カスタムグループ（lr_groups、JSON）",
        "info": "モジュールより先に照合し、lr、weight_decay、start_step、warmup_steps、min_lr は継承されます。例："
        '[{"name": "vit_last", "params": "visual[.]blocks[.]31[.]", "lr": 1e-5}]',
    },
}


def label(key: Key, lang: str, table: Table = TABLE) -> dict[str, str]:
    """The field's label and help in ``lang``; a key whose module or kind has no words in ``lang`` gets its name and
    CLI help."""
    if key.kind == "groups":
        return dict(_GROUPS.get(lang) or {"label": key.name, "info": key.help})
    module = table[key.module].labels.get(lang) if key.module in table.names else None
    template = _LABEL.get(lang, {}).get(key.kind)
    info = _INFO.get(lang, {}).get(key.kind)
    if module is None or template is None or info is None:
        return {"label": key.name, "info": key.help}
    return {"label": template.format(module=module), "info": info}


def locales(table: Table = TABLE) -> dict[str, dict[str, dict[str, str]]]:
    """The entries lf-multilr adds to LlamaBoard's ``LOCALES`` (element name -> language -> properties)."""
    entries = {key.name: {lang: label(key, lang, table) for lang in LANGUAGES} for key in ui_keys(table)}
    entries[TAB] = {lang: {"label": _TAB_LABEL[lang]} for lang in LANGUAGES}
    entries[VIEWER] = {lang: {"label": _VIEWER_LABEL[lang]} for lang in LANGUAGES}
    return entries


def rows(table: Table = TABLE) -> list[list[Key]]:
    """The fields' layout: one row per kind of key (learning rates, weight decays, ...), in key order."""
    by_kind: dict[str, list[Key]] = {}
    for key in ui_keys(table):
        by_kind.setdefault(key.kind, []).append(key)
    return list(by_kind.values())


def value(key: Key, text: Any) -> float | None:
    """A field's value: ``None`` when blank, else a number checked as the CLI checks it.

    Accepts what people type: ``1e-5``, ``1.0E-05``, a decimal comma (``1,5e-5``), full-width characters.
    Anything else raises the CLI's :class:`~lf_multilr.errors.ConfigError` for that key. ``lr_groups`` is JSON:
    its value is the list, checked as the CLI checks it.
    """
    if key.kind == "groups":
        if text is None or not str(text).strip():
            return None
        parse_lr_groups(str(text))  # raises the CLI's message
        return json.loads(str(text))
    if text is None or isinstance(text, (bool, int, float)):
        return check_value(key, text)
    normal = unicodedata.normalize("NFKC", str(text)).strip().replace("\u2212", "-")
    if not normal:
        return None
    if normal.count(",") == 1 and "." not in normal:
        normal = normal.replace(",", ".")
    try:
        number = float(normal)
    except ValueError:
        return check_value(key, text)  # raises, with the text as typed
    return check_value(key, number)


def values(texts: Mapping[str, Any]) -> dict[str, Any]:
    """The set keys among ``texts`` (key name -> field text), as values; raises on the first bad one."""
    numbers = {key.name: value(key, texts[key.name]) for key in ui_keys() if key.name in texts}
    return {name: number for name, number in numbers.items() if number is not None}


def text(number: Any) -> str:
    """How a saved value shows in its field."""
    if isinstance(number, (list, dict)):
        return json.dumps(number, ensure_ascii=False)
    return repr(float(number)) if isinstance(number, (int, float)) and not isinstance(number, bool) else str(number)


def fold(config: Mapping[str, Any], field_ids: Mapping[str, str], extra_id: str) -> dict[str, Any]:
    """A saved UI config with the fields moved into the extra-arguments JSON.

    Stock LlamaBoard refuses to load a config that names an element it does not have, but it loads the extra
    arguments: so a config saved with lf-multilr still loads where lf-multilr is absent (its keys then show in
    "Extra arguments"). Blank fields are dropped; a config with none set is exactly LlamaBoard's.
    """
    folded = dict(config)
    if not isinstance(folded.get(extra_id), str):
        return folded
    texts = {name: folded.pop(elem_id) for name, elem_id in field_ids.items() if elem_id in folded}
    numbers = values(texts)
    if numbers:
        extra = json.loads(folded[extra_id] or "{}")
        extra.update(numbers)
        folded[extra_id] = json.dumps(extra, ensure_ascii=False)
    return folded


def unfold(config: Mapping[str, Any], field_ids: Mapping[str, str], extra_id: str) -> dict[str, str]:
    """The field texts a saved config sets: its lf-multilr keys in the extra arguments, every other field blank.

    Returns the new extra-arguments text under ``extra_id`` when keys were taken out of it. A config that is not
    LlamaBoard's train config (no extra arguments) sets nothing.
    """
    extra = config.get(extra_id)
    if not isinstance(extra, str):
        return {}
    texts = {
        elem_id: text(config[elem_id]) if config.get(elem_id) is not None else "" for elem_id in field_ids.values()
    }
    try:
        parsed = json.loads(extra)
    except json.JSONDecodeError:
        return texts
    if isinstance(parsed, dict):
        moved = [name for name in field_ids if name in parsed]
        for name in moved:
            texts[field_ids[name]] = text(parsed.pop(name))
        if moved:
            texts[extra_id] = json.dumps(parsed, ensure_ascii=False)
    return texts


def key_names_in(extra: Any) -> list[str]:
    """The lf-multilr keys set in an extra-arguments JSON text."""
    try:
        parsed = json.loads(extra) if isinstance(extra, str) else None
    except json.JSONDecodeError:
        return []
    return [key.name for key in ui_keys() if isinstance(parsed, dict) and key.name in parsed]


def set_names(texts: Mapping[str, Any], extra: Any) -> list[str]:
    """The keys a UI state sets, in its fields (non-blank) or in its extra arguments."""
    in_fields = [name for name, text in texts.items() if text is not None and str(text).strip()]
    return list(dict.fromkeys(in_fields + key_names_in(extra)))
