"""Several processes on CPU (gloo): DDP through LLaMA-Factory's launcher, FSDP1 and FSDP2 through ``accelerate
launch``, two ranks each, one AdamW step on the tiny Qwen2-VL. Every rank builds the same groups, each module moves
by exactly its LR, and the per-module gradient norms are the whole modules' (they add up to HF's ``grad_norm``).
FSDP1, FSDP2, ZeRO-2 and ZeRO-3 runs resumed from a mid-run checkpoint end exactly where the uninterrupted ones do.

accelerate runs FSDP only on GPU-like ranks; ``tests/fsdp_cpu.py`` lets its FSDP plugin through on CPU ranks and
reports what accelerate wrapped, so that these runs are FSDP and say so.
"""

import importlib.util
import json
import math
import re
import socket
import subprocess
from types import SimpleNamespace

import pytest
import torch
import yaml

from lf_multilr.config.checks import Fsdp, flat_parameters, fsdp_of, refuse_deepspeed_blocks
from lf_multilr.config.settings import Settings
from lf_multilr.errors import ConfigError
from lf_multilr.patches import metrics
from lf_multilr.reports.table import human
from lf_multilr.training.distributed import rank_mismatch, same_groups_on_every_rank
from tools.testing import (
    BIN,
    ROOT,
    WEIGHTS_LOADING,
    clean_env,
    log_records,
    logged_steps,
    max_steps_by_module,
    one_step,
    owner,
    rank_signature,
    run,
    step_records,
    train,
    weights,
    write_config,
    zero_config,
)

FAMILY = "qwen2_vl"
LRS = {"vision_tower_lr": 1.0e-4, "multi_modal_projector_lr": 1.0e-3, "language_model_lr": 1.0e-2}
EXPECTED = {"vision_tower": 1.0e-4, "multi_modal_projector": 1.0e-3, "language_model": 1.0e-2}
MODULES = tuple(EXPECTED)
SIGNATURE = rank_signature(6)

ACCELERATE = {
    "compute_environment": "LOCAL_MACHINE",
    "distributed_type": "FSDP",
    "mixed_precision": "no",
    "downcast_bf16": "no",
    "num_machines": 1,
    "num_processes": 2,
    "machine_rank": 0,
    "rdzv_backend": "static",
    "same_network": True,
    "use_cpu": False,
}
FSDP1 = {
    "fsdp_version": 1,
    "fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
    "fsdp_sharding_strategy": "FULL_SHARD",
    "fsdp_state_dict_type": "FULL_STATE_DICT",
    "fsdp_use_orig_params": True,
    "fsdp_sync_module_states": False,  # accelerate's sync wants a GPU
    "fsdp_offload_params": False,
    "fsdp_cpu_ram_efficient_loading": False,
}
FSDP2 = {
    "fsdp_version": 2,
    "fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
    "fsdp_reshard_after_forward": True,
    "fsdp_state_dict_type": "FULL_STATE_DICT",
    "fsdp_offload_params": False,
    "fsdp_cpu_ram_efficient_loading": False,
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def launch(config, env, fsdp, script, ranks=2):
    """``accelerate launch`` of ``script`` (LLaMA-Factory's launcher, or the CPU FSDP one) on ``ranks`` CPU ranks."""
    accelerate = config.parent / "accelerate.yaml"
    accelerate.write_text(yaml.safe_dump({**ACCELERATE, "num_processes": ranks, "fsdp_config": fsdp}))
    command = [str(BIN / "accelerate"), "launch", "--config_file", str(accelerate)]
    command += ["--main_process_port", str(free_port()), str(script), str(config)]
    return run(command, {**env, "PATH": f"{BIN}:{env['PATH']}"}, cwd=config.parent)


def fsdp_cpu(config, env, fsdp, ranks=2):
    return launch(config, env, fsdp, ROOT / "tests" / "fsdp_cpu.py", ranks)


def torchrun_with_teardown_mend(config, env):
    """``torchrun`` of LLaMA-Factory's launcher as its CLI starts it, through ``tests/fsdp_cpu.py`` for its gloo
    teardown mend (a rank once aborted after a ZeRO-3 run had completed and saved); without an FSDP plugin the
    shim changes nothing else."""
    command = [str(BIN / "torchrun"), "--nproc_per_node", "2", "--master_port", str(free_port())]
    command += [str(ROOT / "tests" / "fsdp_cpu.py"), str(config)]
    return run(command, {**env, "PATH": f"{BIN}:{env['PATH']}"}, cwd=config.parent)


def torchrun(config, env, ranks):
    """LLaMA-Factory's own launcher: `llamafactory-cli train` with FORCE_TORCHRUN=1 on `ranks` CPU ranks."""
    path = f"{BIN}:{env['PATH']}"  # LLaMA-Factory's launcher runs `torchrun` from PATH
    return train(config, {**env, "FORCE_TORCHRUN": "1", "NPROC_PER_NODE": str(ranks), "PATH": path})


def whole_table(tiny, output):
    """The start-of-training table counts every module's tensors and parameters whole, not one rank's piece."""
    sizes: dict[str, list[int]] = {}
    for name, tensor in weights(tiny(FAMILY)).items():
        size = sizes.setdefault(owner(FAMILY, name), [0, 0])
        size[0], size[1] = size[0] + 1, size[1] + tensor.numel()
    for module in MODULES:
        tensors, params = sizes[module]
        assert re.search(rf"\n  {module}\s+{tensors}\s+{re.escape(human(params))}\s+yes", output), output[-3000:]


def same_signature_on_both_ranks(output):
    found = dict(SIGNATURE.findall(output))
    assert set(found) == {"0", "1"}, output[-3000:]
    assert found["0"] == found["1"]


def one_step_by_module_lr(tiny, out):
    steps = max_steps_by_module(FAMILY, weights(tiny(FAMILY)), weights(out))
    assert set(steps) == set(EXPECTED)
    for module, values in steps.items():
        assert values == one_step(EXPECTED[module], len(values)), module


def norms_add_up(record):
    norms = [record[f"grad_norm/{module}"] for module in MODULES]
    assert all(norm > 0 for norm in norms)
    assert math.sqrt(sum(norm * norm for norm in norms)) == pytest.approx(record["grad_norm"], rel=1e-5)
    return record


def test_ddp_ranks_build_the_same_groups_and_every_module_steps_by_its_lr(tiny, data, tmp_path, env):
    config, out = write_config(tmp_path, tiny(FAMILY), data, FAMILY, **LRS)
    result = torchrun(config, env, 2)
    output = result.stdout + result.stderr
    assert result.returncode == 0, result.stderr[-3000:]
    assert "world size: 2" in output
    same_signature_on_both_ranks(output)
    whole_table(tiny, output)
    one_step_by_module_lr(tiny, out)
    (record,) = step_records(out)
    norms_add_up(record)
    assert (record["lr/vision_tower"], record["lr/multi_modal_projector"], record["lr/language_model"]) == (
        1.0e-4,
        1.0e-3,
        1.0e-2,
    )
    assert [r for r in log_records(out) if "loss" in r][0]["grad_norm/vision_tower"] == record["grad_norm/vision_tower"]


#: The sharded runs: four steps of cosine decay from the LRs (no warm-up, no weight decay, so that the first step moves
#: every tensor by exactly its module's LR), a checkpoint after every step (the first step's weights, and the one of
#: step 2 to resume from).
SHARDED = {
    "max_steps": 4,
    "save_steps": 1,
    "save_strategy": "steps",
    "lr_scheduler_type": "cosine",
    "warmup_steps": 0,
    "weight_decay": 0.0,
}


def sharded_run(folder, backend, tiny, data, env, **resume):
    """A run of SHARDED with the module LRs on two ranks under ``backend`` (FSDP with two micro-batches per step, so
    that the norms are measured on gradients accumulated, reduced and sharded; or ZeRO): its output folder and
    console output, after checking that both ranks built the same groups."""
    fsdp = {"fsdp1": FSDP1, "fsdp2": FSDP2}.get(backend)
    folder.mkdir(parents=True)
    extra = {"gradient_accumulation_steps": 2} if fsdp else {"deepspeed": deepspeed_config(folder, int(backend[-1]))}
    config, out = write_config(folder, tiny(FAMILY), data, FAMILY, **SHARDED, **extra, **resume, **LRS)
    result = fsdp_cpu(config, env, fsdp) if fsdp else torchrun_with_teardown_mend(config, env)
    output = result.stdout + result.stderr
    assert result.returncode == 0, result.stderr[-3000:]
    same_signature_on_both_ranks(output)
    return out, output


@pytest.fixture(scope="module")
def sharded(tiny, data, tmp_path_factory):
    """``sharded(backend)``: one uninterrupted run per backend, shared by the test of what it keeps and the test that
    resumes from it (neither changes it)."""
    made = {}

    def get(backend):
        if backend not in made:
            folder = tmp_path_factory.mktemp(backend)
            (folder / "hf_home").mkdir()
            made[backend] = sharded_run(folder / "whole", backend, tiny, data, clean_env(folder / "hf_home"))
        return made[backend]

    return get


def first_step_by_module_lr(tiny, out):
    """The first step (cosine from the LRs, no warm-up) moved every tensor by its module's LR, and the logged
    lr/<module> keep the LRs' ratios at every step (they share the schedule): the steps' log records."""
    one_step_by_module_lr(tiny, out / "checkpoint-1")
    records = step_records(out)
    assert len(records) == 4
    for record in records:  # HF's own log (trainer_state.json): its learning_rate is the language model's LR
        assert record["lr/language_model"] == record["learning_rate"]
        assert record["lr/multi_modal_projector"] == pytest.approx(record["learning_rate"] * 1.0e-1, rel=1e-6)
        assert record["lr/vision_tower"] == pytest.approx(record["learning_rate"] * 1.0e-2, rel=1e-6)
    return records


@pytest.mark.targets
@pytest.mark.parametrize(
    ("backend", "wrapped"),
    [("fsdp1", "FullyShardedDataParallel, Parameter"), ("fsdp2", "DTensor")],
    ids=["fsdp1", "fsdp2"],
)
def test_fsdp_keeps_the_groups_steps_every_module_by_its_lr_and_logs_whole_norms(backend, wrapped, sharded, tiny):
    out, output = sharded(backend)
    pieces = re.findall(rf"fsdp_cpu: rank (\d): .*{wrapped}.*, (\d+) elements here", output)
    reports = [line for line in output.splitlines() if "fsdp_cpu:" in line]
    assert sorted(rank for rank, _ in pieces) == ["0", "1"], reports
    whole = sum(tensor.numel() for tensor in weights(tiny(FAMILY)).values())
    assert sum(int(size) for _, size in pieces) == whole  # each rank holds a piece, together the whole model
    whole_table(tiny, output)
    for record in first_step_by_module_lr(tiny, out):
        norms_add_up(record)
    assert "gradient norms are not logged" not in output


@pytest.mark.parametrize("backend", ["fsdp1", "fsdp2", "zero2", "zero3"])
def test_a_sharded_run_resumes_exactly_where_the_uninterrupted_one_goes(backend, sharded, tiny, data, tmp_path, env):
    # Resumed from the checkpoint of step 2: each backend saves and loads the weights and the optimizer state of the
    # module groups itself.
    whole, _ = sharded(backend)
    resumed, _ = sharded_run(
        tmp_path / "resumed", backend, tiny, data, env, resume_from_checkpoint=str(whole / "checkpoint-2")
    )
    expected, got = weights(whole), weights(resumed)
    assert expected.keys() == got.keys()
    assert all(torch.equal(expected[name], got[name]) for name in expected)  # bit for bit
    before, after = logged_steps(whole), logged_steps(resumed)
    assert sorted(after) == [3, 4]  # the resumed run trained steps 3 and 4 only
    for step in (3, 4):
        assert after[step] == before[step]  # loss and every lr/<module>
        assert {f"lr/{module}" for module in MODULES} <= after[step].keys()


@pytest.mark.parametrize("route", ["accelerate config", "training arguments"])
def test_fsdp1_without_orig_params_is_refused_before_the_model_loads(route, tiny, data, tmp_path, env):
    # One rank: each rank refuses on its own, before anything is sharded.
    if route == "accelerate config":  # `accelerate launch` of the launcher LLaMA-Factory's docs name
        config, out = write_config(tmp_path, tiny(FAMILY), data, FAMILY, **LRS)
        launcher = importlib.util.find_spec("llamafactory.launcher").origin
        result = launch(config, env, {**FSDP1, "fsdp_use_orig_params": False}, launcher, ranks=1)
        where = "(`fsdp_use_orig_params` in the accelerate config (FSDP_USE_ORIG_PARAMS=false))"
    else:  # transformers' own `fsdp` arguments in the training YAML
        fsdp = {"fsdp": "full_shard auto_wrap", "fsdp_config": {"use_orig_params": False}}
        config, out = write_config(tmp_path, tiny(FAMILY), data, FAMILY, **fsdp, **LRS)
        result = torchrun(config, env, 1)
        where = "(`use_orig_params` under `fsdp_config` in the training arguments)"
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert (
        "lf-multilr: `vision_tower_lr: 0.0001` is refused: FSDP1 without `use_orig_params` hands the optimizer one "
        "flattened tensor per wrapped block" in output
    )
    assert where in output
    assert "Fix: set `fsdp_use_orig_params: true` in the accelerate config" in output
    assert WEIGHTS_LOADING not in output
    assert not out.exists()


def test_fsdp1_without_orig_params_and_no_key_withholds_the_norms_with_one_warning(tiny, data, tmp_path, env):
    # One rank: FSDP1 flattens there as on many (the warning is said by the first rank only).
    config, out = write_config(tmp_path, tiny(FAMILY), data, FAMILY)
    result = fsdp_cpu(config, env, {**FSDP1, "fsdp_use_orig_params": False}, ranks=1)
    output = result.stdout + result.stderr
    assert result.returncode == 0, result.stderr[-3000:]
    assert "FlatParameter" in output  # FSDP1 really flattened the model
    warnings = re.findall(r"lf-multilr: per-module gradient norms are not logged: (.*)", output)
    assert warnings == [
        "FSDP1 without `use_orig_params` flattens the parameters of several modules into one tensor, so no module's "
        "gradient can be told apart; a piece's norm is not the module's."
    ]
    (record,) = step_records(out)
    assert "grad_norm" in record and not any(key.startswith("grad_norm/") for key in record)


def deepspeed_config(tmp_path, stage, **blocks):
    """LLaMA-Factory's example ZeRO config (see ``e2e.zero_config``) plus blocks, written next to the run."""
    import deepspeed  # noqa: F401  (`make test` installs it; a missing DeepSpeed fails here rather than skipping)

    config = zero_config(stage, **blocks)
    path = tmp_path / f"ds_z{stage}.json"
    path.write_text(json.dumps(config))
    return str(path)


@pytest.mark.targets
@pytest.mark.parametrize("backend", ["zero2", "zero3"])
def test_deepspeed_zero_keeps_the_groups_and_steps_every_module_by_its_lr(backend, sharded, tiny):
    # LLaMA-Factory's launcher under torchrun, with the CPU teardown mend (a ZeRO-3 rank was seen aborting after this
    # run had completed and saved); `llamafactory-cli train` starting torchrun itself is the DDP and two-node tests'.
    out, output = sharded(backend)
    whole_table(tiny, output)  # ZeRO-3's partitions counted whole
    warnings = re.findall(r"lf-multilr: per-module gradient norms are not logged: (.*)", output)
    assert warnings == [
        "under DeepSpeed each rank holds only a partition of the gradients, in DeepSpeed's own buffers; a piece's "
        "norm is not the module's."
    ]
    for record in first_step_by_module_lr(tiny, out):
        assert "grad_norm" in record and not any(key.startswith("grad_norm/") for key in record)


def test_two_nodes_under_zero3_build_the_same_groups_and_step_every_module_by_its_lr(tiny, data, tmp_path, env):
    """Two nodes simulated on one machine: two `llamafactory-cli train` processes, one per node, each starting its
    own torchrun (NNODES=2, NODE_RANK=0|1, one process per node) against one master, each with its own HF_HOME (its
    own disk) and a shared output_dir (a shared file system)."""
    deepspeed = deepspeed_config(tmp_path, 3)
    config, out = write_config(tmp_path, tiny(FAMILY), data, FAMILY, deepspeed=deepspeed, **LRS)
    port = str(free_port())
    nodes = []
    for rank in (0, 1):
        home = tmp_path / f"node{rank}_hf_home"
        home.mkdir()
        node = {"FORCE_TORCHRUN": "1", "NNODES": "2", "NODE_RANK": str(rank), "NPROC_PER_NODE": "1"}
        node |= {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "HF_HOME": str(home), "PATH": f"{BIN}:{env['PATH']}"}
        command = [str(BIN / "llamafactory-cli"), "train", str(config)]
        output = {"stdout": subprocess.PIPE, "stderr": subprocess.STDOUT, "text": True}
        nodes.append(subprocess.Popen(command, env={**env, **node}, cwd=config.parent, **output))
    outputs = [node.communicate(timeout=600)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], "\n\n".join(output[-3000:] for output in outputs)
    assert "Multi-node training enabled: num nodes: 2, node rank: 0" in outputs[0]
    signatures = [dict(SIGNATURE.findall(output)) for output in outputs]
    assert [set(found) for found in signatures] == [{"0"}, {"1"}]  # each node runs one rank: node 1 runs rank 1
    assert signatures[0]["0"] == signatures[1]["1"]
    whole_table(tiny, outputs[0])  # ZeRO-3's partitions counted whole
    one_step_by_module_lr(tiny, out)


def test_a_deepspeed_config_with_an_optimizer_block_is_refused_by_the_cli(tiny, data, tmp_path, env):
    deepspeed = deepspeed_config(tmp_path, 2, optimizer={"type": "AdamW", "params": {"lr": "auto"}})
    config, out = write_config(tmp_path, tiny(FAMILY), data, FAMILY, deepspeed=deepspeed, **LRS)
    result = torchrun(config, env, 1)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "has a `optimizer` block, and DeepSpeed then builds one flat param group" in output
    assert WEIGHTS_LOADING not in output
    assert not out.exists()


GROUPS = [
    {"name": "language_model/decay", "params": [torch.zeros(1)] * 3, "layout": "a" * 16},
    {"name": "vision_tower/decay", "params": [torch.zeros(1)] * 2, "layout": "b" * 16},
]


def test_ranks_whose_groups_differ_are_refused_on_every_rank():
    def on_rank_1(changed):
        return lambda mine: [mine, [*mine[:1], changed]]  # a fake all_gather_object: rank 1 built group 1 otherwise

    assert "rank 1 of 2: 2 param groups, signature" in same_groups_on_every_rank(GROUPS, 1, lambda mine: [mine, mine])
    for changed, why in [
        (["vision_tower/decay", 3, "b" * 16], "group 1 (vision_tower/decay) holds 2 tensors on rank 0 and 3 on rank 1"),
        (["vision_tower/decay", 2, "c" * 16], "holds different parameters on rank 0 and on rank 1 (same count"),
        (["other/decay", 2, "b" * 16], "group 1 is `vision_tower/decay` on rank 0 and `other/decay` on rank 1"),
    ]:
        with pytest.raises(RuntimeError, match=re.escape(why)) as raised:
            same_groups_on_every_rank(GROUPS, 0, on_rank_1(changed))
        assert "the ranks built different param groups" in str(raised.value)
        assert "Fix: give every rank the same model" in str(raised.value)
    short = rank_mismatch([[("a", 1, "x"), ("b", 1, "y")], [("a", 1, "x")]])
    assert short == "rank 0 has 2 groups: a (1), b (1); rank 1 has 1 group: a (1)"


def test_fsdp_settings_are_read_where_transformers_and_accelerate_read_them():
    accelerate = {"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "1", "FSDP_USE_ORIG_PARAMS": "false"}
    assert fsdp_of(None, {}) is None and fsdp_of(None, {"ACCELERATE_USE_FSDP": "false"}) is None
    assert fsdp_of(None, accelerate) == Fsdp(1, False, fsdp_of(None, accelerate).source)
    assert fsdp_of(None, {"ACCELERATE_USE_FSDP": "true"}).use_orig_params is False  # accelerate's default
    assert fsdp_of(None, {**accelerate, "FSDP_VERSION": "2"}).version == 2
    # transformers' `fsdp` / `fsdp_config` arguments build the plugin themselves and win over the environment
    assert fsdp_of({"fsdp_version": 1, "use_orig_params": True}, accelerate).use_orig_params is True
    assert fsdp_of({"fsdp_version": 1, "use_orig_params": False}, {}).use_orig_params is False


def test_flat_parameters_are_found_by_torchs_own_flag():
    flat = torch.nn.Parameter(torch.zeros(4))
    flat._is_flat_param = True
    assert flat_parameters([("a._flat_param", flat), ("b.weight", torch.nn.Parameter(torch.zeros(2)))]) == [
        "a._flat_param"
    ]


class Trainer:
    """A stand-in trainer (hashable and weakly referable, as the monitors are kept by weak reference)."""

    def __init__(self, **attributes):
        self.__dict__.update(attributes)


def test_deepspeed_withholds_the_norms_with_one_warning(monkeypatch):
    warned = []
    monkeypatch.setattr(metrics, "warn_once", lambda message, every_rank=True: warned.append(message))
    model = torch.nn.Linear(2, 2)
    model.config = SimpleNamespace(model_type="qwen2_vl")
    trainer = Trainer(
        finetuning_args=SimpleNamespace(log_module_metrics=True),
        model=model,
        optimizer=SimpleNamespace(param_groups=[{"module": "language_model", "params": list(model.parameters())}]),
        accelerator=SimpleNamespace(distributed_type="DistributedType.DEEPSPEED"),
    )
    assert metrics.monitor_of(trainer) is None
    assert warned == [
        "per-module gradient norms are not logged: under DeepSpeed each rank holds only a partition of the "
        "gradients, in DeepSpeed's own buffers; a piece's norm is not the module's."
    ]


def test_the_deepspeed_block_check_reads_inline_configs_too():
    settings = Settings.read(SimpleNamespace(vision_tower_lr=1e-5))
    with pytest.raises(ConfigError, match="has a `scheduler` block"):
        refuse_deepspeed_blocks(settings, '{"scheduler": {"type": "WarmupLR"}}')
