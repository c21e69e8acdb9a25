"""Pure pieces of the training recipes: block depths, custom groups, per-module start and warm-up."""

import pickle

import pytest
import torch
from transformers.optimization import get_cosine_schedule_with_warmup, get_reduce_on_plateau_schedule

from lf_multilr.config.custom_groups import parse_lr_groups
from lf_multilr.errors import ConfigError
from lf_multilr.grouping.blocks import EMBEDDINGS, HEAD, Stack, Where, block_index, decay_scale, locate
from lf_multilr.grouping.supplement import AFTER, EMBEDDINGS_AT, STAGES, Position
from lf_multilr.training.schedule import gate_scheduler, module_multiplier


@pytest.mark.parametrize(
    ("name", "index"),
    [
        ("model.visual.blocks.12.attn.qkv.weight", 12),
        ("model.vision_tower.vision_model.encoder.layers.3.mlp.fc1.weight", 3),
        ("model.vision_tower.encoder.layer.7.attention.q_proj.weight", 7),
        ("visual.transformer.resblocks.0.ln_1.weight", 0),
        ("model.audio_tower.conformer.1.lconv1d.linear_start.weight", 1),
        ("model.visual.patch_embed.proj.weight", None),
        ("model.visual.deepstack_merger_list.1.norm.weight", None),
    ],
)
def test_block_index(name, index):
    assert block_index(name) == index


def test_one_stack_places_unnumbered_tensors_by_position():
    names = ["v.patch_embed.w", "v.pos_embed", "v.blocks.0.a", "v.blocks.1.a", "v.blocks.2.a", "v.post_norm.w"]
    where, stacks = locate(names)
    assert stacks == [Stack("v", 3)]
    assert [w.depth for w in where] == [EMBEDDINGS, EMBEDDINGS, 0, 1, 2, HEAD]
    assert [decay_scale(w.depth, 3, 0.5) for w in where] == [0.125, 0.125, 0.25, 0.5, 1.0, 1.0]
    assert [w.tag(stacks) for w in where] == ["embeddings", "embeddings", "block0", "block1", "block2", "head"]
    assert locate(["v.proj.w"]) == ([Where(-1, HEAD)], [])


def test_towers_are_stacks_apart_and_each_counts_its_own_blocks():
    names = [
        "audio.conv.w", "audio.layers.0.a", "audio.layers.1.a", "audio.layers.2.a", "audio.ln_post.w",
        "visual.patch_embed.w", "visual.blocks.0.a", "visual.blocks.1.a",
    ]  # fmt: skip
    where, stacks = locate(names)
    assert stacks == [Stack("audio", 3), Stack("visual", 2)]
    assert [w.tag(stacks) for w in where] == [
        "audio/embeddings", "audio/block0", "audio/block1", "audio/block2", "audio/head",
        "visual/embeddings", "visual/block0", "visual/block1",
    ]  # fmt: skip
    assert [decay_scale(w.depth, stacks[w.stack].blocks, 0.5) for w in where][5:] == [0.25, 0.5, 1.0]


def test_two_containers_of_one_tower_are_one_stack_on_top_of_each_other():
    names = [
        "model.v.embed.w", "model.v.norm_post.w", "model.v.local.layers.0.a", "model.v.local.layers.1.a",
        "model.v.global.layers.0.a",
    ]  # fmt: skip
    where, stacks = locate(names)
    assert stacks == [Stack("v", 3)]
    assert [w.depth for w in where] == [EMBEDDINGS, EMBEDDINGS, 0, 1, 2]
    rule = Position(("toy",), ("v.norm_post",), f"{AFTER}local.layers", "runs between the two")
    where, _ = locate(names, [rule])
    assert [w.depth for w in where] == [EMBEDDINGS, 1, 0, 1, 2] and where[1].rule is rule


def test_rules_place_tensors_their_definition_order_misplaces_and_stages_count_each_block():
    names = ["a.layers.0.x", "a.layers.1.x", "a.ln_post.w", "a.conv_in.w"]
    assert [w.depth for w in locate(names)[0]] == [0, 1, HEAD, HEAD]
    conv = Position(("toy",), ("a.conv_in",), EMBEDDINGS_AT, "runs first")
    assert [w.depth for w in locate(names, [conv])[0]] == [0, 1, HEAD, EMBEDDINGS]
    staged = ["m.stem.w", "m.blocks.0.0.c", "m.blocks.0.1.c", "m.blocks.1.0.c", "m.blocks.1.0.d", "m.head.w"]
    assert [w.depth for w in locate(staged)[0]] == [EMBEDDINGS, 0, 0, 1, 1, HEAD]
    where, stacks = locate(staged, [Position(("toy",), ("m.blocks",), STAGES, "timm")])
    assert stacks == [Stack("m", 3)] and [w.depth for w in where] == [EMBEDDINGS, 0, 1, 2, 2, HEAD]


def test_lr_groups_parse_from_yaml_lists_and_json_strings():
    (group,) = parse_lr_groups('[{"name": "emb", "params": "embed_tokens", "lr": 1e-4}]')
    assert (group.name, group.lr, group.weight_decay) == ("emb", 1e-4, None)
    assert group.matches("model.language_model.embed_tokens.weight")
    assert parse_lr_groups(None) == ()


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("[{", r"`lr_groups: '\[\{'` is refused: it is not valid JSON"),
        ([], "non-empty list"),
        (
            [{"name": "a", "params": "x"}, {"name": "a", "params": "y"}],
            r"`lr_groups\[1\].name: 'a'`.*two groups have this name",
        ),
        ([{"name": "vision_tower", "params": "x"}], "built-in group"),
        ([{"name": "a", "params": "("}], r"`lr_groups\[0\].params: '\('`.*not a valid regular expression"),
        ([{"name": "a", "params": "x", "lr": -1}], r"`lr_groups\[0\].lr: -1`.*cannot be negative"),
        ([{"name": "a", "params": "x", "rate": 1}], r"unknown field\(s\) \['rate'\]"),
        ([{"params": "x"}], r"`lr_groups\[0\].name: None`"),
    ],
)
def test_lr_groups_refusals_name_the_entry(value, message):
    with pytest.raises(ConfigError, match=message):
        parse_lr_groups(value)


@pytest.mark.parametrize(
    ("start", "warmup", "expected"),
    [
        (0, None, [1, 1, 1, 1, 1]),
        (2, None, [0, 0, 1, 1, 1]),
        (0, 4, [0.25, 0.5, 0.75, 1, 1]),
        (1, 2, [0, 0.5, 1, 1, 1]),
    ],
)
def test_module_multiplier_exact_values(start, warmup, expected):
    assert [module_multiplier(lambda _: 1.0, start, warmup, t) for t in range(5)] == expected


def test_gated_scheduler_values_survive_a_checkpoint():
    def build():
        params = [torch.nn.Parameter(torch.zeros(1)) for _ in range(2)]
        optimizer = torch.optim.AdamW(
            [
                {"params": [params[0]], "lr": 1.0, "module": "language_model"},
                {"params": [params[1]], "lr": 0.1, "module": "vision_tower", "start_step": 2, "warmup_steps": 3},
            ],
            lr=1.0,
        )
        scheduler = get_cosine_schedule_with_warmup(optimizer, 1, 10)
        assert gate_scheduler(scheduler, optimizer.param_groups) == 1
        return optimizer, scheduler

    optimizer, scheduler = build()
    seen = []
    for step in range(8):
        seen.append([g["lr"] for g in optimizer.param_groups])
        if step == 4:
            saved = pickle.loads(pickle.dumps(scheduler.state_dict()))
        optimizer.step()
        scheduler.step()
    base = [0.0, 1.0, 0.96985, 0.88302, 0.75, 0.58682, 0.41318, 0.25]
    assert [lrs[0] for lrs in seen] == pytest.approx(base, abs=1e-5)
    assert [lrs[1] for lrs in seen] == pytest.approx(
        [0, 0, 0.1 * base[2] / 3, 0.1 * base[3] * 2 / 3] + [0.1 * b for b in base[4:]], abs=1e-6
    )

    resumed_optimizer, resumed = build()  # a resumed run re-creates the scheduler, then loads its state
    resumed.load_state_dict(saved)
    for step in range(5, 8):
        resumed_optimizer.step()
        resumed.step()
        assert [g["lr"] for g in resumed_optimizer.param_groups] == pytest.approx(seen[step], abs=1e-9)


def test_gating_needs_per_group_multipliers():
    optimizer = torch.optim.AdamW([{"params": [torch.nn.Parameter(torch.zeros(1))], "start_step": 3}], lr=1.0)
    with pytest.raises(ConfigError, match="ReduceLROnPlateau has no per-group multiplier"):
        gate_scheduler(get_reduce_on_plateau_schedule(optimizer), optimizer.param_groups)


def test_the_first_step_check_stops_a_start_step_the_scheduler_never_applied():
    """PPO (or any loop) building its scheduler without HF's `create_scheduler` leaves a module that starts late at
    its full LR: the first-step check sees it in the optimizer's groups. With the gate, the same groups pass."""
    from transformers import get_scheduler

    from lf_multilr.training.guard import ungated

    def groups():
        params = [torch.nn.Parameter(torch.zeros(1)) for _ in range(2)]
        return torch.optim.AdamW(
            [
                {"params": [params[0]], "lr": 1e-3, "name": "language_model/decay", "module": "language_model"},
                {"params": [params[1]], "lr": 1e-4, "name": "vision_tower/decay", "module": "vision_tower",
                 "start_step": 2},
            ],
            lr=1e-3,
        )  # fmt: skip

    bypassed = groups()
    get_scheduler("cosine", bypassed, num_warmup_steps=0, num_training_steps=10)  # as PPO builds it: ungated
    assert ungated(bypassed.param_groups, 0) == (
        "its group `vision_tower/decay` is at LR 1.000e-04 at step 0, where `vision_tower_start_step: 2` holds it at 0 "
        "until step 2: the LR scheduler that runs never applied lf-multilr's per-module start and warm-up"
    )
    assert ungated(bypassed.param_groups, 2) is None  # from its start step on, a module trains

    gated = groups()
    assert gate_scheduler(get_scheduler("cosine", gated, num_warmup_steps=0, num_training_steps=10), gated.param_groups)
    assert [group["lr"] for group in gated.param_groups] == [1e-3, 0.0] and ungated(gated.param_groups, 0) is None
