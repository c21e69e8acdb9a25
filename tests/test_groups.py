import pytest
import torch

from lf_multilr.config.keys import KEY_NAMES, OTHER
from lf_multilr.config.settings import Settings
from lf_multilr.errors import ConfigError
from lf_multilr.grouping.checks import check_plan
from lf_multilr.grouping.placement import ModuleMap
from lf_multilr.grouping.plan import LoraPlus, build_plan
from lf_multilr.grouping.supplement import Rule
from lf_multilr.reports.table import format_table
from lf_multilr.training.metrics import module_lrs
from tools.testing import QWEN2_VL, Toy, decay_names

LRS = {"vision_tower_lr": 1e-3, "multi_modal_projector_lr": 1e-2, "language_model_lr": 1e-1}


def settings(**values):
    return Settings({**dict.fromkeys(KEY_NAMES), **values})


def plan_of(model, loraplus=None, **values):
    return build_plan(model.named_parameters(), QWEN2_VL, settings(**values), 1e-4, 0.05, decay_names(model), loraplus)


def test_every_trainable_parameter_is_in_exactly_one_group_and_frozen_in_none():
    model = Toy()
    model.model.visual.blocks[0].requires_grad_(False)
    plan = plan_of(model, **LRS)
    grouped = [id(p) for g in plan.param_groups for p in g["params"]]
    trainable = [id(p) for p in model.parameters() if p.requires_grad]
    assert sorted(grouped) == sorted(trainable)
    assert all(g["params"] for g in plan.param_groups)
    assert plan.frozen == (4, sum(p.numel() for p in model.model.visual.blocks[0].parameters()))


def test_groups_carry_module_lr_and_decay_split_language_model_first():
    plan = plan_of(Toy(), **LRS, vision_tower_weight_decay=0.3)
    names = [g["name"] for g in plan.param_groups]
    assert names == [
        "language_model/decay",
        "language_model/no_decay",
        "vision_tower/decay",
        "vision_tower/no_decay",
        "multi_modal_projector/decay",
        "multi_modal_projector/no_decay",
        "other/decay",
        "other/no_decay",
    ]
    by_name = {g["name"]: g for g in plan.param_groups}
    assert by_name["vision_tower/decay"]["lr"] == 1e-3 and by_name["vision_tower/decay"]["weight_decay"] == 0.3
    assert by_name["vision_tower/no_decay"]["weight_decay"] == 0.0
    assert by_name["language_model/decay"]["weight_decay"] == 0.05
    assert by_name["other/decay"]["lr"] == 1e-4
    assert module_lrs(plan.param_groups) == {
        "lr/language_model": 1e-1,
        "lr/vision_tower": 1e-3,
        "lr/multi_modal_projector": 1e-2,
        "lr/other": 1e-4,
    }


def test_loraplus_split_inside_each_module():
    class Lora(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lora_A = torch.nn.Linear(4, 2, bias=False)
            self.lora_B = torch.nn.Linear(2, 4, bias=False)
            self.lora_embedding_B = torch.nn.Parameter(torch.zeros(3, 2))

    model = torch.nn.Module()
    model.language_model = Lora()
    model.visual = torch.nn.Module()
    model.visual.blocks = Lora()
    names = {n for n, _ in model.named_parameters()}
    plan = build_plan(
        model.named_parameters(), QWEN2_VL, settings(vision_tower_lr=1e-5), 1e-4, 0.0, names, LoraPlus(16.0, 1e-6)
    )
    lrs = {g["name"]: g["lr"] for g in plan.param_groups}
    assert lrs == pytest.approx(
        {
            "language_model/lora_a": 1e-4,
            "language_model/lora_b": 1.6e-3,
            "language_model/embedding": 1e-6,
            "vision_tower/lora_a": 1e-5,
            "vision_tower/lora_b": 1.6e-4,
            "vision_tower/embedding": 1e-6,
        }
    )
    assert module_lrs(plan.param_groups) == pytest.approx({"lr/language_model": 1e-4, "lr/vision_tower": 1e-5})


def test_one_adamw_step_moves_each_tensor_by_its_module_lr():
    model = Toy()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    plan = plan_of(model, **LRS)
    for group in plan.param_groups:
        group["weight_decay"] = 0.0
    optimizer = torch.optim.AdamW(plan.param_groups, lr=1e-4)
    model(torch.randn(3, 4), torch.tensor([1, 2, 3])).backward()
    optimizer.step()
    expected = {"vision_tower": 1e-3, "multi_modal_projector": 1e-2, "language_model": 1e-1, "other": 1e-4}
    for name, param in model.named_parameters():
        step = (param.detach() - before[name]).abs().max().item()
        if step:  # tensors without gradient (unused embedding rows aside) do not move
            assert step == pytest.approx(expected[QWEN2_VL.owner(name)], rel=1e-3), name


def test_a_module_lr_on_a_frozen_module_is_refused_with_the_flag_to_flip():
    model = Toy()
    model.model.visual.requires_grad_(False)
    plan = plan_of(model, vision_tower_lr=1e-5)
    with pytest.raises(ConfigError, match=r"vision_tower_lr: 1e-05.*frozen.*freeze_vision_tower: false"):
        check_plan(plan, "full")


def test_a_projector_lr_under_lora_without_a_copy_points_at_additional_target():
    model = Toy()
    model.model.visual.merger.requires_grad_(False)
    with pytest.raises(ConfigError, match="additional_target"):
        check_plan(plan_of(model, multi_modal_projector_lr=1e-5), "lora")


def test_a_module_the_model_does_not_have_is_refused():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2))
    plan = build_plan(model.named_parameters(), QWEN2_VL, settings(vision_tower_lr=1e-5), 1e-4, 0.0, set())
    with pytest.raises(ConfigError, match="has no vision_tower.*visual.patch_embed, visual.blocks"):
        check_plan(plan, "full")


def test_zero_is_a_real_value_with_a_warning_and_other_is_reported():
    plan = plan_of(Toy(), vision_tower_lr=0.0)
    check_plan(plan, "full")
    assert any("vision_tower_lr is 0" in w and "freeze_vision_tower: true" in w for w in plan.warnings)
    assert any("group `other`" in w and "v_head.weight" in w for w in plan.warnings)
    table = format_table(plan)
    assert "vision_tower" in table and "0.000e+00" in table and "other" in table


#: The toy's names with two supplement rules: the value head counted as language model (no registry key matches
#: it), and the second vision block given to the projector (the registry says vision tower).
SUPPLEMENTED = ModuleMap.of(
    "toy",
    QWEN2_VL.keys["multi_modal_projector"],
    QWEN2_VL.keys["vision_tower"],
    QWEN2_VL.keys["language_model"],
    [
        Rule(("toy",), ("v_head",), "language_model", (), "the value head reads the LLM's hidden states"),
        Rule(("toy",), ("visual.blocks.1",), "multi_modal_projector", ("vision_tower",), "a second merger"),
    ],
)


def supplemented_plan(model, finetuning_type="full", **values):
    plan = build_plan(model.named_parameters(), SUPPLEMENTED, settings(**values), 1e-4, 0.0, decay_names(model), None)
    check_plan(plan, finetuning_type)
    return plan


def test_the_plan_and_the_table_say_what_the_supplement_placed():
    plan = supplemented_plan(Toy(), **LRS)
    assert plan.rows[OTHER].tensors == 0
    uses = {
        use.keys: (use.module, use.registry, use.tensors, use.params, use.trainable_tensors) for use in plan.supplement
    }
    assert uses == {
        ("v_head",): ("language_model", (), 2, 7, 2),
        ("visual.blocks.1",): ("multi_modal_projector", ("vision_tower",), 4, 8 + 8 + 64 + 8, 4),
    }
    table = format_table(plan)
    assert "supplement: 2 tensors (7 params; v_head) placed in language_model by lf-multilr's supplement" in table
    assert "(model type `toy`; registry: no module): the value head reads the LLM's hidden states" in table
    assert "registry: vision_tower): a second merger" in table
    assert "supplement:" not in format_table(plan_of(Toy(), **LRS))
    assert plan.warnings == []  # everything trains: no flag was on


def test_a_flag_that_cannot_reach_part_of_its_module_is_warned_about_with_the_count():
    model = Toy()
    model.model.language_model.requires_grad_(False)  # what `freeze_language_model: true` freezes
    model.lm_head.requires_grad_(False)
    plan = supplemented_plan(model)
    (warning,) = plan.warnings
    assert warning.startswith("2 language_model tensors still train although the rest of the language_model is frozen")
    assert "`freeze_language_model: true`" in warning and "(v_head)" in warning
    assert supplemented_plan(model, "lora").warnings == []  # LoRA freezes base weights for reasons of its own


def test_a_flag_that_freezes_part_of_another_module_is_warned_about_with_the_count():
    model = Toy()
    model.model.visual.blocks.requires_grad_(False)  # what `freeze_vision_tower: true` freezes
    model.model.visual.patch_embed.requires_grad_(False)
    plan = supplemented_plan(model)
    (warning,) = plan.warnings
    assert warning.startswith("4 multi_modal_projector tensors are frozen although the rest of the")
    assert "`freeze_vision_tower: true` froze them" in warning
    model.model.visual.merger.requires_grad_(False)  # the projector's flag on too: nothing to say
    assert supplemented_plan(model).warnings == []


def test_a_module_no_flag_reaches_is_said_to_train_whatever_the_flag_says():
    mapping = ModuleMap.of(
        "toy",
        ["merger"],
        ["vision_tower"],
        ["language_model", "lm_head"],
        [
            Rule(("toy",), ("visual.patch_embed", "visual.blocks"), "vision_tower", (), "towers under other names"),
        ],
    )
    plan = build_plan(Toy().named_parameters(), mapping, settings(), 1e-4, 0.0, set())
    check_plan(plan, "full")
    assert any(
        w.startswith("9 vision_tower tensors train whatever `freeze_vision_tower` says") and "(vision_tower)" in w
        for w in plan.warnings
    )
