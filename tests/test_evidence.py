"""The evidence experiment (``bench/evidence.py``) end to end, reduced: ``--quick`` once for the module, through real
``llamafactory-cli train`` runs. The checks are on what it wrote: the schema other tools read, values in range,
every setting and seed measured, the plots there. No result is expected in advance: whatever the numbers, they only
have to be measurements.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tools.testing import ROOT, clean_env

pytestmark = pytest.mark.slow  # 7 trainings: 4 min 55 s on the shared 2-core machine under load

QUICK_LIMIT_S = 300  # the goal for --quick; its wall time is in evidence.json, not asserted (machines are shared)
PLOTS = ("evidence_tradeoff.png", "evidence_grad_norms.png")


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    out = tmp_path_factory.mktemp("evidence")
    home = out / "hf_home"
    home.mkdir()
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "evidence.py"), "--quick", "--out", str(out)],
        env=clean_env(home),
        capture_output=True,
        text=True,
        timeout=3 * QUICK_LIMIT_S,  # 343 s were seen on the 2-core machine under another suite's load
    )
    return out, done


@pytest.fixture(scope="module")
def evidence(quick: tuple[Path, subprocess.CompletedProcess[str]]) -> dict[str, Any]:
    out, done = quick
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads((out / "evidence.json").read_text())


def test_schema(evidence: dict[str, Any]) -> None:
    settings = evidence["settings"]
    assert isinstance(settings, dict) and len(settings) >= 3
    assert "uniform" in settings
    for name, setting in settings.items():
        assert set(setting) == {"config", "seeds"}, name
        assert isinstance(setting["config"], dict) and all(isinstance(key, str) for key in setting["config"])
        seeds = setting["seeds"]
        assert len(seeds) >= 2, name
        assert len({seed["seed"] for seed in seeds}) == len(seeds), f"{name}: a seed twice"
        for seed in seeds:
            assert set(seed) == {"seed", "task_accuracy", "retention"}, name
            assert isinstance(seed["seed"], int) and not isinstance(seed["seed"], bool)
            for metric in ("task_accuracy", "retention"):
                value = seed[metric]
                assert isinstance(value, float) and math.isfinite(value), (name, metric, value)
                assert 0.0 <= value <= 1.0, (name, metric, value)


def test_settings_are_what_they_say(evidence: dict[str, Any]) -> None:
    """uniform sets no module key; the others differ from it by the vision tower's LR or freezing."""
    settings = evidence["settings"]
    uniform = settings["uniform"]["config"]
    assert not any(key.endswith("_lr") and key != "learning_rate" for key in uniform), uniform
    others = [setting["config"] for name, setting in settings.items() if name != "uniform"]
    assert all(config != uniform for config in others)
    assert any("vision_tower_lr" in config or config.get("freeze_vision_tower") for config in others)
    # every setting ran the same seeds
    assert len({tuple(seed["seed"] for seed in setting["seeds"]) for setting in settings.values()}) == 1


def test_measured_not_constant(evidence: dict[str, Any]) -> None:
    """The frozen vision tower keeps the pretrained tower's features, so its retention is the pretrained accuracy
    (measured on the same pictures); a setting that trains the tower is measured on its own tower."""
    meta = evidence["meta"]
    frozen = evidence["settings"].get("vision_frozen")
    if frozen is not None:
        for seed in frozen["seeds"]:
            assert seed["retention"] == pytest.approx(meta["pretrained_task_a_accuracy"], abs=1e-6)
    assert meta["pretrained_task_a_accuracy"] > 0.5, "the pretrained tower did not learn task A"


def test_plots_and_table(quick: tuple[Path, subprocess.CompletedProcess[str]], evidence: dict[str, Any]) -> None:
    out, _ = quick
    for name in PLOTS:
        path = out / name
        assert path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    table = (out / "evidence.md").read_text()
    for name in evidence["settings"]:
        assert f"| {name} |" in table
