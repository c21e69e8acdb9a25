"""Activation by install, in fresh interpreters: every import order, the kill switch, explicit activation."""

import sys

import pytest

from conftest import BIN, run
from lf_multilr.patches.targets import TARGETS

PY = sys.executable
# transformers 4.x's stand-ins stay stock on 5.x (the full suite's); `core` tests do not count targets
PATCHED = [t for t in TARGETS if not t.instead_of]
TRAINING = [t for t in PATCHED if not t.owner.startswith("llamafactory.webui")]
ALL, TRAIN = str(len(PATCHED)), str(len(TRAINING))
PROBE = """
import sys
from lf_multilr import patches
from lf_multilr.patches.targets import TARGETS
import llamafactory.train.tuner  # every training module lf-multilr patches
import llamafactory.train.sft.trainer as sft
ready = [
    t.dotted for t in TARGETS if t.trigger_module in sys.modules and t.owner in sys.modules and not patches.why_stock(t)
]
print(len(patches.applied()), len(ready), hasattr(sft.create_custom_optimizer, "__wrapped__"))
"""
WEBUI = "import llamafactory.webui.interface\n"


def test_python_starts_silently_and_light(env):
    for extra in ({}, {"LF_MULTILR_DISABLE": "1"}):
        result = run([PY, "-c", "pass"], {**env, **extra})
        assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
    heavy = ("torch", "llamafactory", "transformers", "lf_multilr.patches")
    probe = f"import sys; print(sorted(m for m in {heavy} if m in sys.modules), 'lf_multilr._boot' in sys.modules)"
    result = run([PY, "-c", probe], env)
    assert result.stdout.split() == ["[]", "True"]


def test_hook_patches_when_llamafactory_is_imported(env):
    result = run([PY, "-c", PROBE], env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [TRAIN, TRAIN, "True"]
    result = run([PY, "-c", WEBUI + PROBE], env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [ALL, ALL, "True"]


def test_apply_after_llamafactory_was_imported_rebinds_the_importers(env):
    code = (
        "import os; del os.environ['LF_MULTILR_DISABLE']\n"
        "import llamafactory.train.tuner\nimport lf_multilr\nassert lf_multilr.apply()\n" + PROBE
    )
    result = run([PY, "-c", code], {**env, "LF_MULTILR_DISABLE": "1"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [TRAIN, TRAIN, "True"]


@pytest.mark.core
def test_kill_switch_gives_stock_llamafactory_and_its_unknown_key_error(env, tmp_path):
    code = "import lf_multilr\nassert not lf_multilr.apply()\n" + PROBE.replace(
        "from lf_multilr import patches", "import lf_multilr.patches as patches"
    )
    result = run([PY, "-c", code], {**env, "LF_MULTILR_DISABLE": "1"})
    assert result.returncode == 0, result.stderr
    applied, ready, wrapped = result.stdout.split()
    assert (applied, wrapped) == ("0", "False") and int(ready) > 0
    config = tmp_path / "c.yaml"
    config.write_text("model_name_or_path: some/model\nstage: sft\noutput_dir: out\nvision_tower_lr: 1.0e-5\n")
    result = run(
        [str(BIN / "llamafactory-cli"), "train", str(config)], {**env, "LF_MULTILR_DISABLE": "1"}, cwd=tmp_path
    )
    assert result.returncode != 0
    assert "Some keys are not used by the HfArgumentParser: ['vision_tower_lr']" in result.stderr
    assert "lf-multilr" not in result.stdout + result.stderr


@pytest.mark.core
def test_unverified_llamafactory_warns_once_and_refuses_keys(env):
    code = """
import llamafactory.extras.env as lf_env
lf_env.VERSION = "0.9.1"
from llamafactory.hparams import parser
import llamafactory.train.tuner
from lf_multilr import patches
print(sorted(t.rsplit(".", 1)[-1] for t in patches.applied()))
try:
    parser.get_train_args({"vision_tower_lr": 1e-5, "model_name_or_path": "x", "output_dir": "o", "stage": "sft"})
except ValueError as error:
    print("REFUSED", error)
"""
    result = run([PY, "-c", code], env)
    assert result.returncode == 0, result.stderr
    assert len(result.stderr.splitlines()) == 1 and "0.9.1 is outside the verified range" in result.stderr
    assert "['_TRAIN_ARGS', '_TRAIN_MCA_ARGS', 'get_train_args']" in result.stdout
    assert "REFUSED lf-multilr: `vision_tower_lr: 1e-05` is refused: LLaMA-Factory 0.9.1 is outside" in result.stdout


@pytest.mark.core
def test_llamafactory_0_9_3_is_refused_with_the_installed_and_verified_versions_and_the_fix(env):
    """0.9.3 (transformers <= 4.52.4) is refused, its layout faked here: it has no `_TRAIN_MCA_ARGS`, which must not
    keep the check that refuses the keys from being patched in (it did: the keys were parsed and silently ignored)."""
    code = """
import os
import llamafactory.extras.env as lf_env
lf_env.VERSION = "0.9.3"
from llamafactory.hparams import parser
del parser._TRAIN_MCA_ARGS
import llamafactory.train.tuner
del os.environ["LF_MULTILR_DISABLE"]
import lf_multilr
assert lf_multilr.apply()
from lf_multilr import patches
print(sorted(t.rsplit(".", 1)[-1] for t in patches.applied()))
try:
    parser.get_train_args({"vision_tower_lr": 1e-5, "model_name_or_path": "x", "output_dir": "o", "stage": "sft"})
except ValueError as error:
    print("REFUSED", error)
"""
    result = run([PY, "-c", code], {**env, "LF_MULTILR_DISABLE": "1"})
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == [
        "lf-multilr: LLaMA-Factory 0.9.3 is outside the verified range (>=0.9.4,<=0.9.5); training is stock and "
        "lf-multilr keys are refused."
    ]
    assert "['_TRAIN_ARGS', 'get_train_args']" in result.stdout
    assert (
        "REFUSED lf-multilr: `vision_tower_lr: 1e-05` is refused: LLaMA-Factory 0.9.3 is outside lf-multilr's "
        "verified range (>=0.9.4,<=0.9.5). Fix: install a verified version "
        "(pip install 'llamafactory>=0.9.4,<=0.9.5') or remove the lf-multilr keys"
    ) in result.stdout


def test_any_llamafactory_module_imported_first_gets_everything_patched(env):
    optional = ("train.mca.workflow", "train.hyper_parallel.workflow")  # their backends are not installed
    firsts = sorted({m for t in TRAINING for m in (t.owner, *t.importers) if not m.endswith(optional)})
    code = "import importlib, sys\nimportlib.import_module(sys.argv[1])\n" + PROBE
    for first in [*firsts, "llamafactory.webui.interface"]:
        expected = [ALL, ALL] if first.startswith("llamafactory.webui") else [TRAIN, TRAIN]
        result = run([PY, "-c", code, first], env)
        assert (result.returncode, result.stderr, result.stdout.split()) == (0, "", [*expected, "True"]), first


@pytest.mark.core
def test_llamafactory_absent_leaves_python_as_it_would_be(env):
    """No LLaMA-Factory to import: the hook never fires; the import error and everything else are Python's own."""
    code = """
import sys
sys.modules["llamafactory"] = None  # what an environment without LLaMA-Factory looks like to `import`
import json, lf_multilr
try:
    import llamafactory.train.tuner
except ImportError as error:
    print(type(error).__name__, error)
print(sorted(m for m in sys.modules if m.startswith(("llamafactory", "lf_multilr.patches"))))
"""
    results = [run([PY, "-c", code], {**env, **extra}) for extra in ({}, {"LF_MULTILR_DISABLE": "1"})]
    assert [(r.returncode, r.stdout, r.stderr) for r in results] == [(results[1].returncode, results[1].stdout, "")] * 2
    assert results[0].stdout.splitlines() == [
        "ModuleNotFoundError No module named 'llamafactory.train'; 'llamafactory' is not a package",
        "['llamafactory']",
    ]


@pytest.mark.core
def test_llamafactory_failing_to_import_fails_exactly_as_stock(env, tmp_path):
    """A broken LLaMA-Factory (here: one whose parser raises while it imports) raises its own error, unchanged,
    with or without the plugin, and the plugin prints nothing (its loader shows as one frame of the traceback)."""
    site = tmp_path / "broken"
    (site / "llamafactory" / "hparams").mkdir(parents=True)
    (site / "llamafactory" / "__init__.py").write_text("")
    (site / "llamafactory" / "hparams" / "__init__.py").write_text("from . import parser\n")
    (site / "llamafactory" / "hparams" / "parser.py").write_text("raise RuntimeError('broken install')\n")
    for extra in ({}, {"LF_MULTILR_DISABLE": "1"}):
        result = run([PY, "-c", "import llamafactory.hparams"], {**env, "PYTHONPATH": str(site), **extra})
        assert (result.returncode, result.stdout) == (1, "")
        assert result.stderr.splitlines()[-1] == "RuntimeError: broken install"
        assert not [line for line in result.stderr.splitlines() if line.startswith("lf-multilr")]
    result = run([PY, "-c", "pass"], {**env, "PYTHONPATH": str(site)})
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


@pytest.mark.core
def test_reading_the_registry_first_leaves_llamafactory_importable(env):
    # The plugin may be the first to import LLaMA-Factory (`lf-multilr plan`, a script); its order must not break a
    # later import that stock LLaMA-Factory's own order allows.
    code = (
        "from lf_multilr.patches.registry import known_types\n"
        "assert 'qwen2_vl' in known_types()\n"
        "import llamafactory.train.dpo.trainer\n"
        "print('imported')"
    )
    result = run([PY, "-c", code], env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["imported"]
