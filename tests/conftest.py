"""Shared fixtures: a clean environment for subprocesses, and the project's tiny models and data."""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BIN = Path(sys.executable).parent
#: The installed LLaMA-Factory: 0.9.5 in .venv runs the full suite, 0.9.4 in .venv-lf094 the `core` tests.
LLAMAFACTORY = importlib.metadata.version("llamafactory")
TRANSFORMERS_4 = importlib.metadata.version("transformers").startswith("4.")
INHERITED_OUT = (
    *("FORCE_TORCHRUN", "USE_V1", "CUDA_VISIBLE_DEVICES", "NPROC_PER_NODE", "NNODES", "NODE_RANK", "MASTER_ADDR"),
    *("MASTER_PORT", "LF_MULTILR_DISABLE", "USE_MCA", "USE_MEGATRON_BRIDGE"),
)


def full_suite_only(what: str) -> pytest.MarkDecorator:
    """Skip ``what`` where the installed LLaMA-Factory is not one the full suite verifies (0.9.5 and main)."""
    from lf_multilr.compat import LLAMAFACTORY_FULL

    return pytest.mark.skipif(
        LLAMAFACTORY not in LLAMAFACTORY_FULL,
        reason=f"{what}: verified on LLaMA-Factory {', '.join(LLAMAFACTORY_FULL)} only, installed {LLAMAFACTORY}",
    )


def clean_env(home: Path, **extra: str) -> dict[str, str]:
    """An environment for a CPU training subprocess: one thread, offline, its own HF_HOME."""
    env = {key: value for key, value in os.environ.items() if key not in INHERITED_OUT}
    env.update(
        OMP_NUM_THREADS="1",
        HF_HOME=str(home),
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        DISABLE_VERSION_CHECK=os.environ.get("DISABLE_VERSION_CHECK", "0"),  # 1 on the transformers 5.7.0 leg
        PYTHONWARNINGS="ignore",
    )
    # DeepSpeed builds its CPU ops just in time into torch's extension folder: one per environment, or two
    # environments running tests side by side rebuild each other's.
    env.setdefault("TORCH_EXTENSIONS_DIR", str(Path(sys.prefix) / "torch_extensions"))
    env.update(extra)
    return env


def run(
    args: list[str], env: dict[str, str], cwd: Path | None = None, timeout: int = 600
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    home = tmp_path / "hf_home"
    home.mkdir()
    return clean_env(home)


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory):
    """``tiny(family)``: the path of that family's tiny model, built once per test session."""
    from tools import tiny as builder

    built: dict[str, Path] = {}

    def get(family: str) -> Path:
        if family not in built:
            built[family] = builder.build_model(family, tmp_path_factory.mktemp(family))
        return built[family]

    return get


@pytest.fixture(scope="session")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tools import tiny as builder

    return builder.build_dataset(tmp_path_factory.mktemp("data"))
