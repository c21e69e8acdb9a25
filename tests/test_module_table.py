"""The table of modules drives the keys, the groups, the tables, the checks and LlamaBoard's fields.

The shipped table has four rows; a run that asks for no part keeps the three modules it always had. The audio row
(whose parameters come from a prefix of the registry's vision keys, or from a supplement rule, with a freeze flag of
its own) gets that module everywhere without any other edit; here it also brings a layer-wise decay.
"""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from lf_multilr.config.checks import frozen_fix, refuse_frozen
from lf_multilr.config.keys import FREEZE_FLAG, MODULES, ORDER, check_value, keys_of
from lf_multilr.config.settings import Settings
from lf_multilr.errors import ConfigError
from lf_multilr.grouping.checks import check_plan
from lf_multilr.grouping.placement import PRIORITY, ModuleMap
from lf_multilr.grouping.plan import build_plan
from lf_multilr.grouping.supplement import Rule
from lf_multilr.modules import BASE, COMMON, KINDS, TABLE, RegistryEntry, Source, Table
from lf_multilr.reports.as_json import plan_to_dict
from lf_multilr.reports.table import format_table
from lf_multilr.training.metrics import GradNormMonitor
from lf_multilr.webui import fields as webui_fields
from tools.testing import decay_names

#: The shipped audio row: every kind of key, a layer-wise decay and a floor included.
AUDIO = TABLE["audio_tower"]
assert AUDIO.kinds == (*COMMON, "layer_decay") and set(AUDIO.kinds) == set(KINDS)
#: The shipped table with that row: the projector still beats everything, audio beats the vision tower.
WITH_AUDIO = Table(tuple(AUDIO if row.name == "audio_tower" else row for row in TABLE.rows))
#: A Qwen2.5-Omni thinker's registry entry: the audio tower sits in the vision keys, its output projection in both.
OMNI = RegistryEntry(
    projector_keys=("visual.merger", "audio_tower.proj"),
    vision_model_keys=("visual.patch_embed", "visual.blocks", "audio_tower"),
    language_model_keys=("model.language_model", "lm_head"),
)


class Omni(nn.Module):
    """Toy parameter names of an omni thinker: two vision blocks, three audio layers, two mergers, an LLM."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.visual = nn.ModuleDict(
            {
                "patch_embed": nn.Linear(4, 8, bias=False),
                "blocks": nn.ModuleList([nn.Linear(8, 8) for _ in range(2)]),
                "merger": nn.Linear(8, 6),
            }
        )
        self.audio_tower = nn.ModuleDict(
            {
                "conv": nn.Linear(3, 5, bias=False),
                "layers": nn.ModuleList([nn.Linear(5, 5) for _ in range(3)]),
                "proj": nn.Linear(5, 6),
            }
        )
        self.model = nn.ModuleDict({"language_model": nn.Sequential(nn.Embedding(10, 6), nn.Linear(6, 6))})
        self.lm_head = nn.Linear(6, 10, bias=False)


def audio_settings(**values: float) -> Settings:
    return Settings({**dict.fromkeys(key.name for key in keys_of(WITH_AUDIO)), **values}, table=WITH_AUDIO)


def test_the_shipped_table_gives_todays_orders_flags_and_help():
    # A run that asks for no part: the three modules, in the orders they always had.
    assert MODULES == ("language_model", "vision_tower", "multi_modal_projector")  # HF logs group 0 as learning_rate
    assert ORDER == (*MODULES, "other")
    assert FREEZE_FLAG == {f"{name}": f"freeze_{name}" for name in BASE.names}
    assert [row.name for row in BASE.by_priority] == ["multi_modal_projector", "vision_tower", "language_model"]
    # The shipped table: the audio tower last in the groups, and before the vision tower where keys overlap.
    assert [row.name for row in TABLE.by_order] == [*MODULES, "audio_tower"]
    assert PRIORITY == ("multi_modal_projector", "audio_tower", "vision_tower", "language_model")
    assert [row.name for row in TABLE.parts()] == ["audio_tower"] and TABLE["audio_tower"].part_of == "vision_tower"
    layer = next(key for key in keys_of(TABLE) if key.kind == "layer_decay")
    assert layer.help == (
        "Layer-wise LR decay of the vision (and audio) tower, each stack of numbered blocks on its own: block i of N "
        "trains at vision_tower_lr * d**(N-1-i), its embeddings at d**N, its head at vision_tower_lr (0 < d <= 1) "
        "(lf-multilr). Unset: no decay."
    )
    assert BASE.nouns() == "vision tower, projector or language model"


def test_a_table_refuses_rows_that_collide():
    with pytest.raises(ValueError, match="share a priority"):
        BASE.with_row(replace(AUDIO, priority=0))
    with pytest.raises(ValueError, match="share a order"):
        BASE.with_row(replace(AUDIO, priority=7, order=0))
    with pytest.raises(ValueError, match="not a module"):
        BASE.with_row(replace(AUDIO, name="other", priority=7))
    with pytest.raises(ValueError, match="part of `vision`"):
        BASE.with_row(replace(AUDIO, part_of="vision"))
    with pytest.raises(ValueError, match="not a registry field"):
        Source("audio_model_keys")


def test_a_row_brings_its_keys_with_their_help_and_checks():
    names = [key.name for key in keys_of(WITH_AUDIO)]
    assert names[:4] == ["vision_tower_lr", "multi_modal_projector_lr", "language_model_lr", "audio_tower_lr"]
    assert names.index("audio_tower_lr_layer_decay") == names.index("language_model_lr_layer_decay") + 1
    assert names[-1] == "audio_tower_min_lr" and len(names) == 17 + 6
    keys = {key.name: key for key in keys_of(WITH_AUDIO)}
    assert keys["audio_tower_lr"].help == "Learning rate of the audio tower (lf-multilr). Unset: `learning_rate`."
    assert "trains at audio_tower_lr * d**(N-1-i)" in keys["audio_tower_lr_layer_decay"].help
    with pytest.raises(ConfigError, match=r"^lf-multilr: `audio_tower_start_step: -1` is refused: a start step"):
        check_value(keys["audio_tower_start_step"], -1)
    read = Settings.read(SimpleNamespace(audio_tower_lr="3e-5"), WITH_AUDIO)
    assert read.explicit("audio_tower") == ["audio_tower_lr"] and read.values["audio_tower_lr"] == 3e-5


def test_a_row_takes_its_parameters_from_a_prefix_of_the_registry_keys_and_wins_by_priority():
    mapping = ModuleMap.from_registry("toy_omni", OMNI, table=WITH_AUDIO)
    assert mapping.keys == {
        "vision_tower": ("visual.patch_embed", "visual.blocks", "audio_tower"),
        "multi_modal_projector": ("visual.merger", "audio_tower.proj"),
        "language_model": ("model.language_model", "lm_head"),
        "audio_tower": ("audio_tower",),
    }
    layer = mapping.placement("thinker.audio_tower.layers.0.weight")
    assert (layer.module, layer.registry) == ("audio_tower", ("audio_tower", "vision_tower"))  # both flags reach it
    assert mapping.owner("audio_tower.proj.weight") == "multi_modal_projector"
    assert mapping.owner("visual.blocks.0.weight") == "vision_tower"
    assert ModuleMap.from_registry("toy_omni", OMNI).owner("audio_tower.layers.0.weight") == "vision_tower"  # shipped


def test_a_row_the_registry_does_not_name_takes_its_parameters_from_the_supplement():
    entry = RegistryEntry(("merger",), ("visual",), ("language_model",))
    rule = Rule(("toy_apm",), ("apm.",), "audio_tower", (), "an audio encoder no registry key names")
    no_registry = replace(AUDIO, source=Source(None), freeze_flag=None, part_of=None)
    table = Table((*BASE.rows, replace(no_registry, priority=9)))
    mapping = ModuleMap.from_registry("toy_apm", entry, [rule], table)
    assert mapping.keys["audio_tower"] == () and mapping.keys_of("audio_tower") == ("apm.",)
    placed = mapping.placement("apm.layers.0.weight")
    assert (placed.module, placed.registry, placed.rule) == ("audio_tower", (), rule)
    assert frozen_fix(table["audio_tower"], "full") == "make the audio tower trainable"


def test_the_groups_the_table_and_the_monitor_derive_the_row():
    model = Omni()
    mapping = ModuleMap.from_registry("toy_omni", OMNI, table=WITH_AUDIO)
    settings = audio_settings(
        vision_tower_lr=2e-6, audio_tower_lr=1e-5, audio_tower_lr_layer_decay=0.5, audio_tower_start_step=3
    )
    plan = build_plan(model.named_parameters(), mapping, settings, 1e-4, 0.0, decay_names(model))
    check_plan(plan, "full")
    assert list(plan.rows) == ["language_model", "vision_tower", "multi_modal_projector", "audio_tower", "other"]
    row = plan.rows["audio_tower"]
    assert (row.lr, row.tensors) == (1e-5, 1 + 3 * 2)  # conv, three layers' weights and biases; not proj
    audio = {group["name"]: group for group in plan.param_groups if group["module"] == "audio_tower"}
    members = {name: {id(p) for p in group["params"]} for name, group in audio.items()}
    layers = model.audio_tower["layers"]
    assert members["audio_tower/decay/block0"] == {id(layers[0].weight)}
    assert members["audio_tower/no_decay/block2"] == {id(layers[2].bias)}
    assert members["audio_tower/decay/embeddings"] == {id(model.audio_tower["conv"].weight)}
    # Its own stack: three audio layers (the two vision blocks count for nothing), block i at lr * 0.5 ** (2 - i).
    assert audio["audio_tower/decay/block0"]["lr"] == pytest.approx(1e-5 * 0.25)
    assert audio["audio_tower/decay/block2"]["lr"] == pytest.approx(1e-5)
    assert audio["audio_tower/decay/embeddings"]["lr"] == pytest.approx(1e-5 * 0.125)
    assert all(group["start_step"] == 3 for group in audio.values())
    vision = [group for group in plan.param_groups if group["module"] == "vision_tower"]
    assert {group["lr"] for group in vision} == {2e-6}  # the audio decay does not touch vision
    assert sum(len(group["params"]) for group in vision) == 1 + 2 * 2
    projector = {id(p) for g in plan.param_groups if g["module"] == "multi_modal_projector" for p in g["params"]}
    assert id(model.audio_tower["proj"].weight) in projector
    assert [g["module"] for g in plan.param_groups][-1] == "audio_tower"  # group order: the row's
    table = format_table(plan)
    assert "\n  audio_tower                   7     " in table and "1.000e-05" in table
    assert "audio_tower: LR 0 before optimizer step 3 (times the run's schedule)" in table
    assert "audio_tower: layer-wise decay 0.5 over 3 blocks: embeddings 1.250e-06, block0 2.500e-06" in table
    assert plan_to_dict(plan)["modules"]["audio_tower"]["lr"] == 1e-5
    monitor = GradNormMonitor.of_model(model.named_parameters(), mapping)
    assert list(monitor.params) == ["language_model", "vision_tower", "multi_modal_projector", "audio_tower"]


def test_a_rows_stack_takes_the_rows_decay_key_and_leaves_the_others_one_stack_each():
    """With the audio tower its own row, the vision tower's decay counts only the visual stack (N = 2, no stack name in
    its groups) and the audio tower's its own three layers: each row's key decays the stacks whose tensors it owns."""
    model = Omni()
    mapping = ModuleMap.from_registry("toy_omni", OMNI, table=WITH_AUDIO)
    settings = audio_settings(
        vision_tower_lr=1.0, vision_tower_lr_layer_decay=0.5, audio_tower_lr=1.0, audio_tower_lr_layer_decay=0.5
    )
    plan = build_plan(model.named_parameters(), mapping, settings, 1e-4, 0.0, set())
    lrs = {(g["module"], g["name"].rsplit("/", 1)[-1]): g["lr"] for g in plan.param_groups}
    assert {tag: lr for (module, tag), lr in lrs.items() if module == "vision_tower"} == {
        "embeddings": 0.25,
        "block0": 0.5,
        "block1": 1.0,
    }
    assert {tag: lr for (module, tag), lr in lrs.items() if module == "audio_tower"} == {
        "embeddings": 0.125,
        "block0": 0.25,
        "block1": 0.5,
        "block2": 1.0,
    }
    assert [note.split(" over ")[0] for note in plan.notes] == [
        "vision_tower: layer-wise decay 0.5",
        "audio_tower: layer-wise decay 0.5",
    ]


def test_the_rows_freeze_flag_and_frozen_parameters_are_checked():
    args = SimpleNamespace(finetuning_type="full", additional_target=None, freeze_audio_tower=True)
    with pytest.raises(ConfigError) as error:
        refuse_frozen(audio_settings(audio_tower_lr=1e-5), args)
    assert str(error.value) == (
        "lf-multilr: `audio_tower_lr: 1e-05` is refused: `freeze_audio_tower: true` freezes the audio_tower, so its "
        "value would do nothing. Fix: set `freeze_audio_tower: false`, or remove the key"
    )
    model = Omni()
    model.audio_tower.requires_grad_(False)
    model.audio_tower["proj"].requires_grad_(True)
    mapping = ModuleMap.from_registry("toy_omni", OMNI, table=WITH_AUDIO)
    plan = build_plan(model.named_parameters(), mapping, audio_settings(audio_tower_lr=1e-5), 1e-4, 0.0, set())
    with pytest.raises(ConfigError, match="the audio_tower is frozen in this run \\(7 tensors, none trainable\\)"):
        check_plan(plan, "full")


def test_the_web_ui_fields_derive_the_row():
    fields = webui_fields.rows(WITH_AUDIO)
    assert [key.name for key in fields[0]] == [f"{name}_lr" for name in WITH_AUDIO.names]
    assert [key.name for key in fields[2]] == [
        "vision_tower_lr_layer_decay",
        "language_model_lr_layer_decay",
        "audio_tower_lr_layer_decay",
    ]
    entries = webui_fields.locales(WITH_AUDIO)
    assert entries["audio_tower_lr"]["en"] == {
        "label": "Audio tower learning rate",
        "info": "Blank: the learning rate above. Example: 1e-6.",
    }
    assert entries["audio_tower_warmup_steps"]["ru"]["label"] == "Шаги прогрева аудиоэнкодера"
    assert entries["audio_tower_lr_layer_decay"]["ja"]["label"] == "音声タワーの層別学習率減衰"
    assert webui_fields.value(keys_of(WITH_AUDIO)[3], "1,5e-5") == 1.5e-5
    assert webui_fields.locales()["audio_tower_lr"]["en"]["label"] == "Audio tower learning rate"  # shipped
