"""Bad input is refused with key, value, why and fix; before any weight loads where possible; nothing written."""

import json
from types import SimpleNamespace

import pytest

from lf_multilr.config.checks import refuse_deepspeed_blocks, refuse_layerwise
from lf_multilr.config.settings import Settings
from lf_multilr.patches.hparams import own_hyper_parallel_trainer
from tools.testing import PROJECTOR_COPY, WEIGHTS_LOADING, base_config, train, write_config


@pytest.fixture(scope="module")
def get_train_args():
    from llamafactory.hparams import get_train_args

    return get_train_args


def args_for(model, data, tmp_path, **overrides):
    return {**base_config(model, data, "qwen2_vl", tmp_path / "out"), **overrides}


def config_only_model(tmp_path, model_type):
    """A model directory with a config.json and no weights: enough for a check that must not load any."""
    folder = tmp_path / model_type
    folder.mkdir()
    folder.joinpath("config.json").write_text(json.dumps({"model_type": model_type}))
    return folder


#: What LLaMA-Factory's own parser asks of a PPO run before lf-multilr's checks (the reward model is never loaded).
PPO = {"stage": "ppo", "reward_model": "rm", "reward_model_type": "full"}
CASES = {
    "negative": (
        {"vision_tower_lr": -1e-5},
        r"`vision_tower_lr: -1e-05` is refused: a learning rate cannot be negative\. Fix: give a number >= 0",
    ),
    "nan": ({"language_model_lr": "nan"}, r"`language_model_lr: 'nan'` is refused: it is not a finite number"),
    "infinite": (
        {"multi_modal_projector_weight_decay": float("inf")},
        r"`multi_modal_projector_weight_decay: inf` is refused: it is not a finite number",
    ),
    "not a number": ({"vision_tower_lr": "fast"}, r"`vision_tower_lr: 'fast'` is refused: it is not a number"),
    "llm layer decay above 1": (
        {"language_model_lr_layer_decay": 1.5},
        r"`language_model_lr_layer_decay: 1.5` is refused: a layer-wise decay must be greater than 0 and at most 1\. "
        r"Fix: give a number with 0 < d <= 1 such as 0.9, or remove the key \(unset: no decay\)",
    ),
    "llm layer decay boolean": (
        {"language_model_lr_layer_decay": True},
        r"`language_model_lr_layer_decay: True` is refused: it is a boolean, not a number",
    ),
    "llm layer decay nan": (
        {"language_model_lr_layer_decay": "nan"},
        r"`language_model_lr_layer_decay: 'nan'` is refused: it is not a finite number",
    ),
    "frozen vision": (
        {"vision_tower_lr": 1e-5, "freeze_vision_tower": True},
        r"`freeze_vision_tower: true` freezes the vision_tower.*Fix: set `freeze_vision_tower: false`",
    ),
    "frozen projector": (
        {"multi_modal_projector_lr": 1e-5, "freeze_multi_modal_projector": True},
        r"Fix: set `freeze_multi_modal_projector: false`",
    ),
    "frozen llm": (
        {"language_model_lr": 1e-5, "freeze_language_model": True},
        r"Fix: set `freeze_language_model: false`",
    ),
    # LLaMA-Factory's `lora_target: all` puts no adapter on Qwen2-VL's merger (its own rule, on the meta device)
    "lora projector": (
        {"multi_modal_projector_lr": 1e-5, "finetuning_type": "lora"},
        r"`multi_modal_projector_lr: 1e-05` is refused: the multi_modal_projector has nothing trainable in this run: "
        r"LoRA put no adapter on it.*Fix: under LoRA "
        r"the projector trains through adapters where `lora_target` reaches its linear layers.*additional_target",
    ),
    "oft projector": (
        {"multi_modal_projector_lr": 1e-5, "finetuning_type": "oft"},
        r"`multi_modal_projector_lr: 1e-05` is refused: the multi_modal_projector has nothing trainable in this run: "
        r"OFT put no adapter on it",
    ),
    # LLaMA-Factory's own optimizers whose structure cannot hold the module groups (the others take them)
    "badam": (
        {"vision_tower_lr": 1e-5, "use_badam": True},
        r"`badam_mode: layer` is set, and BAdam's BlockOptimizer gives every group the first group's LR.*"
        r"Fix: set `badam_mode: ratio`",
    ),
    "adam-mini": (
        {"vision_tower_lr": 1e-5, "use_adam_mini": True},
        r"`use_adam_mini: true` is set, and Adam-mini is handed the model's named parameters and builds its param "
        r"groups itself",
    ),
    # HF optimizers that build their own parameter structure: refused before the model loads, not at optimizer time
    "optim lomo": ({"vision_tower_lr": 1e-5, "optim": "lomo"}, r"`optim: lomo` builds its own parameter structure"),
    "optim adalomo": ({"language_model_lr": 1e-5, "optim": "adalomo"}, r"`optim: adalomo` builds its own"),
    # the layer-wise GaLore / APOLLO forms take the module groups (one optimizer per tensor), but cannot accumulate
    # gradients or resume (LLaMA-Factory's `galore_layerwise` / `apollo_layerwise`: tests/test_optimizers.py, where
    # their packages are installed)
    "optim galore layerwise accumulation": (
        {"vision_tower_lr": 1e-5, "optim": "galore_adamw_layerwise", "gradient_accumulation_steps": 2},
        r"`gradient_accumulation_steps: 2` is refused: `optim: galore_adamw_layerwise` steps each tensor's optimizer "
        r"inside its gradient hook.*Fix: set `gradient_accumulation_steps: 1`.*or use `optim: galore_adamw`",
    ),
    "optim galore layerwise ppo": (
        {"vision_tower_lr": 1e-5, "optim": "galore_adamw_layerwise", **PPO},
        r"`stage: 'ppo'` is refused: `stage: ppo` builds its LR scheduler itself.*under `optim: "
        r"galore_adamw_layerwise` no tensor's own optimizer would follow the run's schedule.*Fix: use `optim: "
        r"galore_adamw` under PPO",
    ),
    "optim galore layerwise plateau": (
        {
            "vision_tower_lr": 1e-5,
            "optim": "galore_adamw_layerwise",
            "lr_scheduler_type": "reduce_lr_on_plateau",
            "eval_strategy": "steps",
            "eval_steps": 1,
            "val_size": 0.5,
        },
        r"`lr_scheduler_type: 'reduce_lr_on_plateau'` is refused: `optim: galore_adamw_layerwise` gives each "
        r"tensor a scheduler of its own, stepped without an eval loss",
    ),
    "optim apollo layerwise greedy": (
        {
            "vision_tower_lr": 1e-5,
            "optim": "apollo_adamw_layerwise",
            "lr_scheduler_type": "greedy",
            **{"eval_strategy": "steps", "eval_steps": 1, "val_size": 0.5},
        },
        r"`lr_scheduler_type: 'greedy'` is refused: `optim: apollo_adamw_layerwise` gives each tensor a scheduler of "
        r"its own, stepped without an eval loss",
    ),
    "optim apollo layerwise resume": (
        {"vision_tower_lr": 1e-5, "optim": "apollo_adamw_layerwise", "resume_from_checkpoint": "ckpt"},
        r"`resume_from_checkpoint: 'ckpt'` is refused: `optim: apollo_adamw_layerwise` keeps each tensor's optimizer "
        r"state outside the checkpoint.*Adam moments.*Fix: train afresh.*`optim: apollo_adamw` from the start",
    ),
    # the audio tower's keys, checked like the others; on a model without an audio tower, refused by name
    "audio negative": ({"audio_tower_lr": -1e-5}, r"`audio_tower_lr: -1e-05` is refused: a learning rate cannot be"),
    "audio nan": (
        {"audio_tower_weight_decay": "nan"},
        r"`audio_tower_weight_decay: 'nan'` is refused: it is not a fin",
    ),
    "audio infinite": (
        {"audio_tower_lr": float("inf")},
        r"`audio_tower_lr: inf` is refused: it is not a finite number",
    ),
    "audio boolean": ({"audio_tower_start_step": True}, r"`audio_tower_start_step: True` is refused: it is a boolean"),
    "audio string": ({"audio_tower_warmup_steps": "soon"}, r"`audio_tower_warmup_steps: 'soon'` is refused: it is not"),
    "audio on a vision model": (
        {"audio_tower_lr": 1e-5},
        r"`audio_tower_lr: 1e-05` is refused: model type `qwen2_vl` has no audio tower",
    ),
    "freeze audio on a vision model": (
        {"freeze_audio_tower": False, "vision_tower_lr": 1e-5},
        r"`freeze_audio_tower: False` is refused: model type `qwen2_vl` has no audio tower",
    ),
    "freeze audio not a boolean": (
        {"freeze_audio_tower": "yes"},
        r"`freeze_audio_tower: 'yes'` is refused: it is a str",
    ),
    # PPO builds its scheduler itself: a module's start step or warm-up would never apply
    "ppo start step": (
        {"vision_tower_lr": 1e-5, "vision_tower_start_step": 2, **PPO},
        r"`vision_tower_start_step: 2` is refused: `stage: ppo` builds its LR scheduler itself",
    ),
    "ppo warm-up": (
        {"language_model_warmup_steps": 5, **PPO},
        r"`language_model_warmup_steps: 5` is refused: `stage: ppo` builds its LR scheduler itself",
    ),
    "ppo floor": ({"vision_tower_min_lr": 1e-6, **PPO}, r"`vision_tower_min_lr: 1e-06` is refused: `stage: ppo`"),
    # floors: checked like every key, and against the module's LR and the run's schedule
    "floor not a number": ({"vision_tower_min_lr": "low"}, r"`vision_tower_min_lr: 'low'` is refused: it is not a"),
    "floor above the lr": (
        {"vision_tower_lr": 1e-5, "vision_tower_min_lr": 1e-4, "lr_scheduler_type": "cosine"},
        r"`vision_tower_min_lr: 0.0001` is refused: it is above the vision tower's LR 1e-05 \(`vision_tower_lr`\)",
    ),
    "floor without decay": (
        {"language_model_min_lr": 1e-6, "lr_scheduler_type": "constant_with_warmup"},
        r"`language_model_min_lr: 1e-06` is refused: `lr_scheduler_type: constant_with_warmup` never decays",
    ),
    "lr_groups floor": (
        {"lr_groups": '[{"name": "g", "params": "visual", "min_lr": -1}]', "lr_scheduler_type": "cosine"},
        r"`lr_groups\[0\].min_lr: -1` is refused: a floor \(minimum learning rate\) cannot be negative",
    ),
}


def skip_where_unknown(overrides):
    """Skip a case whose scheduler the installed transformers does not have (`greedy` came in 5.x)."""
    from transformers.trainer_utils import SchedulerType

    scheduler = overrides.get("lr_scheduler_type")
    if scheduler is not None and scheduler not in {kind.value for kind in SchedulerType}:
        pytest.skip(f"this transformers has no `{scheduler}` scheduler")


@pytest.mark.core
@pytest.mark.parametrize("case", list(CASES))
def test_refused_before_the_model_loads(case, get_train_args, tiny, data, tmp_path):
    overrides, message = CASES[case]
    skip_where_unknown(overrides)
    with pytest.raises(ValueError, match=message):
        get_train_args(args_for(tiny("qwen2_vl"), data, tmp_path, **overrides))


@pytest.mark.core
@pytest.mark.parametrize("model_type", ["llama", "idefics3"])
def test_a_model_type_the_registry_does_not_know_is_refused_with_the_way_forward(
    model_type, get_train_args, data, tmp_path
):
    model = config_only_model(tmp_path, model_type)
    with pytest.raises(
        ValueError,
        match=rf"model type `{model_type}` is not in LLaMA-Factory's composite-model registry"
        r".*set `learning_rate` instead.*qwen2_vl",
    ):
        get_train_args(args_for(model, data, tmp_path, vision_tower_lr=1e-5))


PLAN_ONLY = {  # refused by the run after LLaMA-Factory's own launcher checks (tests/test_distributed.py), which a plan
    # does not make
    "deepspeed optimizer block": ({"vision_tower_lr": 1e-5}, r"has a `optimizer` block, and DeepSpeed then builds"),
    "fsdp1 without use_orig_params": (
        {"vision_tower_lr": 1e-5, "fsdp": "full_shard auto_wrap", "fsdp_config": {"use_orig_params": False}},
        r"FSDP1 without `use_orig_params` hands the optimizer one flattened tensor",
    ),
}


def deepspeed_with(tmp_path, block):
    path = tmp_path / "ds.json"
    path.write_text(json.dumps({block: {"type": "AdamW", "params": {}}, "zero_optimization": {"stage": 2}}))
    return str(path)


@pytest.mark.core
@pytest.mark.parametrize("case", [*CASES, "unregistered llama", "use_kt", "use_hyper_parallel"])
def test_lf_multilr_plan_refuses_what_the_run_refuses_with_the_same_message(case, get_train_args, tiny, data, tmp_path):
    """The run's checks on the run's own parsed arguments: `lf-multilr plan` fails with the run's very message."""
    from lf_multilr.patches.dry_run import make_plan

    model = config_only_model(tmp_path, "llama") if case == "unregistered llama" else tiny("qwen2_vl")
    overrides = {
        "unregistered llama": {"vision_tower_lr": 1e-5},
        "use_kt": {"vision_tower_lr": 1e-5, "use_kt": True, "finetuning_type": "lora"},
    }.get(case) or CASES.get(case, ({},))[0]
    skip_where_unknown(overrides)
    config = args_for(model, data, tmp_path, **overrides)
    if case == "use_hyper_parallel":  # refused where the trainer is the hyper_parallel package's (0.9.5)
        config = {**config, "vision_tower_lr": 1e-5, "use_hyper_parallel": True}
        if own_hyper_parallel_trainer():
            pytest.skip("main's own HyperParallelTrainer builds the module groups: nothing to refuse")
        from llamafactory.hparams import FinetuningArguments

        if "use_hyper_parallel" not in FinetuningArguments.__dataclass_fields__:
            pytest.skip("this LLaMA-Factory (0.9.4) has no use_hyper_parallel: its parser refuses the key itself")
    with pytest.raises(ValueError) as run:
        get_train_args(config)
    with pytest.raises(ValueError) as plan:
        make_plan(config)
    assert str(plan.value) == str(run.value)
    assert str(plan.value).startswith("lf-multilr: `")


@pytest.mark.parametrize("case", list(PLAN_ONLY))
def test_lf_multilr_plan_refuses_what_the_run_refuses_after_llamafactorys_own_checks(case, tiny, data, tmp_path):
    from lf_multilr.patches.dry_run import make_plan

    overrides, message = PLAN_ONLY[case]
    if case.startswith("deepspeed"):
        overrides = {**overrides, "deepspeed": deepspeed_with(tmp_path, "optimizer")}
    with pytest.raises(ValueError, match=message):
        make_plan(args_for(tiny("qwen2_vl"), data, tmp_path, **overrides))


def test_a_deepspeed_block_given_through_accelerates_config_file_is_refused_before_the_model_loads(
    get_train_args, tiny, data, tmp_path, monkeypatch
):
    """`accelerate launch --use_deepspeed --deepspeed_config_file FILE` hands the config over in the environment, where
    HF's arguments read it: refused while parsing, by the run and the plan alike, not only at the first step."""
    from lf_multilr.patches.dry_run import make_plan

    path = deepspeed_with(tmp_path, "scheduler")
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_CONFIG_FILE", path)
    message = rf"`vision_tower_lr: 1e-05` is refused: the DeepSpeed config '{path}' has a `scheduler` block"
    args = args_for(tiny("qwen2_vl"), data, tmp_path, vision_tower_lr=1e-5)
    with pytest.raises(ValueError, match=message):
        get_train_args(args)
    with pytest.raises(ValueError, match=message):
        make_plan(args)


@pytest.mark.parametrize("block", ["optimizer", "scheduler"])
def test_a_deepspeed_config_with_its_own_optimizer_or_scheduler_is_refused(block, tmp_path):
    deepspeed = tmp_path / "ds.json"
    deepspeed.write_text(json.dumps({block: {"type": "AdamW", "params": {}}, "zero_optimization": {"stage": 0}}))
    settings = Settings.read(SimpleNamespace(vision_tower_lr=1e-5))
    with pytest.raises(ValueError, match=rf"has a `{block}` block.*Fix: remove the `{block}` block"):
        refuse_deepspeed_blocks(settings, str(deepspeed))
    refuse_deepspeed_blocks(settings, {"zero_optimization": {"stage": 2}})


@pytest.mark.core
def test_a_module_left_frozen_by_the_prepared_model_is_refused_before_the_weights_load(tiny, data, tmp_path, env):
    """A copy in `additional_target` leaves the flags undecided: LLaMA-Factory's adapter setup on the model's structure
    (the meta device) shows the vision tower has nothing trainable."""
    family = "qwen2_vl"
    config, out = write_config(
        tmp_path,
        tiny(family),
        data,
        family,
        finetuning_type="lora",
        freeze_vision_tower=True,
        additional_target=PROJECTOR_COPY[family],
        vision_tower_lr=1.0e-5,
    )
    result = train(config, env)
    assert result.returncode != 0
    assert (
        "the vision_tower has nothing trainable in this run: LoRA put no adapter on it and `additional_target` "
        "copies none of it (25 frozen tensors)" in result.stderr
    )
    assert "Fix: set `freeze_vision_tower: false` so that LoRA adapts it" in result.stderr
    assert WEIGHTS_LOADING not in result.stdout + result.stderr and not out.exists()


#: The keys issue 21 added (the language model's and the audio tower's layer decay, the floors, the audio tower's).
NEW_KEYS = (
    "language_model_lr_layer_decay",
    "audio_tower_lr_layer_decay",
    "vision_tower_min_lr",
    "multi_modal_projector_min_lr",
    "language_model_min_lr",
    "audio_tower_min_lr",
    "audio_tower_lr",
    "audio_tower_weight_decay",
    "audio_tower_start_step",
    "audio_tower_warmup_steps",
)
BAD_VALUES = {
    "nan": "it is not a finite number",
    "inf": "it is not a finite number",
    True: "it is a boolean, not a number",
    "fast": "it is not a number",
    -1: "",
}


@pytest.mark.parametrize("value", list(BAD_VALUES), ids=[repr(value) for value in BAD_VALUES])
@pytest.mark.parametrize("key", NEW_KEYS)
def test_every_new_key_is_checked_by_llamafactorys_parser_naming_it(key, value, get_train_args, tmp_path):
    """Through LLaMA-Factory's own parser, on a model folder with no weights: each bad value is refused naming the key
    and the value, with the reason where it is one of the shared checks (a negative number's reason is the kind's)."""
    model = config_only_model(tmp_path, "qwen2_vl")
    args = {
        "model_name_or_path": str(model),
        "stage": "sft",
        "do_train": True,
        "finetuning_type": "full",
        "dataset": "none",
        "template": "qwen2_vl",
        "output_dir": str(tmp_path / "out"),
        "lr_scheduler_type": "cosine",
        key: value,
    }
    with pytest.raises(ValueError) as refused:
        get_train_args(args)
    message = str(refused.value)
    assert f"lf-multilr: `{key}: {value!r}` is refused: {BAD_VALUES[value]}" in message, message
    assert "Fix:" in message and not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("optim", "flags", "key"),
    [
        ("galore_adamw_layerwise", {}, "optim"),
        ("adamw_torch", {"use_apollo": True, "apollo_layerwise": True}, "apollo_layerwise"),
    ],
)
def test_layerwise_forms_under_several_processes_are_refused_naming_the_form(optim, flags, key):
    """Under DDP a tensor's optimizer would step on its rank's own gradient, before DDP averages it: refused (HF
    refuses its own forms only when it builds the optimizer, and lf-multilr reads HF's as their plain form; the
    parser's `parallel_mode` needs a launched process group, so the check is called with it here)."""
    training_args = SimpleNamespace(
        optim=optim, parallel_mode=SimpleNamespace(value="distributed"), lr_scheduler_type="cosine"
    )
    finetuning_args = SimpleNamespace(stage="sft", **flags)
    with pytest.raises(
        ValueError,
        match=rf"`{key}: .*` is refused: each tensor's optimizer would step in its gradient "
        r"hook on its own rank's gradient, before DDP averages it.*Fix: use `",
    ):
        refuse_layerwise(Settings.read(SimpleNamespace(vision_tower_lr=1e-5)), training_args, finetuning_args)
