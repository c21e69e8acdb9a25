import pytest

from lf_multilr.grouping.placement import PRIORITY, ModuleMap, normalize
from lf_multilr.grouping.supplement import SUPPLEMENT, Rule, rules_for
from tools.testing import QWEN2_VL


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("model.visual.blocks.0.attn.qkv.weight", "model.visual.blocks.0.attn.qkv.weight"),
        (
            "base_model.model.model.visual.merger.mlp.0.lora_A.default.weight",
            "model.visual.merger.mlp.0.lora_A.default.weight",
        ),
        ("pretrained_model.base_model.model.lm_head.weight", "lm_head.weight"),
        ("module.model.language_model.layers.0.mlp.up_proj.weight", "model.language_model.layers.0.mlp.up_proj.weight"),
        (
            "_fsdp_wrapped_module.model._fsdp_wrapped_module.visual.blocks.1.norm1.weight",
            "model.visual.blocks.1.norm1.weight",
        ),
        ("model.layers.0._checkpoint_wrapped_module.mlp.weight", "model.layers.0.mlp.weight"),
    ],
)
def test_normalize_removes_wrapper_prefixes(name, expected):
    assert normalize(name) == expected


@pytest.mark.parametrize(
    ("name", "module"),
    [
        ("model.visual.patch_embed.proj.weight", "vision_tower"),
        ("model.visual.blocks.3.mlp.fc1.bias", "vision_tower"),
        ("model.visual.merger.ln_q.weight", "multi_modal_projector"),
        ("base_model.model.model.visual.merger.modules_to_save.default.mlp.0.weight", "multi_modal_projector"),
        ("model.language_model.layers.0.self_attn.q_proj.weight", "language_model"),
        ("lm_head.weight", "language_model"),
        ("v_head.summary.weight", "other"),
    ],
)
def test_owner_follows_the_registry_keys(name, module):
    assert QWEN2_VL.owner(name) == module


def test_projector_beats_vision_where_keys_overlap():
    omni = ModuleMap.of(
        "omni", ["visual.merger", "audio_tower.proj"], ["visual.blocks", "audio_tower"], ["model", "lm_head"]
    )
    assert omni.owner("thinker.audio_tower.proj.weight") == "multi_modal_projector"
    assert omni.owner("thinker.audio_tower.layers.0.fc1.weight") == "vision_tower"


def test_a_catch_all_language_key_cannot_match_through_a_wrapper():
    omni = ModuleMap.of("omni", ["merger"], ["visual"], ["model"])
    assert omni.owner("base_model.model.v_head.weight") == "other"


SUPPLEMENTED = ModuleMap.of(
    "toy_omni",
    ["visual.merger", "audio_tower.proj"],
    ["visual.blocks", "visual.deepstack", "audio_tower"],
    ["language_model", "lm_head"],
    [
        Rule(("toy_omni",), ("image_newline",), "multi_modal_projector", (), "matches no registry key"),
        Rule(("toy_omni",), ("visual.deepstack",), "multi_modal_projector", ("vision_tower",), "registry says vision"),
        Rule(("toy_omni",), ("audio_tower.proj",), "multi_modal_projector", ("multi_modal_projector",), "overlap"),
        Rule(("toy_omni",), ("lm_head",), "language_model", ("language_model",), "the registry agrees"),
    ],
)


@pytest.mark.parametrize(
    ("name", "module", "registry", "rule_key"),
    [
        ("model.image_newline", "multi_modal_projector", (), "image_newline"),
        ("base_model.model.model.image_newline", "multi_modal_projector", (), "image_newline"),
        ("model.visual.deepstack.0.fc.weight", "multi_modal_projector", ("vision_tower",), "visual.deepstack"),
        (
            "audio_tower.proj.weight",
            "multi_modal_projector",
            ("multi_modal_projector", "vision_tower"),
            "audio_tower.proj",
        ),
        ("lm_head.weight", "language_model", ("language_model",), None),  # the rule agrees: the registry decided
        ("model.visual.blocks.0.fc.weight", "vision_tower", ("vision_tower",), None),
        ("v_head.summary.weight", "other", (), None),
    ],
)
def test_a_supplement_rule_decides_only_where_the_registry_answers_otherwise(name, module, registry, rule_key):
    placement = SUPPLEMENTED.placement(name)
    assert (placement.module, placement.registry) == (module, registry)
    assert (placement.rule.keys[0] if placement.rule else None) == rule_key
    assert SUPPLEMENTED.owner(name) == module


def test_the_supplement_table_is_read_per_model_type_and_its_keys_count_as_the_modules_keys():
    assert [rule.keys for rule in rules_for("video_llava")] == [("image_tower", "video_tower")]
    assert rules_for("llava") == ()
    assert all(rule.reason and rule.module in PRIORITY for rule in SUPPLEMENT)
    assert SUPPLEMENTED.keys_of("multi_modal_projector") == (
        "visual.merger",
        "audio_tower.proj",
        "image_newline",
        "visual.deepstack",
        "audio_tower.proj",
    )
