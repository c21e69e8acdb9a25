"""LLaMA-Factory's Ray launcher (``USE_RAY=1``): ``llamafactory-cli train`` starts Ray, one Ray actor per worker, and
each worker parses the arguments and trains in its own process. Installed lf-multilr is active there through its
start-up hook, like in any process of its environment, and every worker's optimizer holds the module groups at their
LRs; ``lf-multilr train``, whose activation reaches its own process only, is refused.

The run needs ``ray``, which lives in an environment of its own (``.venv-ray``, ``make venv-ray``); its tests are
marked ``ray`` and skip where ``ray`` is not installed.

One change to LLaMA-Factory, made by the test on the driver only and said by its output (``tests/ray_cpu``): stock
LLaMA-Factory asks Ray, on a machine without GPUs, for a placement-group bundle of 10 CPUs per CPU of the cluster
and for 10 CPUs per worker actor (its open issue #10348), which no cluster has, so the run would wait forever. The
test's driver asks for 1 CPU per bundle and per actor; the rest is LLaMA-Factory's. ``master_addr`` is given, because
LLaMA-Factory otherwise asks Ray's state API (the dashboard of ``ray[default]``) for the head node's address.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from types import SimpleNamespace

import pytest

from lf_multilr.config.backends import explicit_activation_refusal
from tools.testing import (
    ROOT,
    WEIGHTS_LOADING,
    max_steps_by_module,
    one_step,
    owner,
    rank_signature,
    step_records,
    train,
    weights,
    write_config,
)

FAMILY = "qwen2_vl"
LRS = {"vision_tower_lr": 1.0e-4, "multi_modal_projector_lr": 1.0e-3, "language_model_lr": 1.0e-2}
EXPECTED = {"vision_tower": 1.0e-4, "multi_modal_projector": 1.0e-3, "language_model": 1.0e-2}
WORKER = re.compile(r"^\S*\((?:Worker|RayWorker)? ?pid=\d+\)\S* ", re.MULTILINE)  # Ray's prefix of a worker's line
SIGNATURE = rank_signature(6)
FITTED = "ray_cpu: each placement-group bundle and each worker asks Ray for 1 CPU"


def ray_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("ray") is not None


needs_ray = pytest.mark.skipif(not ray_installed(), reason="needs ray: run in .venv-ray (`make venv-ray`)")


@pytest.fixture(scope="module")
def ray_run(tiny, data, tmp_path_factory):
    """One two-worker run of the real ``llamafactory-cli train`` under ``USE_RAY=1``, one AdamW step at the module
    LRs, each worker writing what its optimizer holds and how far each tensor moved (``tests/ray_cpu/ray_probe.py``,
    through ``LF_MULTILR_CALLBACKS``); shared by the tests below."""
    import ray.util

    from tools.testing import clean_env

    folder = tmp_path_factory.mktemp("ray")
    (folder / "hf_home").mkdir()
    ray_init = {"num_cpus": 2, "include_dashboard": False}
    address = ray.util.get_node_ip_address()  # the address Ray gives the node it starts
    config, out = write_config(
        folder, tiny(FAMILY), data, FAMILY, ray_num_workers=2, ray_init_kwargs=ray_init, master_addr=address, **LRS
    )
    ray_dir = tempfile.mkdtemp(prefix="ray")  # short: Ray's sockets live under it
    path = os.pathsep.join(filter(None, [str(ROOT / "tests" / "ray_cpu"), os.environ.get("PYTHONPATH")]))
    env = clean_env(folder / "hf_home", USE_RAY="1", PYTHONPATH=path, LF_MULTILR_CALLBACKS="ray_probe:Probe")
    env.update(RAY_TMPDIR=ray_dir, RAY_DEDUP_LOGS="0", RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
    try:
        result = train(config, env)
    finally:
        shutil.rmtree(ray_dir, ignore_errors=True)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-5000:]
    probes = {rank: json.loads((out / f"probe-rank{rank}.json").read_text()) for rank in (0, 1)}
    return SimpleNamespace(out=out, output=output, probes=probes)


@pytest.mark.ray
@needs_ray
def test_every_ray_worker_runs_the_plugin_and_its_optimizer_holds_the_module_groups(ray_run, tiny):
    output, probes = ray_run.output, ray_run.probes
    assert FITTED in output  # the driver's resource requests were fitted (and said so)
    assert "Using ray.remote mode with 2 workers" in output
    # Two Ray actors in two processes, ranks 0 and 1 of one process group of two.
    assert {rank: (probe["rank"], probe["world_size"]) for rank, probe in probes.items()} == {0: (0, 2), 1: (1, 2)}
    assert probes[0]["pid"] != probes[1]["pid"]
    assert probes[0]["ray_actor"] and probes[1]["ray_actor"] and probes[0]["ray_actor"] != probes[1]["ray_actor"]
    # Each worker said its groups' signature (the same), on a line Ray forwarded from that worker.
    signatures = {rank: signature for rank, signature in SIGNATURE.findall(output)}
    assert set(signatures) == {"0", "1"} and signatures["0"] == signatures["1"], output[-5000:]
    said = [line for line in output.splitlines() if SIGNATURE.search(line)]
    assert len(said) == 2 and all(WORKER.match(line) for line in said), said
    # Each worker's optimizer: lf-multilr's groups, every trainable tensor in the group of its module, at its LR.
    names = set(weights(tiny(FAMILY)))
    for rank, probe in probes.items():
        groups = probe["groups"]
        assert {group["module"] for group in groups} == set(EXPECTED), rank
        placed = [name for group in groups for name in group["params"]]
        assert sorted(placed) == sorted(names), rank  # every parameter once
        for group in groups:
            assert group["lr"] == EXPECTED[group["module"]], (rank, group["name"])
            assert {owner(FAMILY, name) for name in group["params"]} == {group["module"]}, (rank, group["name"])
        assert [group["name"] for group in groups] == [group["name"] for group in probes[0]["groups"]]


@pytest.mark.ray
@needs_ray
def test_one_step_on_ray_workers_moves_every_module_by_its_lr(ray_run, tiny):
    # In each worker, as its optimizer stepped (the ranks' gradients averaged, so both moved alike) ...
    for rank, probe in ray_run.probes.items():
        steps: dict[str, list[float]] = {}
        for name, step in probe["steps"].items():
            steps.setdefault(owner(FAMILY, name), []).append(step)
        assert set(steps) == set(EXPECTED), rank
        for module, values in steps.items():
            assert values == one_step(EXPECTED[module], len(values)), (rank, module)
    # ... and in the model the run saved, and in the log it wrote.
    steps = max_steps_by_module(FAMILY, weights(tiny(FAMILY)), weights(ray_run.out))
    assert {module: values == one_step(EXPECTED[module], len(values)) for module, values in steps.items()} == {
        module: True for module in EXPECTED
    }
    (record,) = step_records(ray_run.out)
    assert {module: record[f"lr/{module}"] for module in EXPECTED} == EXPECTED


def test_lf_multilr_train_under_ray_is_refused_before_anything_loads(tmp_path, env):
    config, out = write_config(tmp_path, tmp_path / "model", tmp_path / "data", FAMILY, ray_num_workers=2, **LRS)
    result = train(config, {**env, "USE_RAY": "1"}, cli="lf-multilr")
    assert result.returncode == 1
    assert result.stderr.startswith(
        "lf-multilr: `USE_RAY: '1'` is refused: `lf-multilr train` activates lf-multilr in its own process only, and "
        "with USE_RAY LLaMA-Factory trains in Ray worker processes"
    )
    assert "Fix: run `llamafactory-cli train` instead, with lf-multilr installed in the environment the Ray " in (
        result.stderr
    )
    assert WEIGHTS_LOADING not in result.stdout + result.stderr and not out.exists()


def test_the_refusal_follows_llamafactorys_use_ray_switch():
    for value in ("1", "true", "True", "y"):
        refusal = explicit_activation_refusal({"USE_RAY": value})
        assert refusal is not None and (refusal.key, refusal.value) == ("USE_RAY", value)
    for environ in ({}, {"USE_RAY": "0"}, {"USE_RAY": "false"}, {"USE_RAY": ""}):
        assert explicit_activation_refusal(environ) is None
