"""The tests' fixtures: a clean environment for each subprocess, and the project's tiny models and data."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from tools.testing import clean_env

#: Fixtures that start subprocesses (a training, an interpreter, a server, tests/test_distributed.py's sharded runs,
#: tests/test_ray.py's Ray run): their tests are left out of `make test-fast`.
SUBPROCESS_FIXTURES = frozenset({"env", "boards", "sharded", "pg", "ray_run"})


#: What the tests marked `optim` import: LLaMA-Factory's optional optimizers and bitsandbytes (.venv-optim has them).
OPTIM_PACKAGES = ("galore_torch", "apollo_torch", "badam", "bitsandbytes")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    missing = [name for name in OPTIM_PACKAGES if importlib.util.find_spec(name) is None]
    for item in items:
        if SUBPROCESS_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
        if missing and item.get_closest_marker("optim"):
            reason = f"needs {', '.join(missing)}: only .venv-optim has them (`make test` runs these in shard-optim)"
            item.add_marker(pytest.mark.skip(reason=reason))


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
