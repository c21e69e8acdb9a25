"""Every model type in LLaMA-Factory's registry that transformers builds offline, grouped right.

Each type's tiny model (``tools/zoo.py``, meta device) is grouped by lf-multilr's module map (registry keys plus
the supplement) and frozen by LLaMA-Factory's own full-tuning code (``_setup_full_tuning``) with each freeze flag:
the tensors a flag freezes are exactly the ones lf-multilr puts in that flag's module, except those a supplement
rule decided, which the flag freezes exactly when the rule's ``registry`` says it does.
"""

from __future__ import annotations

import importlib.util
import json
import re
from collections import Counter
from dataclasses import dataclass
from functools import cache

import plan_snapshot
import pytest
import torch

from lf_multilr.config.keys import FREEZE_FLAG, KEY_NAMES, MODULES, OTHER
from lf_multilr.config.settings import Settings
from lf_multilr.grouping.blocks import block_index
from lf_multilr.grouping.checks import check_plan
from lf_multilr.grouping.placement import ModuleMap, normalize
from lf_multilr.grouping.plan import GroupPlan, build_plan
from lf_multilr.grouping.supplement import POSITIONS, SUPPLEMENT
from lf_multilr.reports.table import format_table, format_tensors
from tools import zoo
from tools.testing import LLAMAFACTORY, full_suite_only

pytestmark = full_suite_only("the registry of 31 types and tools/zoo.py's transformers 5 configs")

TYPES = [
    pytest.param(
        t,
        marks=pytest.mark.skipif(
            t in zoo.NEEDS and importlib.util.find_spec(zoo.NEEDS[t]) is None, reason=f"needs {zoo.NEEDS.get(t)}"
        ),
    )
    for t in sorted(zoo.CONFIGS)
]
#: LLaMA-Factory's flags one at a time, then its defaults (vision tower and projector frozen).
FLAG_SETS = [("freeze_vision_tower",), ("freeze_multi_modal_projector",), ("freeze_language_model",)]
FLAG_SETS.append(("freeze_vision_tower", "freeze_multi_modal_projector"))
WARNING = re.compile(r"^(\d+) (\w+) tensors (still train|train whatever|are frozen)")


@cache
def model(model_type: str) -> torch.nn.Module:
    return zoo.build(model_type)


def module_map(model_type: str) -> ModuleMap:
    from lf_multilr.patches.registry import module_map as read

    mapping = read(model_type)
    assert mapping is not None
    return mapping


def freeze_like_llamafactory(model_type: str, flags: tuple[str, ...]) -> dict[str, bool]:
    """name -> requires_grad after LLaMA-Factory's full-tuning setup with ``flags`` on and the others off."""
    from llamafactory.hparams import FinetuningArguments
    from llamafactory.model.adapter import _setup_full_tuning

    args = FinetuningArguments(finetuning_type="full", **{flag: flag in flags for flag in FREEZE_FLAG.values()})
    net = model(model_type)
    net.requires_grad_(True)
    _setup_full_tuning(net, args, is_trainable=True, cast_trainable_params_to_fp32=False)
    trainable = {name: param.requires_grad for name, param in net.named_parameters()}
    net.requires_grad_(True)
    return trainable


def plan_of(model_type: str, trainable: dict[str, bool] | None = None) -> GroupPlan:
    net = model(model_type)
    for name, param in net.named_parameters():
        param.requires_grad_(True if trainable is None else trainable[name])
    settings = Settings(dict.fromkeys(KEY_NAMES))
    plan = build_plan(net.named_parameters(), module_map(model_type), settings, 1e-3, 0.0, set())
    net.requires_grad_(True)
    return plan


def test_every_registry_type_is_built_here_or_listed_as_remote_code():
    from llamafactory.model.model_utils.visual import COMPOSITE_MODELS

    assert set(zoo.CONFIGS).isdisjoint(zoo.REMOTE)
    assert set(zoo.CONFIGS) <= set(COMPOSITE_MODELS) <= set(zoo.CONFIGS) | set(zoo.REMOTE)


@pytest.mark.parametrize("model_type", TYPES)
def test_every_parameter_lands_in_exactly_one_module(model_type):
    names = [name for name, _ in model(model_type).named_parameters()]
    plan = plan_of(model_type)
    assert plan.rows[OTHER].tensors == 0, plan.other_names
    assert sum(row.tensors for row in plan.rows.values()) == len(names) == len(set(names))
    assert all(plan.rows[module].tensors for module in MODULES)
    grouped = [id(p) for group in plan.param_groups for p in group["params"]]
    assert sorted(grouped) == sorted(id(p) for p in model(model_type).parameters())


@pytest.mark.parametrize("flags", FLAG_SETS, ids="+".join)
@pytest.mark.parametrize("model_type", TYPES)
def test_llamafactorys_freeze_flags_freeze_our_modules_except_where_the_supplement_says(model_type, flags):
    trainable = freeze_like_llamafactory(model_type, flags)
    mapping = module_map(model_type)
    frozen_modules = {module for module, flag in FREEZE_FLAG.items() if flag in flags}
    expected = set()
    for name in trainable:
        placement = mapping.placement(name)
        registry = placement.rule.registry if placement.rule else (placement.module,)
        if frozen_modules & set(registry):
            expected.add(name)
    assert {name for name, grad in trainable.items() if not grad} == expected


@pytest.mark.parametrize("flags", FLAG_SETS, ids="+".join)
@pytest.mark.parametrize("model_type", TYPES)
def test_a_flag_that_misses_part_of_a_module_is_warned_about_with_the_count(model_type, flags):
    trainable = freeze_like_llamafactory(model_type, flags)
    plan = plan_of(model_type, trainable)
    check_plan(plan, "full")
    said: Counter[tuple[str, str]] = Counter()
    for warning in plan.warnings:
        found = WARNING.match(warning)
        if found:
            kind = "frozen" if found[3] == "are frozen" else "train"
            said[(found[2], kind)] += int(found[1])
    mapping = module_map(model_type)
    placements = [mapping.placement(name) for name in trainable]
    measured: Counter[tuple[str, str]] = Counter()
    for module in MODULES:
        row = plan.rows[module]
        # No flag reaches the module at all (e.g. video_llava's towers): said whether the flag is on or not.
        unreachable = all(p.rule and module not in p.rule.registry for p in placements if p.module == module)
        if (FREEZE_FLAG[module] in flags or unreachable) and row.trainable_tensors:
            measured[(module, "train")] = row.trainable_tensors  # the flag left part of its module training
        elif FREEZE_FLAG[module] not in flags and row.trainable_tensors < row.tensors:
            measured[(module, "frozen")] = row.tensors - row.trainable_tensors  # another flag froze part of it
    assert said == measured, plan.warnings


@pytest.mark.parametrize("model_type", TYPES)
def test_the_table_names_every_tensor_the_supplement_placed(model_type):
    plan = plan_of(model_type)
    mapping = module_map(model_type)
    decided = [name for name, _ in model(model_type).named_parameters() if mapping.placement(name).rule]
    assert sum(use.tensors for use in plan.supplement) == len(decided)
    table = format_table(plan)
    lines = [line for line in table.splitlines() if "supplement:" in line]
    assert len(lines) == len(plan.supplement)
    for use, line in zip(plan.supplement, lines, strict=True):
        assert f"supplement: {use.tensors} tensors" in line and f"placed in {use.module}" in line
        assert use.rule.reason in line and f"model type `{model_type}`" in line


@pytest.mark.parametrize("rule", SUPPLEMENT, ids=lambda rule: "+".join(rule.keys))
def test_every_supplement_rule_matches_real_parameters_and_declares_what_the_registry_does(rule):
    from llamafactory.model.model_utils.visual import COMPOSITE_MODELS

    assert set(rule.model_types) <= set(COMPOSITE_MODELS) and rule.reason
    buildable = [
        t
        for t in rule.model_types
        if t not in zoo.REMOTE and (t not in zoo.NEEDS or importlib.util.find_spec(zoo.NEEDS[t]))
    ]
    matched_keys = set()
    for model_type in buildable:
        mapping = module_map(model_type)
        for name, _ in model(model_type).named_parameters():
            normalized_keys = {key for key in rule.keys if key in name}
            if normalized_keys and mapping.placement(name).module == rule.module:
                matched_keys |= normalized_keys
                assert mapping.registry_modules(name) == rule.registry, name
    if buildable:
        assert matched_keys == set(rule.keys)


def test_supplement_facts_on_the_real_structures():
    """The documented registry gaps, named, so that a change in either library shows here first."""
    assert plan_of("video_llava").rows["vision_tower"].tensors == 2 * plan_of("llava").rows["vision_tower"].tensors
    for model_type, name, module in [
        ("glm4v", "model.visual.downsample.weight", "vision_tower"),
        ("glm_ocr", "model.visual.post_layernorm.weight", "vision_tower"),
        ("llava_next", "model.image_newline", "multi_modal_projector"),
        ("llava_next_video", "model.image_newline", "multi_modal_projector"),
        ("video_llava", "model.video_tower.embeddings.class_embedding", "vision_tower"),
        ("qwen3_vl", "model.visual.deepstack_merger_list.0.linear_fc1.weight", "multi_modal_projector"),
        ("qwen3_omni_moe_thinker", "visual.merger_list.0.mlp.0.weight", "multi_modal_projector"),
        ("qwen3_omni_moe_thinker", "audio_tower.proj1.weight", "multi_modal_projector"),
        ("qwen3_omni_moe_thinker", "model.layers.0.self_attn.q_proj.weight", "language_model"),
        ("qwen2_5_omni_thinker", "audio_tower.proj.weight", "multi_modal_projector"),
        ("qwen2_5_omni_thinker", "model.layers.0.self_attn.q_proj.weight", "language_model"),
    ]:
        assert name in dict(model(model_type).named_parameters()), (model_type, name)
        assert module_map(model_type).owner(name) == module, (model_type, name)


def test_docs_models_md_is_the_scripts_output():
    from tools import models_table

    documented = re.search(r"LLaMA-Factory (\S+)\)", models_table.DOC.read_text()).group(1)
    if documented != LLAMAFACTORY:
        pytest.skip(f"docs/models.md describes LLaMA-Factory {documented}'s registry; installed: {LLAMAFACTORY}")

    def rows(text: str) -> list[str]:  # without a type whose extra package is missing here (its row says so)
        missing = [t for t, package in zoo.NEEDS.items() if importlib.util.find_spec(package) is None]
        return [line for line in text.splitlines() if not any(line.startswith(f"| `{t}` |") for t in missing)]

    assert rows(models_table.DOC.read_text()) == rows(models_table.page()), "run `tools/models_table.py --write`"


@dataclass(frozen=True)
class Run:
    """One stack as its forward pass runs it (read in transformers' ``forward``): the tensors under ``embeddings`` run
    before its first block, the blocks of ``blocks`` in that order, the tensors under ``head`` after its last block;
    each ``between`` prefix runs after the last block of its container. Names are prefixes of the tensors' names."""

    name: str
    embeddings: tuple[str, ...]
    blocks: tuple[str, ...]
    head: tuple[str, ...] = ()
    between: tuple[tuple[str, str], ...] = ()
    #: Blocks numbered ``<container>.<stage>.<block>``, each one a block (timm's MobileNetV5).
    stages: bool = False


def _clip(root: str, name: str = "") -> Run:
    return Run(
        name, (f"{root}.embeddings", f"{root}.pre_layrnorm"), (f"{root}.encoder.layers",), (f"{root}.post_layernorm",)
    )


def _siglip(root: str) -> Run:
    return Run("", (f"{root}.embeddings",), (f"{root}.encoder.layers",), (f"{root}.post_layernorm",))


def _qwen(root: str, *embeddings: str, name: str = "") -> Run:
    return Run(name, tuple(f"{root}.{e}" for e in ("patch_embed", *embeddings)), (f"{root}.blocks",))


def _lm(root: str = "model.language_model", lm_head: str = "lm_head", before=(), after=()) -> Run:
    embeddings = tuple(f"{root}.{e}" for e in ("embed_tokens", *before))
    return Run("", embeddings, (f"{root}.layers",), (f"{root}.norm", lm_head, *(f"{root}.{e}" for e in after)))


_MLLAMA = "model.vision_model"
_LLAMA4 = "vision_model"
_GEMMA_PER_LAYER = ("embed_tokens_per_layer", "per_layer_model_projection", "per_layer_projection_norm")
#: Per model type, the vision tower's stacks as their forward passes run them.
VISION_RUNS: dict[str, tuple[Run, ...]] = {
    **{t: (_clip("model.vision_tower"),) for t in ("llava", "llava_next", "llava_next_video")},
    "video_llava": (_clip("model.video_tower", "video_tower"), _clip("model.image_tower", "image_tower")),
    **{t: (_siglip("model.vision_tower"),) for t in ("gemma3", "paligemma")},
    **{t: (_qwen("model.visual"),) for t in ("qwen2_vl", "qwen2_5_vl")},
    **{t: (_qwen("model.visual", "pos_embed"),) for t in ("qwen3_vl", "qwen3_vl_moe", "qwen3_5", "qwen3_5_moe")},
    **{
        t: (
            Run(
                "",
                ("model.visual.patch_embed", "model.visual.post_conv_layernorm", "model.visual.embeddings"),
                ("model.visual.blocks",),
                ("model.visual.post_layernorm", "model.visual.downsample"),
            ),
        )
        for t in ("glm4v", "glm4v_moe")
    },
    "glm_ocr": (
        Run(
            "",
            ("model.visual.patch_embed",),
            ("model.visual.blocks",),
            ("model.visual.post_layernorm", "model.visual.downsample"),
        ),
    ),
    "internvl": (Run("", ("model.vision_tower.embeddings",), ("model.vision_tower.encoder.layer",)),),
    "mistral3": (
        Run(
            "",
            ("model.vision_tower.patch_conv", "model.vision_tower.ln_pre"),
            ("model.vision_tower.transformer.layers",),
        ),
    ),
    "llama4": (
        Run(
            "",
            tuple(
                f"{_LLAMA4}.{e}"
                for e in ("class_embedding", "positional_embedding_vlm", "patch_embedding", "layernorm_pre")
            ),
            (f"{_LLAMA4}.model.layers",),
            (f"{_LLAMA4}.layernorm_post", f"{_LLAMA4}.vision_adapter"),
        ),
    ),
    "mllama": (
        Run(
            "",
            tuple(
                f"{_MLLAMA}.{e}"
                for e in (
                    "patch_embedding",
                    "class_embedding",
                    "pre_tile_positional_embedding",
                    "gated_positional_embedding",
                    "layernorm_pre",
                )
            ),
            (f"{_MLLAMA}.transformer.layers", f"{_MLLAMA}.global_transformer.layers"),
            between=(
                (f"{_MLLAMA}.layernorm_post", f"{_MLLAMA}.transformer.layers"),
                (f"{_MLLAMA}.post_tile_positional_embedding", f"{_MLLAMA}.transformer.layers"),
            ),
        ),
    ),
    "qwen2_audio": (
        Run(
            "",
            ("audio_tower.conv1", "audio_tower.conv2", "audio_tower.embed_positions"),
            ("audio_tower.layers",),
            ("audio_tower.layer_norm",),
        ),
    ),
    "qwen2_5_omni_thinker": (
        # `audio_bos_eos_token` is used by no forward pass; it counts where it is defined, before the layers
        Run(
            "audio_tower",
            ("audio_tower.conv1", "audio_tower.conv2", "audio_tower.audio_bos_eos_token"),
            ("audio_tower.layers",),
            ("audio_tower.ln_post",),
        ),
        _qwen("visual", name="visual"),
    ),
    "qwen3_omni_moe_thinker": (
        Run(
            "audio_tower",
            ("audio_tower.conv2d1", "audio_tower.conv2d2", "audio_tower.conv2d3", "audio_tower.conv_out"),
            ("audio_tower.layers",),
            ("audio_tower.ln_post",),
        ),
        _qwen("visual", "pos_embed", name="visual"),
    ),
    "gemma3n": (
        Run(
            "vision_tower",
            ("model.vision_tower.timm_model.conv_stem",),
            ("model.vision_tower.timm_model.blocks",),
            ("model.vision_tower.timm_model.msfa",),
            stages=True,
        ),
        Run("audio_tower", ("model.audio_tower.subsample_conv_projection",), ("model.audio_tower.conformer",)),
    ),
    "gemma4": (
        Run("vision_tower", ("model.vision_tower.patch_embedder",), ("model.vision_tower.encoder.layers",)),
        Run(
            "audio_tower",
            ("model.audio_tower.subsample_conv_projection",),
            ("model.audio_tower.layers",),
            ("model.audio_tower.output_proj",),
        ),
    ),
}
#: Per model type, the language model as its forward pass runs it.
LANGUAGE_RUNS: dict[str, tuple[Run, ...]] = {
    **{t: (_lm(),) for t in zoo.CONFIGS},
    **{t: (_lm("language_model.model", "language_model.lm_head"),) for t in ("llama4", "qwen2_audio")},
    **{t: (_lm("model"),) for t in ("qwen2_5_omni_thinker", "qwen3_omni_moe_thinker")},
    "gemma3n": (_lm(before=(*_GEMMA_PER_LAYER, "altup_projections"), after=("altup_unembed_projections",)),),
    "gemma4": (_lm(before=_GEMMA_PER_LAYER),),
}


def block_ordinals(names: list[str], run: Run) -> dict[str, int]:
    """Per block prefix (``<container>.<i>.``, or ``<container>.<stage>.<block>.``) its place in the stack."""
    ordinal: dict[str, int] = {}
    for container in run.blocks:
        nested = r"(\d+\.)?" if run.stages else ""
        pattern = re.compile(rf"^{re.escape(container)}\.(\d+)\.{nested}")
        prefixes = {
            match.group(0): tuple(int(g.rstrip(".")) for g in match.groups() if g)
            for match in map(pattern.match, names)
            if match
        }
        for prefix in sorted(prefixes, key=prefixes.__getitem__):
            ordinal[prefix] = len(ordinal)
    return ordinal


def expected_places(names: list[str], runs: tuple[Run, ...], decay: float) -> dict[str, tuple[str, float]]:
    """Per tensor name, its block tag and layer-decay factor as ``runs`` say its forward pass runs it."""
    found: dict[str, tuple[str, float]] = {}
    for run in runs:
        prefix = f"{run.name}/" if len(runs) > 1 else ""
        ordinal = block_ordinals(names, run)
        blocks = len(ordinal)
        assert blocks >= 2, run
        last = {c: max(i for p, i in ordinal.items() if p.startswith(f"{c}.")) for c in run.blocks}
        places = [(p, "block", i) for p, i in ordinal.items()]
        places += [(p, "embeddings", -1) for p in run.embeddings] + [(p, "head", blocks - 1) for p in run.head]
        places += [(before, "block", last[container]) for before, container in run.between]
        for name in names:
            for start, what, i in places:
                if name.startswith(start):
                    found[name] = (f"{prefix}{what}{i if what == 'block' else ''}", decay ** (blocks - 1 - i))
                    break
    return found


@pytest.mark.parametrize("module", ["vision_tower", "language_model"])
@pytest.mark.parametrize("model_type", TYPES)
def test_layer_decay_places_every_tensor_where_its_forward_pass_runs_it(model_type, module):
    """Which tensors are each stack's embeddings, which block, which head, and their factors: per stack of the module,
    as its forward pass runs them (tests/test_models.py's RUNS), for every registry type the zoo builds."""
    net = model(model_type)
    net.requires_grad_(True)
    runs = (VISION_RUNS if module == "vision_tower" else LANGUAGE_RUNS)[model_type]
    settings = Settings({**dict.fromkeys(KEY_NAMES), f"{module}_lr": 1.0, f"{module}_lr_layer_decay": 0.5})
    plan = build_plan(net.named_parameters(), module_map(model_type), settings, 1e-3, 0.0, set())
    got = {
        name: (group["name"].split("/", 2)[2], group["lr_scale"])
        for group in plan.param_groups
        if group["module"] == module
        for name in plan.names_of(group)
    }
    names = [name for name, _ in net.named_parameters() if module_map(model_type).owner(name) == module]
    expected = expected_places(names, runs, 0.5)
    assert sorted(expected) == sorted(names), (
        f"tensors the forward-pass table does not place: {set(names) - set(expected)}"
    )
    wrong = {name: (got[name], expected[name]) for name in names if got[name] != expected[name]}
    assert not wrong, wrong
    (note,) = plan.notes  # the table's line: each stack with its block count
    if len(runs) == 1:
        blocks = len({tag for tag, _ in expected.values() if tag.startswith("block")})
        assert note.startswith(f"{module}: layer-wise decay 0.5 over {blocks} blocks: "), note
    else:
        assert note.startswith(f"{module}: layer-wise decay 0.5 per stack: {runs[0].name} over ")
        for run in runs:
            blocks = len({tag for tag, _ in expected.values() if tag.startswith(f"{run.name}/block")})
            assert f"{run.name} over {blocks} blocks: " in note, note


@pytest.mark.parametrize("rule", POSITIONS, ids=lambda rule: f"{rule.model_types[0]}:{rule.keys[0]}")
def test_every_position_rule_places_tensors_of_its_model_types(rule):
    for model_type in rule.model_types:
        names = [normalize(name) for name, _ in model(model_type).named_parameters()]
        assert any(rule.matches(name) for name in names), (model_type, rule.keys)


def test_tied_embeddings_train_at_the_embeddings_factor():
    """Gemma 3 ties lm_head to the token embeddings: one tensor, named `embed_tokens`, so it trains at d**N."""
    net = model("gemma3")
    assert net.get_output_embeddings().weight is net.get_input_embeddings().weight
    net.requires_grad_(True)
    settings = Settings({**dict.fromkeys(KEY_NAMES), "language_model_lr": 1.0, "language_model_lr_layer_decay": 0.5})
    plan = build_plan(net.named_parameters(), module_map("gemma3"), settings, 1e-3, 0.0, set())
    shared = net.get_input_embeddings().weight
    (group,) = [g for g in plan.param_groups if any(tensor is shared for tensor in g["params"])]
    assert group["name"] == "language_model/no_decay/embeddings" and group["lr"] == 0.25  # N = 2
    assert not any("lm_head" in name for g in plan.param_groups for name in plan.names_of(g))


@pytest.mark.parametrize("config", list(plan_snapshot.CONFIGS))
@pytest.mark.parametrize("model_type", TYPES)
def test_configs_without_the_new_key_plan_the_groups_they_planned_before(model_type, config):
    """The groups as the code before per-stack decay planned them (tests/plan_snapshot.json): the same names, members
    in order, LRs and weight decays, except the vision decay of the types whose stacks it mislabelled."""
    before = json.loads(plan_snapshot.FILE.read_text())[config][model_type]
    now = plan_snapshot.snapshot(model_type, plan_snapshot.CONFIGS[config])
    if config == "vision decay" and model_type in RELABELLED:
        assert now != before
    else:
        assert now == before


#: The types whose vision decay per stack differs from the first-index rule's (docs/recipes.md says how).
RELABELLED = {
    "gemma3n",
    "gemma4",
    "glm4v",
    "glm4v_moe",
    "llama4",
    "mllama",
    "qwen2_5_omni_thinker",
    "qwen3_omni_moe_thinker",
    "video_llava",
}


def test_lora_adapters_of_layer_i_take_layer_is_factor():
    from peft import LoraConfig, get_peft_model

    net = get_peft_model(zoo.build("qwen2_vl"), LoraConfig(target_modules=r".*language_model.*\.(q_proj|v_proj)", r=2))
    settings = Settings({**dict.fromkeys(KEY_NAMES), "language_model_lr": 1.0, "language_model_lr_layer_decay": 0.5})
    plan = build_plan(net.named_parameters(), module_map("qwen2_vl"), settings, 1e-3, 0.0, set())
    adapters = {name: group["lr"] for group in plan.param_groups for name in plan.names_of(group)}
    assert len(adapters) == 8 and all(".lora_" in name for name in adapters)  # 2 layers x q, v x A, B
    for name, lr in adapters.items():
        assert lr == 0.5 ** (1 - block_index(name)), name  # N = 2: layer 1 at the module's LR, layer 0 at half


def test_plan_tensors_names_each_tensors_stack_and_block():
    """`lf-multilr plan --tensors vision_tower` on Qwen2.5-Omni's thinker: each tensor's group names its stack."""
    net = model("qwen2_5_omni_thinker")
    net.requires_grad_(True)
    settings = Settings({**dict.fromkeys(KEY_NAMES), "vision_tower_lr": 1.0, "vision_tower_lr_layer_decay": 0.5})
    plan = build_plan(net.named_parameters(), module_map("qwen2_5_omni_thinker"), settings, 1e-3, 0.0, set())
    rows = {
        row[0]: (row[1], float(row[2]))
        for row in map(str.split, format_tensors(plan, "vision_tower").splitlines()[2:-1])
    }
    assert rows["visual.patch_embed.proj.weight"] == ("vision_tower/no_decay/visual/embeddings", 0.25)
    assert rows["audio_tower.conv1.weight"] == ("vision_tower/no_decay/audio_tower/embeddings", 0.25)
    assert rows["audio_tower.layers.0.fc1.weight"] == ("vision_tower/no_decay/audio_tower/block0", 0.5)
    assert rows["audio_tower.ln_post.weight"] == ("vision_tower/no_decay/audio_tower/head", 1.0)
    assert rows["visual.blocks.1.mlp.down_proj.weight"] == ("vision_tower/no_decay/visual/block1", 1.0)
    assert "audio_tower.proj.weight" not in rows  # the projector's
    assert format_table(plan).count("per stack: audio_tower over 2 blocks: ") == 1
