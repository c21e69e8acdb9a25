"""The audio tower as a module of its own (``audio_tower_lr`` ... and ``freeze_audio_tower``), in-process.

Every registry type with an audio encoder, built tiny by ``tools/zoo.py`` on the meta device: an audio key puts every
audio-encoder tensor at ``audio_tower_lr`` and its output projection in the projector, and a config without one
builds exactly the groups it built before the audio tower had a row. LLaMA-Factory's own freezing code, with
``freeze_audio_tower`` set, freezes one tower and trains the other. The end-to-end training is in
``tests/test_audio_train.py``.
"""

from __future__ import annotations

import importlib.util
import math
from dataclasses import replace
from functools import cache
from types import SimpleNamespace

import pytest
import torch

from lf_multilr.config.checks import refuse_frozen
from lf_multilr.config.settings import Settings
from lf_multilr.errors import ConfigError
from lf_multilr.grouping.placement import ModuleMap, normalize
from lf_multilr.grouping.plan import GroupPlan, build_plan
from lf_multilr.grouping.supplement import SUPPLEMENT
from lf_multilr.modules import BASE, TABLE, RegistryEntry, Table
from lf_multilr.reports.table import format_table
from lf_multilr.training.metrics import GradNormMonitor
from tools import zoo
from tools.testing import full_suite_only

pytestmark = full_suite_only("tools/zoo.py's transformers 5 configs of the audio models")

#: The registry types whose entry holds an audio encoder (the audio row's keys find one in their vision keys).
AUDIO_TYPES = ("gemma3n", "gemma4", "minicpmo", "qwen2_5_omni_thinker", "qwen2_audio", "qwen3_omni_moe_thinker")
BUILT = [
    pytest.param(
        t,
        marks=pytest.mark.skipif(
            t in zoo.NEEDS and importlib.util.find_spec(zoo.NEEDS[t]) is None, reason=f"needs {zoo.NEEDS.get(t)}"
        ),
    )
    for t in AUDIO_TYPES
    if t in zoo.CONFIGS
]
#: The table of modules before the audio tower had a row: vision tower, projector, language model, and the
#: supplement's rules of then (none waited for a part).
BEFORE = Table(
    (
        replace(TABLE["vision_tower"], priority=1),
        TABLE["multi_modal_projector"],
        replace(TABLE["language_model"], priority=2),
    )
)


@cache
def model(model_type: str) -> torch.nn.Module:
    return zoo.build(model_type)


def entry(model_type: str) -> RegistryEntry:
    from lf_multilr.patches.registry import module_map

    mapping = module_map(model_type, TABLE)
    assert mapping is not None
    return RegistryEntry(
        mapping.keys["multi_modal_projector"], mapping.keys["vision_tower"], mapping.keys["language_model"]
    )


def mapping_of(model_type: str, table: Table) -> ModuleMap:
    from lf_multilr.grouping.supplement import rules_for

    return ModuleMap.from_registry(model_type, entry(model_type), rules_for(model_type), table)


def plan_of(model_type: str, settings: Settings, table: Table | None = None) -> GroupPlan:
    net = model(model_type)
    net.requires_grad_(True)
    table = table or settings.table
    return build_plan(net.named_parameters(), mapping_of(model_type, table), settings, 1e-3, 0.01, decay(net))


def decay(net: torch.nn.Module) -> set[str]:
    from transformers import Trainer

    return set(Trainer.get_decay_parameter_names(None, net))  # type: ignore[arg-type]


def members(plan: GroupPlan, module: str) -> set[str]:
    return {plan.tensor_names[id(p)] for g in plan.param_groups if g["module"] == module for p in g["params"]}


def test_the_registry_types_with_an_audio_encoder_are_these():
    from llamafactory.model.model_utils.visual import COMPOSITE_MODELS

    found = {t for t in COMPOSITE_MODELS if TABLE["audio_tower"].source.keys(entry(t))}
    assert found == set(AUDIO_TYPES)
    assert set(AUDIO_TYPES) - set(zoo.CONFIGS) == {"minicpmo"}  # remote code: its names are checked below


@pytest.mark.parametrize("model_type", BUILT)
def test_an_audio_key_puts_every_audio_encoder_tensor_at_audio_tower_lr(model_type):
    keys = {"vision_tower_lr": 2e-6, "multi_modal_projector_lr": 5e-6, "language_model_lr": 1e-4}
    before = plan_of(model_type, Settings.read(SimpleNamespace(**keys)))
    split = plan_of(model_type, Settings.read(SimpleNamespace(**keys, audio_tower_lr=3e-5, audio_tower_start_step=2)))
    assert list(before.rows) == ["language_model", "vision_tower", "multi_modal_projector", "other"]
    assert list(split.rows) == ["language_model", "vision_tower", "multi_modal_projector", "audio_tower", "other"]
    names = {normalize(name) for name, _ in model(model_type).named_parameters()}
    # The audio encoder: everything under the tower's attribute but its output projection (the registry's
    # `audio_tower.proj` projector key for the Qwen thinkers); Gemma's projection `embed_audio` sits outside it.
    encoder = {n for n in names if "audio_tower." in n and "audio_tower.proj" not in n}
    projections = {n for n in names if "audio" in n} - encoder
    assert encoder and members(split, "audio_tower") == encoder
    assert members(split, "vision_tower") == members(before, "vision_tower") - encoder  # the rest of the tower
    assert projections <= members(split, "multi_modal_projector") == members(before, "multi_modal_projector")
    assert members(split, "language_model") == members(before, "language_model")
    assert split.rows["other"].tensors == 0 and split.rows["audio_tower"].lr == 3e-5
    for group in split.param_groups:
        expected = {"language_model": 1e-4, "vision_tower": 2e-6, "multi_modal_projector": 5e-6, "audio_tower": 3e-5}
        assert group["lr"] == expected[group["module"]], group["name"]
        assert group.get("start_step", 0) == (2 if group["module"] == "audio_tower" else 0)
    assert "\n  audio_tower " in format_table(split) and "audio_tower: LR 0 before optimizer step 2" in format_table(
        split
    )
    # The per-module gradient norms of a stock optimizer follow the run's modules too.
    monitor = GradNormMonitor.of_model(
        model(model_type).named_parameters(), mapping_of(model_type, split.settings.table)
    )
    order = ["language_model", "vision_tower", "multi_modal_projector", "audio_tower"]
    assert list(monitor.params) == [module for module in order if members(split, module)]  # Qwen2-Audio: no vision
    assert {id(p) for p in monitor.params["audio_tower"]} == {
        id(p) for g in split.param_groups if g["module"] == "audio_tower" for p in g["params"]
    }


def test_minicpm_o_by_its_registry_keys_audio_encoder_apart_projection_to_the_projector_tts_stays():
    """MiniCPM-o is remote code: its registry keys on the names its modeling file uses."""
    names = [
        "vpm.encoder.layers.0.mlp.fc1.weight",
        "apm.layers.0.self_attn.q_proj.weight",
        "apm.conv1.weight",
        "audio_projection_layer.linear1.weight",
        "tts.model.layers.0.mlp.up_proj.weight",
        "resampler.kv_proj.weight",
        "llm.model.layers.0.mlp.up_proj.weight",
    ]
    before = mapping_of("minicpmo", BASE)
    split = mapping_of("minicpmo", TABLE)
    assert [before.owner(n) for n in names] == [
        "vision_tower",
        "vision_tower",
        "vision_tower",
        "vision_tower",
        "vision_tower",
        "multi_modal_projector",
        "language_model",
    ]
    assert [split.owner(n) for n in names] == [
        "vision_tower",
        "audio_tower",
        "audio_tower",
        "multi_modal_projector",  # the supplement's rule that waits for the audio tower
        "vision_tower",  # the TTS head: a speech decoder, not an encoder; where the registry files it
        "multi_modal_projector",
        "language_model",
    ]
    rule = split.placement("audio_projection_layer.linear1.weight").rule
    assert rule is not None and rule.with_part == "audio_tower" and rule.registry == ("vision_tower",)


def _groups(plan: GroupPlan) -> list[tuple]:
    return [
        (g["name"], g["layout"], g["lr"], g["weight_decay"], g.get("start_step"), [id(p) for p in g["params"]])
        for g in plan.param_groups
    ]


@pytest.mark.parametrize("model_type", [*BUILT, "qwen2_vl", "llava"])
def test_a_config_without_audio_keys_builds_the_groups_it_built_before(model_type):
    """Bit for bit: the same groups (names, layout digests the resume check compares, LRs, members in order), table
    and gradient-norm modules as with the table before the audio row, for a config that sets every other key."""
    values = {
        "vision_tower_lr": 2e-6,
        "multi_modal_projector_lr": 5e-6,
        "language_model_weight_decay": 0.0,
        "vision_tower_lr_layer_decay": 0.8,
        "multi_modal_projector_start_step": 3,
    }
    now = Settings.read(SimpleNamespace(**values))
    assert now.table == BASE and now.table.names == BEFORE.names
    then = Settings({**dict.fromkeys(now.values), **values}, table=BEFORE)
    rules = tuple(rule for rule in SUPPLEMENT if model_type in rule.model_types and rule.with_part is None)
    old_map = ModuleMap.from_registry(model_type, entry(model_type), rules, BEFORE)
    net = model(model_type)
    net.requires_grad_(True)
    old = build_plan(net.named_parameters(), old_map, then, 1e-3, 0.01, decay(net))
    new = plan_of(model_type, now)
    assert _groups(new) == _groups(old)
    assert format_table(new) == format_table(old)
    new_monitor = GradNormMonitor.of_model(net.named_parameters(), mapping_of(model_type, now.table))
    old_monitor = GradNormMonitor.of_model(net.named_parameters(), old_map)
    assert {m: [id(p) for p in ps] for m, ps in new_monitor.params.items()} == {
        m: [id(p) for p in ps] for m, ps in old_monitor.params.items()
    }


def keyed_args(**flags):
    from llamafactory.hparams import FinetuningArguments

    from lf_multilr.patches.hparams import keyed_class

    return keyed_class(FinetuningArguments)(**{"finetuning_type": "full", **flags})


def trainable_after_llamafactorys_freezing(model_type: str, **flags) -> set[str]:
    from llamafactory.model.adapter import _setup_full_tuning

    net = model(model_type)
    net.requires_grad_(True)
    _setup_full_tuning(net, keyed_args(**flags), is_trainable=True, cast_trainable_params_to_fp32=False)
    trainable = {normalize(name) for name, p in net.named_parameters() if p.requires_grad}
    net.requires_grad_(True)
    return trainable


@pytest.mark.parametrize("model_type", BUILT)
def test_freeze_audio_tower_freezes_one_tower_and_trains_the_other(model_type):
    split = mapping_of(model_type, TABLE)
    names = {normalize(name) for name, _ in model(model_type).named_parameters()}
    audio = {n for n in names if split.owner(n) == "audio_tower"}
    vision = {n for n in names if split.owner(n) == "vision_tower"}
    off = {"freeze_multi_modal_projector": False, "freeze_language_model": False}
    # LLaMA-Factory's flag alone (the new one unset) keeps its meaning: both towers.
    both = trainable_after_llamafactorys_freezing(model_type, freeze_vision_tower=True, **off)
    assert not (audio | vision) & both
    audio_only = trainable_after_llamafactorys_freezing(
        model_type, freeze_vision_tower=True, freeze_audio_tower=False, **off
    )
    assert audio <= audio_only and not vision & audio_only
    vision_only = trainable_after_llamafactorys_freezing(
        model_type, freeze_vision_tower=False, freeze_audio_tower=True, **off
    )
    assert vision <= vision_only and not audio & vision_only
    # What the projector loses to `freeze_audio_tower: true` is what LLaMA-Factory's `freeze_vision_tower` takes
    # from it today: the names under the tower's attribute (`audio_tower.proj`), by substring.
    assert names - audio - vision_only == {n for n in names if "audio_tower.proj" in n}
    # Trained apart, the frozen tower has no param group, so the optimizer holds no state for it.
    net = model(model_type)
    for name, param in net.named_parameters():
        param.requires_grad_(normalize(name) in audio_only)
    settings = Settings.read(keyed_args(freeze_vision_tower=True, freeze_audio_tower=False, audio_tower_lr=1e-5))
    refuse_frozen(settings, keyed_args(freeze_vision_tower=True, freeze_audio_tower=False, audio_tower_lr=1e-5))
    plan = build_plan(net.named_parameters(), split, settings, 1e-3, 0.0, set())
    assert members(plan, "vision_tower") == set() and members(plan, "audio_tower") == audio
    optimizer = torch.optim.AdamW(plan.param_groups)
    assert not {id(p) for g in optimizer.param_groups for p in g["params"]} & {
        id(p) for n, p in net.named_parameters() if normalize(n) in vision
    }
    net.requires_grad_(True)


def test_lora_target_all_adapts_the_audio_tower_that_trains_and_not_the_frozen_vision_tower():
    from llamafactory.model import adapter

    net = model("qwen2_5_omni_thinker")
    args = keyed_args(finetuning_type="lora", lora_target="all", freeze_vision_tower=True, freeze_audio_tower=False)
    targets = adapter.patch_target_modules(net, args, adapter.find_all_linear_modules(net, args.freeze_vision_tower))
    audio_linears = {n for n, m in net.named_modules() if "audio_tower.layers" in n and isinstance(m, torch.nn.Linear)}
    assert audio_linears and audio_linears <= set(targets)
    assert not [t for t in targets if "visual." in t]
    stock = keyed_args(finetuning_type="lora", lora_target="all", freeze_vision_tower=True)  # LF's flag alone
    stock_targets = adapter.patch_target_modules(net, stock, adapter.find_all_linear_modules(net, True))
    assert not [t for t in stock_targets if "audio_tower" in t or "visual." in t]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (
            {"freeze_vision_tower": True},
            "`audio_tower_lr: 1e-05` is refused: `freeze_vision_tower: true` freezes the audio_tower, so its value "
            "would do nothing. Fix: set `freeze_audio_tower: false` (while it is unset, `freeze_vision_tower` freezes "
            "the audio tower too, as in LLaMA-Factory), or remove the key",
        ),
        (
            {"freeze_vision_tower": False, "freeze_audio_tower": True},
            "`audio_tower_lr: 1e-05` is refused: `freeze_audio_tower: true` freezes the audio_tower, so its value "
            "would do nothing. Fix: set `freeze_audio_tower: false`, or remove the key",
        ),
    ],
)
def test_an_lr_for_a_frozen_audio_tower_is_refused_naming_the_flag(flags, message):
    args = keyed_args(audio_tower_lr=1e-5, **flags)
    with pytest.raises(ConfigError) as error:
        refuse_frozen(Settings.read(args), args)
    assert str(error.value) == f"lf-multilr: {message}"


def test_the_audio_keys_reach_llamaboard_in_its_five_languages_and_the_sweeps_axes():
    from lf_multilr.webui import fields as webui_fields
    from lf_multilr_sweep.args import parse_range
    from lf_multilr_sweep.keys import LF_MULTILR_KEYS

    audio = [
        "audio_tower_lr",
        "audio_tower_weight_decay",
        "audio_tower_lr_layer_decay",
        "audio_tower_start_step",
        "audio_tower_warmup_steps",
        "audio_tower_min_lr",
    ]
    entries = webui_fields.locales()
    labels = {lang: entries["audio_tower_lr"][lang]["label"] for lang in webui_fields.LANGUAGES}
    assert labels == {
        "en": "Audio tower learning rate",
        "ru": labels["ru"],
        "zh": labels["zh"],
        "ko": labels["ko"],
        "ja": labels["ja"],
    }
    for lang, word in {"ru": "аудиоэнкодера", "zh": "音频编码器", "ko": "오디오 타워", "ja": "音声タワー"}.items():
        assert all(word in entries[key][lang]["label"] for key in audio), lang
    assert [key.name for row in webui_fields.rows() for key in row if key.module == "audio_tower"] == audio
    assert {*audio, "freeze_audio_tower"} <= LF_MULTILR_KEYS
    assert parse_range("audio_tower_lr=1e-6:1e-3:log").key == "audio_tower_lr"


@pytest.mark.parametrize(
    "model_type", [t for t in ("qwen2_5_omni_thinker", "qwen3_omni_moe_thinker") if t in zoo.CONFIGS]
)
def test_on_an_omni_thinker_each_towers_decay_key_decays_its_own_stack_only(model_type):
    """The audio tower its own module: ``audio_tower_lr_layer_decay`` counts the audio layers (N_audio + 1 factors,
    embeddings to head) and ``vision_tower_lr_layer_decay`` the visual blocks alone; no tensor of one tower takes a
    factor of the other's decay."""
    keys = {
        "vision_tower_lr": 1.0,
        "vision_tower_lr_layer_decay": 0.5,
        "audio_tower_lr": 2.0,
        "audio_tower_lr_layer_decay": 0.8,
    }
    plan = plan_of(model_type, Settings.read(SimpleNamespace(**keys)))
    names = [normalize(name) for name, _ in model(model_type).named_parameters()]
    audio_layers = {
        name.split("audio_tower.layers.")[1].split(".")[0] for name in names if "audio_tower.layers." in name
    }
    visual_blocks = {name.split("visual.blocks.")[1].split(".")[0] for name in names if "visual.blocks." in name}
    assert len(audio_layers) >= 2 and len(visual_blocks) >= 2

    def exponents(module: str, base: float, decay: float) -> set[int]:
        found = set()
        for group in plan.param_groups:
            if group["module"] == module:
                power = math.log(group["lr"] / base) / math.log(decay)
                assert abs(power - round(power)) < 1e-9, (group["name"], group["lr"])
                found.add(round(power))
        return found

    assert exponents("audio_tower", 2.0, 0.8) == set(range(len(audio_layers) + 1))
    assert exponents("vision_tower", 1.0, 0.5) == set(range(len(visual_blocks) + 1))
    audio = members(plan, "audio_tower")
    assert audio and all("audio_tower." in name for name in audio)
    assert not {name for name in members(plan, "vision_tower") if "audio_tower." in name}
