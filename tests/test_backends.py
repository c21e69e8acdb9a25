"""Never silently without the groups: a trainer that builds its optimizer another way is stopped before its first
step, and LLaMA-Factory's other back ends are refused before any weight loads, naming the back end.

The other back ends need GPU-only packages (mcore_adapter, Megatron Bridge, KTransformers, hyper_parallel); only
their availability checks are faked here (a stub package on the path, or LLaMA-Factory's own check function
replaced), and each refusal is LLaMA-Factory's real parser calling lf-multilr's checks.
"""

import json
import os
import sys
import textwrap

import pytest

from lf_multilr.compat import LLAMAFACTORY_FULL
from lf_multilr.patches.hparams import own_hyper_parallel_trainer
from tools.testing import BIN, LLAMAFACTORY, log_records, run, write_config

PY = sys.executable
FAMILY = "qwen2_vl"
LRS = {"vision_tower_lr": 1.0e-4, "multi_modal_projector_lr": 1.0e-3, "language_model_lr": 1.0e-2}
ON_MAIN = LLAMAFACTORY.startswith("0.9.6")
#: Where the v1 engine trains (0.9.4's has no `train` command yet) and lf-multilr refuses the keys there.
V1 = LLAMAFACTORY in LLAMAFACTORY_FULL
PYTHONPATH = [path for path in os.environ.get("PYTHONPATH", "").split(os.pathsep) if path]


def with_trainer(trainer: str) -> str:
    """A script that trains its config with LLaMA-Factory's SFT workflow, whose trainer class is ``trainer``'s source
    (a subclass of ``workflow.CustomSeq2SeqTrainer``, put in its place)."""
    name = trainer.split("class ", 1)[1].split("(", 1)[0]
    return (
        "import sys\nimport transformers\nimport yaml\nimport llamafactory.train.sft.workflow as workflow\n\n"
        f"{textwrap.dedent(trainer)}\nworkflow.CustomSeq2SeqTrainer = {name}\n"
        "from llamafactory.train.tuner import run_exp\n\nrun_exp(yaml.safe_load(open(sys.argv[1])))\n"
    )


BYPASS = with_trainer("""
    class BypassingTrainer(workflow.CustomSeq2SeqTrainer):
        def create_optimizer(self, *args, **kwargs):  # HF's own two groups at learning_rate: no create_custom_optimizer
            return transformers.Trainer.create_optimizer(self, *args, **kwargs)
""")

UNGATED = with_trainer("""
    class UngatedTrainer(workflow.CustomSeq2SeqTrainer):
        def create_scheduler(self, num_training_steps, optimizer=None):  # as PPO does: no HF create_scheduler
            self.lr_scheduler = transformers.get_scheduler(
                self.args.lr_scheduler_type, optimizer or self.optimizer, 0, num_training_steps
            )
            return self.lr_scheduler
""")


@pytest.mark.targets
def test_a_scheduler_that_never_applied_a_module_start_is_stopped_before_the_first_step(tiny, data, tmp_path, env):
    keys = {**LRS, "vision_tower_start_step": 2}
    config, out = write_config(tmp_path, tiny(FAMILY), data, FAMILY, max_steps=3, save_strategy="steps", **keys)
    result = run([PY, "-c", UNGATED, str(config)], env, cwd=config.parent)
    assert result.returncode != 0
    message = next((line for line in result.stderr.splitlines() if line.startswith("RuntimeError: lf-")), "")
    assert message.startswith(
        "RuntimeError: lf-multilr: the optimizer about to take the first step holds lf-multilr's module groups, "
        "but its group `vision_tower"
    ), result.stderr[-3000:]
    assert "at step 0, where `vision_tower_start_step: 2` holds it at 0 until step 2" in message
    assert not (out / "checkpoint-1").exists() and not (out / "trainer_log.jsonl").exists()  # no step was taken


@pytest.mark.core
def test_a_trainer_that_bypasses_the_factory_is_stopped_before_its_first_step(tiny, data, tmp_path, env):
    config, out = write_config(tmp_path / "keys", tiny(FAMILY), data, FAMILY, max_steps=2, save_strategy="steps", **LRS)
    result = run([PY, "-c", BYPASS, str(config)], env, cwd=config.parent)
    assert result.returncode != 0
    message = next((line for line in result.stderr.splitlines() if line.startswith("RuntimeError: lf-")), "")
    assert message.startswith(
        "RuntimeError: lf-multilr: the optimizer about to take the first step does not hold lf-multilr's module "
        "groups: it holds 2 groups: unnamed ("
    ), result.stderr[-3000:]
    assert "and lf-multilr's factory built no groups in this run. It was built by a torch.optim.adamw.AdamW" in message
    assert "from `__main__.BypassingTrainer.create_optimizer` of the trainer `BypassingTrainer`" in message
    assert "Fix: train with LLaMA-Factory's own trainers" in message
    assert "Running training" in result.stdout + result.stderr  # it got as far as the training loop
    assert not (out / "checkpoint-1").exists() and not (out / "trainer_log.jsonl").exists()  # no step was taken

    # The control: without a key the same trainer trains to the end, stock (the check is not armed).
    config, out = write_config(tmp_path / "stock", tiny(FAMILY), data, FAMILY, max_steps=2)
    result = run([PY, "-c", BYPASS, str(config)], env, cwd=config.parent)
    assert result.returncode == 0, result.stderr[-3000:]
    assert [r["current_steps"] for r in log_records(out) if "loss" in r] == [1, 2]


ENGINES = """
import json
import os
import sys

os.environ["USE_MCA"] = "1"  # read when LLaMA-Factory's parser is imported, with mcore_adapter (a stub) importable
from llamafactory.hparams import parser
import llamafactory.train.tuner  # every training target is patched, as in a run

ARGS = json.loads(sys.argv[1])


def attempt(name, parse=parser.get_train_args, args=ARGS, **extra):
    try:
        parse({**args, **extra})
    except ValueError as error:
        print("RESULT", json.dumps([name, str(error)]))
    else:
        print("RESULT", json.dumps([name, "ACCEPTED"]))


attempt("mca")
os.environ["USE_MCA"] = "0"
if hasattr(parser, "_TRAIN_MBRIDGE_ARGS"):  # LLaMA-Factory main
    os.environ["USE_MEGATRON_BRIDGE"] = "1"
    parser.is_megatron_bridge_available = lambda: True
    attempt("megatron_bridge")
    os.environ["USE_MEGATRON_BRIDGE"] = "0"
if "use_hyper_parallel" in parser.FinetuningArguments.__dataclass_fields__:  # 0.9.5 on
    attempt("hyper_parallel", use_hyper_parallel=True)
check_version = parser.check_version
parser.check_version = lambda *args, **kwargs: None  # KTransformers' packages (kt-kernel, ...) are GPU-only
attempt("kt", use_kt=True, finetuning_type="lora")
parser.check_version = check_version
if sys.argv[2] == "v1":
    from llamafactory.v1.config import arg_parser

    v1 = {"model": ARGS["model_name_or_path"], "output_dir": ARGS["output_dir"], "vision_tower_lr": 1e-4}
    attempt("v1", parse=arg_parser.get_args, args=v1)
    without = {k: v for k, v in v1.items() if not k.endswith("_lr")}
    attempt("v1 without keys", parse=arg_parser.get_args, args=without)
    callbacks = ["transformers:PrinterCallback"]
    attempt("v1 callbacks", parse=arg_parser.get_args, args={**without, "trainer_callbacks": callbacks})
attempt("default engine")
"""


def engine_results(tiny, tmp_path, env):
    stub = tmp_path / "stubs" / "mcore_adapter"
    stub.mkdir(parents=True)
    (stub / "__init__.py").write_text(  # the two names LLaMA-Factory imports from it
        "from transformers import Seq2SeqTrainingArguments\nTrainingArguments = Seq2SeqTrainingArguments\n"
    )
    args = {
        "model_name_or_path": str(tiny(FAMILY)),
        "stage": "sft",
        "do_train": True,
        "finetuning_type": "full",
        "freeze_vision_tower": False,
        "dataset": "tiny_mm",
        "output_dir": str(tmp_path / "out"),
        "vision_tower_lr": 1.0e-4,
    }
    command = [PY, "-c", ENGINES, json.dumps(args), "v1" if V1 else ""]
    result = run(command, {**env, "PYTHONPATH": os.pathsep.join([str(tmp_path / "stubs"), *PYTHONPATH])})
    assert result.returncode == 0, result.stderr[-3000:]
    return dict(json.loads(line[7:]) for line in result.stdout.splitlines() if line.startswith("RESULT "))


@pytest.mark.core
def test_other_back_ends_are_refused_before_the_model_loads_naming_the_back_end(tiny, tmp_path, env):
    found = engine_results(tiny, tmp_path, env)
    refused = "lf-multilr: `vision_tower_lr: 0.0001` is refused: "
    assert found["mca"].startswith(refused + "`USE_MCA=1` (mcore_adapter is installed) trains with mcore_adapter's")
    assert "Fix: unset USE_MCA to train with LLaMA-Factory's own trainers" in found["mca"]
    if ON_MAIN:
        assert found["megatron_bridge"].startswith(refused + "`USE_MEGATRON_BRIDGE=1` trains with Megatron Bridge")
        assert found["hyper_parallel"] == "ACCEPTED"  # main's own HyperParallelTrainer uses the factory (below)
    else:  # 0.9.5 reads no USE_MEGATRON_BRIDGE, and its hyper-parallel trainer is the hyper_parallel package's
        assert "megatron_bridge" not in found
        if "hyper_parallel" in found:  # 0.9.4 has no hyper-parallel training
            assert found["hyper_parallel"].startswith(refused + "`use_hyper_parallel: true` trains with the hyper_")
    assert found["kt"].startswith(refused + "`use_kt: true` trains with KTransformers")
    if V1:
        assert found["v1"].startswith(refused + "`USE_V1=1` trains with LLaMA-Factory's v1 engine")
        if ON_MAIN:  # its v1 engine takes the keys inside `optim_config` (tests/test_v1.py)
            into = "which takes lf-multilr's keys inside `optim_config`. Fix: move it there: `optim_config: {name: "
            assert into in found["v1"]
        else:
            assert "Fix: unset USE_V1 to train with LLaMA-Factory's default engine" in found["v1"]
        assert found["v1 without keys"] == "ACCEPTED"  # the control
        assert found["v1 callbacks"].startswith(  # v1 never runs the callbacks lf-multilr adds: refused, not dropped
            "lf-multilr: `trainer_callbacks: ['transformers:PrinterCallback']` is refused: `USE_V1=1` trains with "
            "LLaMA-Factory's v1 engine, which never runs the callbacks lf-multilr adds"
        )
    assert found["default engine"] == "ACCEPTED"  # the control


@pytest.mark.core
@pytest.mark.skipif(not V1, reason=f"LLaMA-Factory {LLAMAFACTORY}'s v1 engine has no `train` command yet")
def test_the_v1_engine_is_refused_through_the_cli_with_nothing_written(tiny, data, tmp_path, env):
    config, out = write_config(tmp_path, tiny(FAMILY), data, FAMILY, **LRS)
    v1 = {"model": str(tiny(FAMILY)), "output_dir": str(out), "vision_tower_lr": 1.0e-4}
    config.write_text(json.dumps(v1))  # the v1 engine's own keys (it reads YAML, and JSON is YAML)
    result = run([str(BIN / "llamafactory-cli"), "train", str(config)], {**env, "USE_V1": "1"})
    assert result.returncode != 0
    assert "lf-multilr: `vision_tower_lr: 0.0001` is refused: `USE_V1=1` trains with" in result.stderr
    assert not out.exists()


HYPER_PARALLEL_STUB = {
    "__init__.py": "",
    "platform.py": "def get_platform():\n    raise NotImplementedError\n",
    "integration/__init__.py": "",
    "integration/llamafactory/__init__.py": """
        def _unused(*args, **kwargs):
            raise NotImplementedError

        HSDPModule = HyperParallelArguments = object
        export_to_hf_format = fsdp2_prepare_model = hsdp_sync_stream = load_hsdp_model = _unused
        load_hsdp_optimizer_and_scheduler = save_hsdp_checkpoint = clip_grad_norm_ = _unused
        wrapped = []

        def wrap_optimizer_with_skip_dtensor_dispatch(optimizer):
            wrapped.append(optimizer)
    """,
    "integration/llamafactory/context_parallel.py": "cp_prepare_model = get_cp_rank = get_dp_rank = None\n"
    "shard_inputs_for_cp = None\n",
}

HYPER_PARALLEL = """
import sys
import torch
import transformers
from hyper_parallel.integration import llamafactory as stub
from llamafactory.hparams import parser
from llamafactory.train.hyper_parallel.trainer import HyperParallelTrainer

model_args, _, training_args, finetuning_args, _ = parser.get_train_args({
    "model_name_or_path": sys.argv[1], "stage": "sft", "do_train": True, "finetuning_type": "full",
    "freeze_vision_tower": False, "freeze_multi_modal_projector": False, "dataset": "tiny_mm",
    "output_dir": sys.argv[2], "use_hyper_parallel": True, "learning_rate": 1e-3,
    "vision_tower_lr": 1e-4, "multi_modal_projector_lr": 1e-3, "language_model_lr": 1e-2,
})
trainer = object.__new__(HyperParallelTrainer)  # its __init__ needs hyper_parallel's HSDP: only the optimizer is made
trainer.model = transformers.AutoModelForImageTextToText.from_pretrained(sys.argv[1])
trainer.args, trainer.finetuning_args, trainer.optimizer = training_args, finetuning_args, None
optimizer = trainer.create_optimizer()
assert stub.wrapped == [optimizer]  # HyperParallelTrainer's own step wrapping still happens
for group in optimizer.param_groups:
    print("GROUP", group["name"], group["lr"])
"""


@pytest.mark.core
@pytest.mark.skipif(
    not own_hyper_parallel_trainer(),
    reason=f"LLaMA-Factory {LLAMAFACTORY} has no HyperParallelTrainer of its own (main has; 0.9.5's is refused)",
)
def test_mains_hyper_parallel_trainer_builds_the_module_groups(tiny, tmp_path, env):
    stub = tmp_path / "stubs" / "hyper_parallel"
    for name, text in HYPER_PARALLEL_STUB.items():
        (stub / name).parent.mkdir(parents=True, exist_ok=True)
        (stub / name).write_text(textwrap.dedent(text))
    command = [PY, "-c", HYPER_PARALLEL, str(tiny(FAMILY)), str(tmp_path / "out")]
    result = run(command, {**env, "PYTHONPATH": os.pathsep.join([str(tmp_path / "stubs"), *PYTHONPATH])})
    assert result.returncode == 0, result.stderr[-3000:]
    groups = dict(line.split()[1:] for line in result.stdout.splitlines() if line.startswith("GROUP "))
    assert groups == {
        "language_model/decay": "0.01",
        "language_model/no_decay": "0.01",
        "vision_tower/decay": "0.0001",
        "vision_tower/no_decay": "0.0001",
        "multi_modal_projector/decay": "0.001",
        "multi_modal_projector/no_decay": "0.001",
    }


@pytest.mark.parametrize("value", ["1", "true", "TRUE", "y", "Y", "0", "false", "yes", "on", " 1", "t", ""])
def test_a_back_end_switch_is_read_as_llamafactory_reads_it(value, monkeypatch):
    """`USE_MCA=yes` does not select mcore_adapter in LLaMA-Factory, so lf-multilr must not refuse it as if it did."""
    from llamafactory.extras.misc import is_env_enabled

    from lf_multilr.config.backends import env_enabled

    monkeypatch.setenv("USE_RAY", value)
    assert env_enabled(os.environ, "USE_RAY") is is_env_enabled("USE_RAY")
