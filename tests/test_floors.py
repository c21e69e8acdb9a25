"""Floors (`<module>_min_lr`, an `lr_groups` entry's `min_lr`) and the entries' own start step and warm-up: the LR of
every group at every step, through the wrapper a run uses (HF's `Trainer.create_scheduler` as lf-multilr patches it,
HF's scheduler factory, a real AdamW holding the plan's groups), against the formula of docs/recipes.md written out
here on its own; and every refusal, with the key named."""

import inspect
import math
import pickle
from functools import partial

import pytest
import torch
from transformers import SchedulerType, Trainer, TrainingArguments
from transformers.optimization import get_polynomial_decay_schedule_with_warmup, get_scheduler, get_wsd_schedule

from lf_multilr.config.checks import refuse_floors, refuse_ppo_schedule
from lf_multilr.config.custom_groups import parse_lr_groups
from lf_multilr.config.keys import KEY_NAMES, KEYS, check_value
from lf_multilr.config.settings import Settings
from lf_multilr.errors import ConfigError
from lf_multilr.grouping.plan import build_plan
from lf_multilr.patches.schedule import wrap_create_scheduler
from lf_multilr.reports.as_json import plan_to_dict
from lf_multilr.reports.table import format_table
from lf_multilr.training import floors
from lf_multilr.training.schedule import module_multiplier
from tools.testing import QWEN2_VL, Toy, decay_names

BASE = 1e-2  # learning_rate
T, W = 12, 3  # training steps, the run's warm-up steps
LRS = {"vision_tower_lr": 1e-3, "multi_modal_projector_lr": 5e-3, "language_model_lr": 2e-2}
FLOORS = {"vision_tower_min_lr": 4e-4, "language_model_min_lr": 1e-5}  # the projector keeps the run's end of decay


def cosine(p):
    return 0.5 * (1.0 + math.cos(math.pi * p))


#: Per scheduler type: its kwargs, the multiplier its decay ends at, its warm-up and its decay's shape (1 at the top
#: of the decay, 0 at its end), written out from HF's documented schedules.
SCHEDULES = {
    "linear": ({}, 0.0, lambda t: t / W, lambda t: (T - t) / (T - W)),
    "cosine": ({}, 0.0, lambda t: t / W, lambda t: cosine((t - W) / (T - W))),
    "cosine_with_restarts": (
        {"num_cycles": 2},
        0.0,
        lambda t: t / W,
        lambda t: 0.0 if t >= T else cosine((2 * (t - W) / (T - W)) % 1.0),
    ),
    "polynomial": (
        {"lr_end": 1e-4, "power": 2.0},
        1e-4 / BASE,
        lambda t: t / W,
        lambda t: (1 - (t - W) / (T - W)) ** 2,
    ),
    "cosine_with_min_lr": ({"min_lr": 1e-3}, 1e-3 / BASE, lambda t: t / W, lambda t: cosine((t - W) / (T - W))),
    "cosine_warmup_with_min_lr": (
        {"min_lr_rate": 0.2},
        0.2,
        lambda t: (t + 1) / W,
        lambda t: cosine((t - W + 1) / (T - W)),
    ),
    "warmup_stable_decay": (  # 3 warm-up, 4 stable, 4 decay steps, then min_lr_ratio for the last one
        {"num_stable_steps": 4, "num_decay_steps": 4, "min_lr_ratio": 0.05, "decay_type": "linear"},
        0.05,
        lambda t: t / W * (1 - 0.05) + 0.05,
        lambda t: 1.0 if t < W + 4 else max(0.0, 1 - (t - W - 4) / 4),
    ),
}


class Run:
    """What HF's `create_scheduler` reads of a trainer."""

    def __init__(self, args, optimizer):
        self.args, self.optimizer, self.lr_scheduler = args, optimizer, None


def scheduled(scheduler_type, settings, kwargs, tmp_path, steps=T, model=None):
    """The plan's groups in a real AdamW, the scheduler built by the patched `create_scheduler`, stepped `steps` times:
    (plan, optimizer, scheduler, each group's LR at t = 0 .. steps: the LR step t trains at, and the LR left after)."""
    model = model or Toy()
    plan = build_plan(model.named_parameters(), QWEN2_VL, settings, BASE, 0.0, decay_names(model))
    optimizer = torch.optim.AdamW(plan.param_groups, lr=BASE)
    args = TrainingArguments(
        output_dir=str(tmp_path),
        learning_rate=BASE,
        lr_scheduler_type=scheduler_type,
        lr_scheduler_kwargs=dict(kwargs),
        warmup_steps=W,
        report_to="none",
        use_cpu=True,
    )
    scheduler = wrap_create_scheduler(Trainer.create_scheduler)(Run(args, optimizer), T)
    seen = [[group["lr"] for group in optimizer.param_groups]]
    for _ in range(steps):
        model(torch.randn(3, 4), torch.tensor([1, 2, 3])).backward()
        optimizer.step()
        optimizer.zero_grad()
        scheduler.step()
        seen.append([group["lr"] for group in optimizer.param_groups])
    return plan, optimizer, scheduler, seen


def settings_of(**values):
    return Settings({**dict.fromkeys(KEY_NAMES), **values})


def expected_lr(lr, floor, end, warm, shape, t):
    """docs/recipes.md: L * m(t) in the run's warm-up; then f + (L - f) * shape(t), f being the module's floor, or
    HF's own `end * L` where it sets none."""
    if t < W:
        return lr * warm(t)
    floor = end * lr if floor is None else floor
    return floor + (lr - floor) * shape(t)


@pytest.mark.parametrize("scheduler_type", list(SCHEDULES))
def test_each_module_decays_to_its_floor_with_the_exact_lr_at_every_step(scheduler_type, tmp_path):
    kwargs, end, warm, shape = SCHEDULES[scheduler_type]
    plan, optimizer, _, seen = scheduled(scheduler_type, settings_of(**LRS, **FLOORS), kwargs, tmp_path)
    for index, group in enumerate(optimizer.param_groups):
        module = group["module"]
        floor = FLOORS.get(f"{module}_min_lr")
        lr = group["initial_lr"]
        assert group.get("min_lr") == floor, group["name"]  # every group here is at its module's LR
        want = [expected_lr(lr, floor, end, warm, shape, t) for t in range(T + 1)]
        assert [lrs[index] for lrs in seen] == pytest.approx(want, rel=1e-12, abs=1e-18), (scheduler_type, module)
        if floor is not None:  # where the run's decay ends, the floor (one step earlier for the warm-up-rate cosine)
            assert seen[T - (scheduler_type == "cosine_warmup_with_min_lr")][index] == pytest.approx(floor, rel=1e-12)
    assert len({lrs[0] for lrs in seen}) > 3, "the schedule never moved: the test proves nothing"


def test_without_a_floor_every_schedule_is_hfs_own_bit_for_bit(tmp_path):
    """No floor, start step or warm-up set: the wrapper hands back HF's scheduler as HF built it."""
    for scheduler_type in [s.value for s in SchedulerType if s.value not in ("reduce_lr_on_plateau", "greedy")]:
        kwargs = SCHEDULES.get(scheduler_type, ({},))[0]
        _, optimizer, scheduler, seen = scheduled(scheduler_type, settings_of(**LRS), kwargs, tmp_path / scheduler_type)
        assert not [fn for fn in scheduler.lr_lambdas if isinstance(fn, partial) and fn.func is module_multiplier]
        model = Toy()
        plan = build_plan(model.named_parameters(), QWEN2_VL, settings_of(**LRS), BASE, 0.0, decay_names(model))
        stock = torch.optim.AdamW(plan.param_groups, lr=BASE)
        kwargs = {**kwargs} if scheduler_type != "constant" else None
        hf = get_scheduler(scheduler_type, stock, num_warmup_steps=W, num_training_steps=T,
                           scheduler_specific_kwargs=kwargs)  # fmt: skip
        lrs = [[group["lr"] for group in stock.param_groups]]
        for _ in range(T):
            stock.step()
            hf.step()
            lrs.append([group["lr"] for group in stock.param_groups])
        assert seen == lrs, scheduler_type


#: The toy's vision groups under layer-wise decay: its patch embedding, then each block's weight and its norm and bias.
VISION_GROUPS = [
    ("decay", "embeddings"),
    ("decay", "block0"),
    ("decay", "block1"),
    ("no_decay", "block0"),
    ("no_decay", "block1"),
]


def test_a_floor_under_start_step_warm_up_and_layer_decay(tmp_path):
    """The module's start and warm-up gate the floored curve; its layer-decay blocks keep their ratio to it, each
    decaying to the same fraction of its own LR."""
    kwargs, end, warm, shape = SCHEDULES["cosine"]
    values = {**LRS, **FLOORS, "vision_tower_lr_layer_decay": 0.5, "vision_tower_start_step": 4}
    values["vision_tower_warmup_steps"] = 3
    _, optimizer, _, seen = scheduled("cosine", settings_of(**values), kwargs, tmp_path)
    checked = []
    for index, group in enumerate(optimizer.param_groups):
        if group["module"] != "vision_tower":
            continue
        scale = group["lr_scale"]
        lr, floor = 1e-3 * scale, 4e-4 * scale
        assert group["min_lr"] == pytest.approx(floor, rel=1e-15)
        want = [
            0.0 if t < 4 else expected_lr(lr, floor, end, warm, shape, t) * min(1.0, (t - 4 + 1) / 3)
            for t in range(T + 1)
        ]
        assert [lrs[index] for lrs in seen] == pytest.approx(want, rel=1e-12, abs=1e-18), group["name"]
        checked.append(group["name"])
    assert checked == [f"vision_tower/{role}/{tag}" for role, tag in VISION_GROUPS]


def test_lr_groups_entries_start_warm_up_and_decay_on_their_own(tmp_path):
    kwargs, end, warm, shape = SCHEDULES["linear"]
    groups = [
        {"name": "vit_last", "params": r"visual\.blocks\.1\.", "start_step": 5, "warmup_steps": 2, "min_lr": 1e-4},
        {"name": "emb", "params": r"language_model\.0\.", "lr": 4e-2},  # keeps the LLM's ratio of floor to LR
        {"name": "head", "params": r"lm_head", "min_lr": 0.0},  # inherits the LLM's LR, decays to 0
    ]
    values = {**LRS, **FLOORS, "vision_tower_start_step": 1}
    settings = Settings({**dict.fromkeys(KEY_NAMES), **values}, parse_lr_groups(groups), groups)
    plan, optimizer, _, seen = scheduled("linear", settings, kwargs, tmp_path)
    rows = {name: (row.lr, row.min_lr) for name, row in plan.rows.items() if name in ("vit_last", "emb", "head")}
    assert rows == {"vit_last": (1e-3, 1e-4), "emb": (4e-2, pytest.approx(2e-5, rel=1e-15)), "head": (2e-2, 0.0)}
    starts = {"vit_last": (5, 2), "emb": (0, None), "head": (0, None), "vision_tower": (1, None)}
    for index, group in enumerate(optimizer.param_groups):
        name = group["module"]
        lr, floor = (group["initial_lr"], group.get("min_lr"))
        start, ramp = starts.get(name, (0, None))
        want = [
            0.0 if t < start else expected_lr(lr, floor, end, warm, shape, t) * min(1.0, (t - start + 1) / (ramp or 1))
            for t in range(T + 1)
        ]
        assert [lrs[index] for lrs in seen] == pytest.approx(want, rel=1e-12, abs=1e-18), group["name"]
    table = format_table(plan)
    assert (
        "vit_last: LR 0 before optimizer step 5, then rises linearly over 2 steps (times the run's schedule)" in table
    )
    assert "vit_last: decays from 1.000e-03 to min_lr 1.000e-04 along the run's schedule" in table
    assert "vision_tower: decays from 1.000e-03 to min_lr 4.000e-04 along the run's schedule" in table
    planned = plan_to_dict(plan)
    assert planned["modules"]["vit_last"]["min_lr"] == 1e-4 and "min_lr" not in planned["modules"]["other"]
    assert {g["name"]: g.get("min_lr") for g in planned["param_groups"]}["head/decay"] == 0.0


def test_floors_survive_a_checkpoint_of_the_scheduler(tmp_path):
    """A resumed run builds its scheduler again (the floors come from the config's groups), then loads the saved
    state: it goes on with the uninterrupted run's values."""
    kwargs = SCHEDULES["cosine_with_min_lr"][0]
    values = {**LRS, **FLOORS, "vision_tower_start_step": 2}
    _, _, scheduler, seen = scheduled("cosine_with_min_lr", settings_of(**values), kwargs, tmp_path, steps=5)
    saved = pickle.loads(pickle.dumps(scheduler.state_dict()))
    _, optimizer, resumed, _ = scheduled("cosine_with_min_lr", settings_of(**values), kwargs, tmp_path, steps=0)
    resumed.load_state_dict(saved)
    _, _, _, full = scheduled("cosine_with_min_lr", settings_of(**values), kwargs, tmp_path, steps=T)
    for step in range(6, T + 1):
        optimizer.step()
        resumed.step()
        assert [group["lr"] for group in optimizer.param_groups] == pytest.approx(full[step], rel=1e-15)


def test_hfs_defaults_for_the_end_of_decay_are_the_ones_lf_multilr_reads():
    lr_end = inspect.signature(get_polynomial_decay_schedule_with_warmup).parameters["lr_end"].default
    min_lr_ratio = inspect.signature(get_wsd_schedule).parameters["min_lr_ratio"].default
    assert (floors.POLYNOMIAL_LR_END, floors.WSD_MIN_LR_RATIO) == (lr_end, min_lr_ratio)
    assert set(floors.DECAYING) < {s.value for s in SchedulerType}
    assert floors.decay_end("constant", None, BASE) is None
    assert floors.decay_end("polynomial", None, 1e-3) == pytest.approx(1e-4)


MIN_LR = {key.name: key for key in KEYS}["vision_tower_min_lr"]


@pytest.mark.parametrize(
    ("value", "why"),
    [
        (-1e-6, "a floor (minimum learning rate) cannot be negative"),
        (math.nan, "not a finite"),
        (math.inf, "not a finite"),
        ("low", "not a number"),
        (True, "boolean"),
    ],
)
def test_a_floor_is_checked_like_the_other_keys(value, why):
    with pytest.raises(ConfigError) as error:
        check_value(MIN_LR, value)
    message = str(error.value)
    assert f"`vision_tower_min_lr: {value!r}` is refused" in message and why in message and "Fix:" in message


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"start_step": -1}, r"`lr_groups\[0\].start_step: -1` is refused: a start step cannot be negative"),
        ({"warmup_steps": 1.5}, r"`lr_groups\[0\].warmup_steps: 1.5` is refused: a number of steps must be a whole"),
        ({"min_lr": "nan"}, r"`lr_groups\[0\].min_lr: 'nan'` is refused: it is not a finite number"),
        ({"min_lr": True}, r"`lr_groups\[0\].min_lr: True` is refused: it is a boolean"),
        ({"lr": 1e-5, "min_lr": 1e-4}, r"`lr_groups\[0\].min_lr: 0.0001` is refused: it is above the group's own"),
        ({"floor": 1e-5}, r"`lr_groups\[0\]: .*` is refused: unknown field\(s\) \['floor'\]. Fix: use only \["),
    ],
)
def test_lr_groups_entries_check_their_own_fields(entry, message):
    with pytest.raises(ConfigError, match=message):
        parse_lr_groups([{"name": "g", "params": "x", **entry}])


@pytest.mark.parametrize(
    ("scheduler_type", "why"),
    [
        ("constant", "never decays, so there is no floor to decay to"),
        ("constant_with_warmup", "never decays after its warm-up"),
        ("inverse_sqrt", "decays without an end"),
        (
            "reduce_lr_on_plateau",
            r"cuts the LR .* its floor is `lr_scheduler_kwargs: \{min_lr: ...\}`, which lf-multilr",
        ),
        ("greedy", r"moves the LR on the eval loss"),
    ],
)
def test_a_floor_needs_a_schedule_that_decays_to_an_end(scheduler_type, why):
    with pytest.raises(
        ConfigError,
        match=rf"^lf-multilr: `language_model_min_lr: 1e-05` is refused: `lr_scheduler_type: {scheduler_type}` {why}",
    ):
        refuse_floors(settings_of(language_model_min_lr=1e-5), scheduler_type, BASE)
    refuse_floors(settings_of(language_model_min_lr=1e-5), SchedulerType.COSINE, BASE)  # decays: accepted


def test_a_floor_above_its_modules_lr_is_refused():
    with pytest.raises(ConfigError, match=r"`vision_tower_min_lr: 0.002` is refused: it is above the vision tower's "
                       r"LR 0.001 \(`vision_tower_lr`\).*Fix: give a floor of at most 0.001"):  # fmt: skip
        refuse_floors(settings_of(**LRS, vision_tower_min_lr=2e-3), "cosine", BASE)
    with pytest.raises(ConfigError, match=r"above the language model's LR 0.01 \(`learning_rate`, which it inherits"):
        refuse_floors(settings_of(language_model_min_lr=2e-2), "linear", BASE)
    refuse_floors(settings_of(**LRS, vision_tower_min_lr=1e-3), "cosine", BASE)  # equal: the module never decays


def test_an_entrys_floor_above_the_lr_it_inherits_or_two_floors_to_inherit_are_refused():
    model = Toy()

    def plan(values, groups):
        settings = Settings({**dict.fromkeys(KEY_NAMES), **values}, parse_lr_groups(groups), groups)
        return build_plan(model.named_parameters(), QWEN2_VL, settings, BASE, 0.0, decay_names(model))

    with pytest.raises(ConfigError, match=r"`lr_groups\[0\].min_lr: 0.002` is refused: it is above the LR 0.001 "
                       r"that group `v` inherits from its module"):  # fmt: skip
        plan(LRS, [{"name": "v", "params": r"visual\.blocks", "min_lr": 2e-3}])
    with pytest.raises(ConfigError, match=r"group `both` matches parameters of modules with different floors"):
        plan({**FLOORS, "language_model_lr": 1e-3, "vision_tower_lr": 1e-3},
             [{"name": "both", "params": r"(visual\.blocks|lm_head)"}])  # fmt: skip


def test_ppo_refuses_floors_and_the_entries_own_schedules():
    ppo = type("Args", (), {"stage": "ppo"})()
    with pytest.raises(ConfigError, match=r"`vision_tower_min_lr: 1e-06` is refused: `stage: ppo` builds its LR"):
        refuse_ppo_schedule(settings_of(vision_tower_min_lr=1e-6), ppo)
    groups = [{"name": "g", "params": "x", "start_step": 3}]
    with pytest.raises(ConfigError, match=r"`lr_groups\[0\].start_step: 3` is refused: `stage: ppo`"):
        refuse_ppo_schedule(Settings(dict.fromkeys(KEY_NAMES), parse_lr_groups(groups), groups), ppo)
