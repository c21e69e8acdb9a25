"""`lf-multilr plan` (the run's module table without loading weights) and `lf-multilr doctor`."""

import json

import pytest
import yaml

from tools.testing import BIN, LLAMAFACTORY, ROOT, WEIGHTS_LOADING, adapter, owner, run, train, weights, write_config

LRS = {"vision_tower_lr": 1.0e-4, "multi_modal_projector_lr": 1.0e-3, "language_model_lr": 1.0e-2}


def plan(config, env, *extra):
    return run([str(BIN / "lf-multilr"), "plan", str(config), *extra], env, cwd=config.parent)


@pytest.mark.core
def test_plan_counts_what_the_model_holds(tiny, data, tmp_path, capsys, monkeypatch):
    """The command's own function, in this process: the installed `lf-multilr plan` starts in the refusal test below,
    and its JSON is read in test_plan_counts_the_lora_adapters_the_run_trains."""
    from lf_multilr.cli import main

    family = "qwen2_vl"
    config, out = write_config(tmp_path, tiny(family), data, family, **LRS)
    monkeypatch.setenv("LLAMAFACTORY_VERBOSITY", "WARN")  # what the command sets for itself
    capsys.readouterr()
    assert main(["plan", str(config), "--json"]) == 0
    planned = json.loads(capsys.readouterr().out)
    counted = {}
    for name, tensor in weights(tiny(family)).items():
        tensors, params = counted.get(owner(family, name), (0, 0))
        counted[owner(family, name)] = (tensors + 1, params + tensor.numel())
    assert planned["model_type"] == family
    assert {m: (v["num_tensors"], v["num_params"]) for m, v in planned["modules"].items()} == counted
    assert {m: v["lr"] for m, v in planned["modules"].items()} == {
        "language_model": 1.0e-2,
        "vision_tower": 1.0e-4,
        "multi_modal_projector": 1.0e-3,
    }
    assert [g["name"] for g in planned["param_groups"]][0].startswith("language_model/")
    # each group names its tensors: every trainable parameter once, in the group of its module
    named = [(group["module"], name) for group in planned["param_groups"] for name in group["params"]]
    assert sorted(name for _, name in named) == sorted(weights(tiny(family)))
    assert all(module == owner(family, name) for module, name in named)
    assert [len(g["params"]) for g in planned["param_groups"]] == [g["num_tensors"] for g in planned["param_groups"]]

    # one module's tensors, each with its group and LR
    assert main(["plan", str(config), "--tensors", "vision_tower", "vision_tower_lr_layer_decay=0.5"]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = [line.split() for line in lines[2:-1]]
    vision = sorted(name for name in weights(tiny(family)) if owner(family, name) == "vision_tower")
    assert sorted(row[0] for row in rows) == vision
    by_group = {}
    for _, group, lr, _ in rows:
        by_group.setdefault(group, set()).add(float(lr))
    assert all(len(lrs) == 1 for lrs in by_group.values())  # one LR per group
    top = max(float(row[2]) for row in rows)
    assert top == pytest.approx(1.0e-4) and min(float(row[2]) for row in rows) < top  # the blocks below decay
    assert lines[-1] == f"  {len(vision)} tensors train; 0 frozen"
    assert main(["plan", str(config), "--tensors", "audio_tower"]) == 2
    assert "--tensors audio_tower: no such module; this model has: language_model" in capsys.readouterr().err
    assert not out.exists()  # planning writes nothing


def test_plan_prints_the_module_table(tiny, data, tmp_path, env):
    family = "qwen2_vl"
    config, out = write_config(tmp_path, tiny(family), data, family, **LRS)
    text = plan(config, env)
    assert text.returncode == 0 and text.stdout.startswith("lf-multilr param groups for model type `qwen2_vl`:")
    assert "vision_tower" in text.stdout and not out.exists()


def test_plan_counts_the_lora_adapters_the_run_trains(tiny, data, tmp_path, env):
    family = "qwen2_vl"
    config, out = write_config(
        tmp_path,
        tiny(family),
        data,
        family,
        finetuning_type="lora",
        lora_target="all",
        additional_target="merger",
        **LRS,
    )
    planned = json.loads(plan(config, env, "--json").stdout)
    result = train(config, env)
    assert result.returncode == 0, result.stderr[-3000:]
    trained = adapter(out)
    lora = {
        module: sum(
            t.numel() for n, t in trained.items() if "lora_" in n and ((".visual." in n) == (module == "vision_tower"))
        )
        for module in ("language_model", "vision_tower")
    }
    assert planned["modules"]["language_model"]["num_params"] == lora["language_model"]
    assert planned["modules"]["vision_tower"]["num_params"] == lora["vision_tower"]
    assert planned["modules"]["multi_modal_projector"]["num_params"] == sum(
        t.numel() for n, t in trained.items() if "merger" in n
    )


#: Where LLaMA-Factory itself trains the projector under LoRA or OFT, and a projector LR the run accepts there:
#: Qwen3-VL's `lora_target: all` adapts the merger and the DeepStack mergers when both freeze flags are false (LoRA+
#: included); OFT trains a projector copy in `additional_target` under LLaMA-Factory's default
#: `freeze_multi_modal_projector: true`. (family, the config, the projector's tensors as `plan --json` names them.)
ADAPTED_PROJECTOR = {
    "qwen3_vl lora+": (
        "qwen3_vl",
        {"finetuning_type": "lora", "lora_target": "all", "loraplus_lr_ratio": 4.0},
        {
            f"{prefix}.{layer}.lora_{ab}.default.weight"
            for prefix in ("model.visual.merger", "model.visual.deepstack_merger_list.0")
            for layer in ("linear_fc1", "linear_fc2")
            for ab in "AB"
        },
    ),
    # the flag keeps LoRA off `visual.merger`; the DeepStack mergers (vision tower to the flags) still get adapters
    "qwen3_vl lora, projector flag": (
        "qwen3_vl",
        {"finetuning_type": "lora", "lora_target": "all", "freeze_multi_modal_projector": True},
        {
            f"model.visual.deepstack_merger_list.0.{layer}.lora_{ab}.default.weight"
            for layer in ("linear_fc1", "linear_fc2")
            for ab in "AB"
        },
    ),
    "qwen2_vl oft copy": (
        "qwen2_vl",
        {"finetuning_type": "oft", "additional_target": "merger", "freeze_multi_modal_projector": True},
        {
            f"model.visual.merger.modules_to_save.default.{tensor}"
            for tensor in ("ln_q.weight", "ln_q.bias", "mlp.0.weight", "mlp.0.bias", "mlp.2.weight", "mlp.2.bias")
        },
    ),
}


@pytest.mark.parametrize("case", list(ADAPTED_PROJECTOR))
def test_the_projector_lr_reaches_what_llamafactory_trains_of_the_projector(case, tiny, data, tmp_path):
    """In-process: the plan (LLaMA-Factory's prepared model on the meta device) puts exactly the projector's adapters or
    copy in its groups, at its LR (lora_B at LR x ratio under LoRA+); the run's checks before the weights load pass."""
    from lf_multilr.patches.dry_run import make_plan, read_config
    from lf_multilr.reports.as_json import plan_to_dict

    family, overrides, expected = ADAPTED_PROJECTOR[case]
    config, out = write_config(tmp_path, tiny(family), data, family, **LRS, **overrides)
    planned = plan_to_dict(make_plan(read_config([str(config)])))
    projector = [group for group in planned["param_groups"] if group["module"] == "multi_modal_projector"]
    assert {name for group in projector for name in group["params"]} == expected
    ratio = overrides.get("loraplus_lr_ratio", 1.0)
    for group in projector:
        lrs = {1.0e-3 * ratio if ".lora_B." in name else 1.0e-3 for name in group["params"]}
        assert lrs == {group["lr"]}, group["name"]
    others = {name for group in planned["param_groups"] if group not in projector for name in group["params"]}
    assert others and not any("merger" in name for name in others)
    assert not out.exists()


@pytest.mark.core
def test_plan_refuses_what_the_run_refuses_with_the_same_message(tiny, data, tmp_path, env):
    """Through both commands, for a refusal that needs the model's own arguments (a key on a module the run freezes):
    `llamafactory-cli train` exits non-zero with the message, before any weight loads, and nothing is written. Every
    refusal is compared between plan and run in-process by tests/test_bad_input.py."""
    family = "qwen2_vl"
    config, out = write_config(tmp_path, tiny(family), data, family, vision_tower_lr=1.0e-5, freeze_vision_tower=True)
    planned, ran = plan(config, env), train(config, env)
    assert planned.returncode == 1 and ran.returncode != 0
    message = planned.stderr.strip().splitlines()[-1]
    assert message.startswith("lf-multilr: `vision_tower_lr: 1e-05` is refused") and message in ran.stderr
    assert WEIGHTS_LOADING not in planned.stdout + planned.stderr + ran.stdout + ran.stderr
    assert not out.exists()


def test_a_72b_config_plans_from_config_json_alone(tmp_path, capsys, monkeypatch):
    from lf_multilr.cli import main

    config = tmp_path / "plan.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "model_name_or_path": str(ROOT / "bench" / "configs" / "qwen2_vl_72b"),
                "stage": "sft",
                "finetuning_type": "full",
                "freeze_vision_tower": False,
                "learning_rate": 1.0e-5,
                "vision_tower_lr": 2.0e-6,
                "bf16": True,
                "deepspeed": None,
            }
        )
    )
    monkeypatch.setenv("LLAMAFACTORY_VERBOSITY", "WARN")  # what the command sets for itself
    capsys.readouterr()
    assert main(["plan", str(config), "--json"]) == 0  # the command's function, in this process
    modules = json.loads(capsys.readouterr().out)["modules"]
    assert sum(m["num_params"] for m in modules.values()) == 73_405_560_320
    assert modules["vision_tower"]["lr"] == 2.0e-6 and modules["multi_modal_projector"]["trainable"] is False


@pytest.mark.core
def test_doctor_reports_versions_hook_and_patches(env):
    result = run([str(BIN / "lf-multilr"), "doctor"], env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"llamafactory {LLAMAFACTORY}, transformers " in result.stdout
    assert "hook active in this interpreter: yes" in result.stdout and result.stdout.count("[x]") > 5
    applied = [line for line in result.stdout.splitlines() if "[x]" in line]  # on every leg: verified here
    assert all(line.endswith(")") and "(verified on " in line for line in applied), applied
    assert "(verified on LLaMA-Factory 0.9.4, 0.9.5, 0.9.6.dev0)" in result.stdout
    stock = [line for line in result.stdout.splitlines() if "[ ]" in line]  # each with why: older than verified
    assert all("(stock: " in line for line in stock), stock  # (LlamaBoard on 0.9.4), stood in for, not needed


def test_doctor_says_when_the_kill_switch_is_set(env):
    disabled = run([str(BIN / "lf-multilr"), "doctor"], {**env, "LF_MULTILR_DISABLE": "1"})
    assert "LF_MULTILR_DISABLE is set" in disabled.stdout
