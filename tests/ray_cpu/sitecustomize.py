"""For tests only: LLaMA-Factory's Ray launcher (``USE_RAY=1``) fitted to a CPU-only machine.

Put on ``PYTHONPATH`` of a ``llamafactory-cli train`` run, this changes two requests of the Ray driver and nothing else.
Stock LLaMA-Factory (0.9.5 and ``main``) asks, on a machine without GPUs, for one placement-group bundle of 10 CPUs
per CPU of the Ray cluster (``trainer_utils.get_placement_group`` is handed the cluster's CPU count) and for 10 CPUs
per worker actor (``get_ray_remote_config_for_worker``): more than any cluster has, so the placement group never
becomes ready and the run waits forever (LLaMA-Factory's open issue #10348). Here each bundle and each actor asks for
one CPU; the bundles' count, the actors, their environment and everything they run stay LLaMA-Factory's.

The change is made by a lazy post-import hook on ``llamafactory.train.tuner`` (which imports both names), so that the
interpreter's start-up imports nothing. The Ray workers inherit ``PYTHONPATH`` with the rest of the driver's
environment, which LLaMA-Factory hands them, together with their ``RANK``: there nothing is changed.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from functools import wraps
from typing import Any

TUNER = "llamafactory.train.tuner"
CPUS = 1  # per bundle and per worker actor (stock: 10)


def fit(tuner: Any) -> None:
    from ray.util.placement_group import placement_group

    stock_remote_config = tuner.get_ray_remote_config_for_worker

    def get_placement_group(num_workers: int) -> Any:
        bundle = {"CPU": CPUS}
        return placement_group([bundle for _ in range(num_workers)], strategy="PACK"), bundle

    @wraps(stock_remote_config)
    def get_ray_remote_config_for_worker(*args: Any, **kwargs: Any) -> dict[str, Any]:
        return {**stock_remote_config(*args, **kwargs), "num_cpus": CPUS}

    tuner.get_placement_group = get_placement_group
    tuner.get_ray_remote_config_for_worker = get_ray_remote_config_for_worker
    sys.stderr.write(f"ray_cpu: each placement-group bundle and each worker asks Ray for {CPUS} CPU\n")


class _Finder:
    """Finds ``llamafactory.train.tuner`` through the other finders (lf-multilr's hook included) and calls
    :func:`fit` once its module has executed."""

    asking = False

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name != TUNER or self.asking:
            return None
        self.asking = True
        try:
            spec = importlib.util.find_spec(name)
        finally:
            self.asking = False
        if spec is None or spec.loader is None:
            return spec
        execute = spec.loader.exec_module

        def exec_module(module: Any) -> None:
            execute(module)
            fit(module)

        spec.loader.exec_module = exec_module
        return spec


if "RANK" not in os.environ:  # the driver; LLaMA-Factory gives each Ray worker its RANK
    sys.meta_path.insert(0, _Finder())
