"""Every model type in LLaMA-Factory's registry that transformers builds offline, grouped right.

Each type's tiny model (``tools/zoo.py``, meta device) is grouped by lf-multilr's module map (registry keys plus
the supplement) and frozen by LLaMA-Factory's own full-tuning code (``_setup_full_tuning``) with each freeze flag:
the tensors a flag freezes are exactly the ones lf-multilr puts in that flag's module, except those a supplement
rule decided, which the flag freezes exactly when the rule's ``registry`` says it does.
"""

from __future__ import annotations

import importlib.util
import re
from collections import Counter
from functools import cache

import pytest
import torch

from lf_multilr.config.keys import FREEZE_FLAG, KEY_NAMES, MODULES, OTHER
from lf_multilr.config.settings import Settings
from lf_multilr.grouping.checks import check_plan
from lf_multilr.grouping.placement import ModuleMap
from lf_multilr.grouping.plan import GroupPlan, build_plan
from lf_multilr.grouping.supplement import SUPPLEMENT
from lf_multilr.reports.table import format_table
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


@pytest.mark.parametrize("model_type", TYPES)
def test_vit_layer_decay_finds_the_blocks_of_every_vision_tower(model_type):
    from lf_multilr.grouping.blocks import block_index

    net = model(model_type)
    net.requires_grad_(True)
    settings = Settings({**dict.fromkeys(KEY_NAMES), "vision_tower_lr": 1.0, "vision_tower_lr_layer_decay": 0.5})
    plan = build_plan(net.named_parameters(), module_map(model_type), settings, 1e-3, 0.0, set())
    vision = [name for name, _ in net.named_parameters() if module_map(model_type).owner(name) == "vision_tower"]
    blocks = max(i for i in map(block_index, vision) if i is not None) + 1
    assert blocks >= 2
    scales = {g["name"].rsplit("/", 1)[-1]: g["lr_scale"] for g in plan.param_groups if g["module"] == "vision_tower"}
    for i in range(blocks):
        if f"block{i}" in scales:
            assert scales[f"block{i}"] == 0.5 ** (blocks - 1 - i), (model_type, i)
    assert f"block{blocks - 1}" in scales and scales.get("embeddings", 0.5**blocks) == 0.5**blocks
