"""Activation by install, in fresh interpreters: every import order, the kill switch, explicit activation."""

import importlib
import importlib.metadata
import importlib.util
import json
import sys

import pytest

from lf_multilr import _boot
from lf_multilr.compat import LLAMAFACTORY_FULL
from lf_multilr.patches.targets import TARGETS
from tools.testing import run

pytestmark = pytest.mark.targets  # patch targets' behaviour: the .venv-main leg runs these

PY = sys.executable
PROBE = """
import importlib.util, sys
from lf_multilr import patches
from lf_multilr.patches.targets import TARGETS
from lf_multilr import compat
import llamafactory.train.tuner  # every training module lf-multilr patches
if importlib.util.find_spec("llamafactory.v1") is not None:
    import llamafactory.v1.config.arg_parser  # the v1 engine's parser, where the keys are refused
    for target in TARGETS:  # and the rest of the v1 engine's targets, which a default-engine run does not import
        if target.owner.startswith("llamafactory.v1"):
            try:
                importlib.import_module(target.owner)
            except ImportError:  # a module this release's v1 engine lacks
                pass
import llamafactory.train.sft.trainer as sft
imported = [t for t in TARGETS if t.trigger_module in sys.modules and t.owner in sys.modules]
ready = [t for t in imported if compat.decide(patches.facts_of(t)).applies]
print(len(patches.applied()), len(ready), hasattr(sft.create_custom_optimizer, "__wrapped__"))
"""


def importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:  # a parent package this release does not have (the v1 engine on 0.9.4)
        return False


def _here(target) -> bool:
    """Whether the installed LLaMA-Factory has the target at all (the optional ones are version-specific)."""
    try:
        module = importlib.import_module(target.owner)
    except ImportError:
        return False
    return hasattr(module, target.attr.split(".")[0])


def _applies_here(target) -> bool:
    """Whether an optional target applies on the installed LLaMA-Factory: it has the target, at a release it applies
    on (0.9.5's v1 engine predates the v1 targets verified on main)."""
    if not _here(target):
        return False
    from lf_multilr import compat, patches

    return compat.decide(patches.facts_of(target)).verdict in compat.APPLIED


# transformers 4.x's stand-ins stay stock on 5.x (the full suite's); `core` tests do not count targets
PATCHED = [t for t in TARGETS if not t.instead_of and (not t.optional or _applies_here(t))]
TRAINING = [t for t in PATCHED if not t.owner.startswith("llamafactory.webui")]
ALL, TRAIN = str(len(PATCHED)), str(len(TRAINING))


def test_python_starts_silently_and_light(env):
    for extra in ({}, {"LF_MULTILR_DISABLE": "1"}):
        result = run([PY, "-c", "pass"], {**env, **extra})
        assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
    heavy = ("torch", "llamafactory", "transformers", "lf_multilr.patches")
    probe = f"import sys; print(sorted(m for m in {heavy} if m in sys.modules), 'lf_multilr._boot' in sys.modules)"
    result = run([PY, "-c", probe], env)
    assert result.stdout.split() == ["[]", "True"]


UNKNOWN_KEY = """
from llamafactory.hparams import get_train_args
try:
    get_train_args({"model_name_or_path": "some/model", "stage": "sft", "output_dir": "out", "vision_tower_lr": 1e-5})
except ValueError as error:
    print("REFUSED", error)
"""


@pytest.mark.core
def test_kill_switch_gives_stock_llamafactory_and_apply_rebinds_the_importers_later(env):
    """Under LF_MULTILR_DISABLE=1 LLaMA-Factory is stock, down to its parser's own unknown-key error (the CLI's,
    which a stock run of tests/test_train_e2e.py shows silent under the switch), and `apply()` refuses; with the switch
    lifted, `apply()` after LLaMA-Factory was imported patches it and rebinds the names its modules imported."""
    switched_off = "import lf_multilr\nassert not lf_multilr.apply()\n" + PROBE.replace(
        "from lf_multilr import patches", "import lf_multilr.patches as patches"
    )
    lifted = "import os; del os.environ['LF_MULTILR_DISABLE']\nassert lf_multilr.apply()\n" + PROBE
    marker = "import sys\nfor stream in (sys.stdout, sys.stderr):\n    print('LIFTED', file=stream, flush=True)\n"
    result = run([PY, "-c", switched_off + UNKNOWN_KEY + marker + lifted], {**env, "LF_MULTILR_DISABLE": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    (stdout, stdout_lifted), (stderr, _) = result.stdout.split("LIFTED\n"), result.stderr.split("LIFTED\n")
    counts, refused = stdout.splitlines()
    applied, ready, wrapped = counts.split()
    assert (applied, wrapped) == ("0", "False") and int(ready) > 0
    assert refused == "REFUSED Some keys are not used by the HfArgumentParser: ['vision_tower_lr']"
    assert "lf-multilr" not in stdout + stderr
    applied, ready, wrapped = stdout_lifted.split()
    assert applied == ready and wrapped == "True"
    if importlib.metadata.version("llamafactory") in LLAMAFACTORY_FULL:  # `core` counts no targets on 0.9.4
        assert applied == TRAIN


VERSIONED = """
import json, os, sys
import llamafactory.extras.env as lf_env
from llamafactory.hparams import parser
import llamafactory.train.trainer_utils as trainer_utils
import llamafactory.train.tuner
del os.environ["LF_MULTILR_DISABLE"]
import lf_multilr
from lf_multilr import patches
stock = lf_env.VERSION, getattr(parser, "_TRAIN_MCA_ARGS", None), trainer_utils.create_custom_optimizer
args = {"model_name_or_path": "x", "output_dir": "o", "stage": "sft", "freeze_vision_tower": False}
CB = ["transformers:PrinterCallback"]
for version, layout in json.loads(sys.argv[1]):
    lf_multilr.revert()  # stock LLaMA-Factory again, and nothing said yet: as in a fresh interpreter
    lf_env.VERSION = version
    if layout == "without _TRAIN_MCA_ARGS":  # 0.9.3's layout
        del parser._TRAIN_MCA_ARGS
    if layout == "changed":  # the optimizer factory takes other arguments than lf-multilr was written for
        trainer_utils.create_custom_optimizer = lambda model, args: None
    for stream in (sys.stdout, sys.stderr):
        print("PROBE", json.dumps([version, layout]), file=stream, flush=True)
    assert lf_multilr.apply()
    ours = sorted(t.rsplit(".", 1)[-1] for t in patches.applied() if t.startswith("llamafactory"))
    print("APPLIED", len(patches.applied()), "LLaMA-Factory:", ",".join(ours))
    for name, keys in (("STOCK ", {}), ("", {"vision_tower_lr": 1e-5}), ("CALLBACKS ", {"trainer_callbacks": CB})):
        try:
            parser.get_train_args({**args, **keys})
        except ValueError as error:
            print(f"{name}REFUSED", error)
        else:
            print(f"{name}ACCEPTED")
    lf_multilr.revert()
    lf_env.VERSION, trainer_utils.create_custom_optimizer = stock[0], stock[2]
    if stock[1] is not None:
        parser._TRAIN_MCA_ARGS = stock[1]
"""

#: Every (version, layout) the tests below fake: the installed version (every test's reference), two newer, two
#: older (one with 0.9.3's parser layout), and the installed one with a target whose shape changed.
INSTALLED = importlib.metadata.version("llamafactory")
PROBES = [
    (INSTALLED, ""),
    ("0.9.7", ""),
    ("1.0.0", ""),
    ("0.9.1", ""),
    ("0.9.3", "without _TRAIN_MCA_ARGS"),
    (INSTALLED, "changed"),
]
_VERSIONED: dict[tuple[str, str], tuple[str, list[str]]] = {}


def _probe_pieces(text: str) -> dict[tuple[str, str], str]:
    """A probe's output cut at its ``PROBE [version, layout]`` lines."""
    pieces: dict[tuple[str, str], str] = {}
    for piece in text.split("PROBE ")[1:]:
        head, _, body = piece.partition("\n")
        version, layout = json.loads(head)
        pieces[version, layout] = body
    return pieces


def versioned(env, version, layout=""):
    """What lf-multilr decides when LLaMA-Factory reports ``version`` (and has ``layout``): the probe's stdout and
    lf-multilr's lines on stderr. One interpreter fakes every (version, layout) of :data:`PROBES` in turn, reverting
    lf-multilr and LLaMA-Factory to stock between them (each decision is made afresh, as at a new start-up)."""
    if not _VERSIONED:
        result = run([PY, "-c", VERSIONED, json.dumps(PROBES)], {**env, "LF_MULTILR_DISABLE": "1"})
        assert result.returncode == 0, result.stderr[-3000:]
        stdouts, stderrs = _probe_pieces(result.stdout), _probe_pieces(result.stderr)
        assert list(stdouts) == list(stderrs) == PROBES, result.stdout[-3000:]
        for probe in PROBES:
            lines = [line for line in stderrs[probe].splitlines() if line.startswith("lf-multilr")]
            # The probe's model `x` is no folder and the hub is offline: that note is not what these tests are about.
            lines = [line for line in lines if not line.startswith("lf-multilr: the model type of `x`")]
            _VERSIONED[probe] = stdouts[probe], lines
    return _VERSIONED[version, layout]


def no_excluded_release_advised(text):
    """No message advises transformers 5.6.0, which LLaMA-Factory itself excludes (it breaks FlashAttention 2)."""
    assert "5.6.0" not in text.replace("verified on transformers 4.57.1, 5.6.0", "")


@pytest.mark.core
@pytest.mark.parametrize("version", ["0.9.7", "1.0.0"])
def test_a_newer_llamafactory_applies_every_target_that_keeps_its_shape_with_one_warning(version, env):
    real, _ = versioned(env, INSTALLED)
    stdout, lines = versioned(env, version)
    assert stdout.split("\n")[0] == real.split("\n")[0]  # the same targets applied
    assert "ACCEPTED" in stdout.split() and "STOCK ACCEPTED" in stdout
    assert lines == [  # once, although two runs were parsed
        f"lf-multilr: unverified versions: LLaMA-Factory {version} (verified: 0.9.4, 0.9.5, 0.9.6.dev0). "
        + lines[0].split(". ", 1)[1]
    ]
    assert "patch targets keep the shape lf-multilr was verified on and are applied" in lines[0]


@pytest.mark.core
@pytest.mark.parametrize(("version", "layout"), [("0.9.1", ""), ("0.9.3", "without _TRAIN_MCA_ARGS")])
def test_an_older_llamafactory_is_named_and_its_keys_refused(version, layout, env):
    """0.9.3 (transformers <= 4.52.4) has no `_TRAIN_MCA_ARGS`, which must not keep the check that refuses the keys
    from being patched in (it once did: the keys were parsed and silently ignored)."""
    stdout, lines = versioned(env, version, layout)
    parser = importlib.import_module("llamafactory.hparams.parser")
    parts = {"_TRAIN_ARGS", "get_train_args"} | {"_TRAIN_MCA_ARGS"} - ({"_TRAIN_MCA_ARGS"} if layout else set())
    parts |= {"_TRAIN_MBRIDGE_ARGS"} if hasattr(parser, "_TRAIN_MBRIDGE_ARGS") else set()  # LLaMA-Factory main
    assert f"LLaMA-Factory: {','.join(sorted(parts))}\n" in stdout  # only the keys and their checks
    refused = next(line for line in stdout.splitlines() if line.startswith("REFUSED"))
    assert refused.startswith(
        "REFUSED lf-multilr: `vision_tower_lr: 1e-05` is refused: "
        "`llamafactory.train.trainer_utils.create_custom_optimizer` (the module param groups) is not patched: "
        f"LLaMA-Factory {version} is older than the oldest release it was verified on LLaMA-Factory 0.9.4, 0.9.5, "
        "0.9.6.dev0"
    )
    assert "Fix: use a verified pair (LLaMA-Factory main with transformers 5.8.0, LLaMA-Factory 0.9.5 with" in refused
    assert "STOCK ACCEPTED" in stdout  # without a key the run is stock
    # named callbacks would never be added to the run: refused, naming the target
    callbacks = next(line for line in stdout.splitlines() if line.startswith("CALLBACKS "))
    assert callbacks.startswith(
        "CALLBACKS REFUSED lf-multilr: `trainer_callbacks: ['transformers:PrinterCallback']` is refused: "
        "`llamafactory.train.tuner._training_function` (the run's extra callbacks"
    ), callbacks
    assert [line for line in lines if "older than" in line] == [
        f"lf-multilr: LLaMA-Factory {version} is older than the oldest release lf-multilr's patches were verified "
        "on LLaMA-Factory 0.9.4, 0.9.5, 0.9.6.dev0: they stay stock and lf-multilr keys are refused (`lf-multilr "
        "doctor` lists them). Verified pairs: " + lines[-1].split("Verified pairs: ")[1]
    ]
    no_excluded_release_advised(stdout + "\n".join(lines))


@pytest.mark.core
def test_a_changed_target_is_refused_by_name_and_the_rest_still_apply(env):
    stdout, lines = versioned(env, INSTALLED, "changed")
    real, _ = versioned(env, INSTALLED)
    assert int(stdout.split()[1]) == int(real.split()[1]) - 1  # every other target applies
    assert lines == [
        "lf-multilr: not patching llamafactory.train.trainer_utils.create_custom_optimizer: on LLaMA-Factory "
        f"{importlib.metadata.version('llamafactory')} it takes (model, args) where lf-multilr expects (model, "
        "training_args, finetuning_args, ...); lf-multilr keys are refused. Verified pairs: "
        + lines[0].split("Verified pairs: ")[1]
    ]
    refused = next(line for line in stdout.splitlines() if line.startswith("REFUSED"))
    assert "`llamafactory.train.trainer_utils.create_custom_optimizer` (the module param groups) is not patched" in (
        refused
    )
    assert "STOCK ACCEPTED" in stdout
    no_excluded_release_advised(stdout + "\n".join(lines))


#: LlamaBoard's modules imported first: its entry (which imports every watched web UI module), and the runner alone
#: (which imports `locales` and `extras.ploting`, two more watched modules, in the middle of its own import).
WEBUI_FIRST = ("llamafactory.webui.interface", "llamafactory.webui.runner")

ORDERS = """
import importlib, json, sys
probe = compile(sys.argv[2], "probe", "exec")
for first in json.loads(sys.argv[1]):
    if first:  # LLaMA-Factory and lf-multilr's patches unimported again, the hook installed: a new start-up's state
        import lf_multilr
        from lf_multilr import _boot
        lf_multilr.revert()  # the hook out, and every patched name (transformers' too) back to its original
        for name in [m for m in sys.modules if m.split(".")[0] in ("llamafactory", "lf_multilr")]:
            if name != "lf_multilr._boot":
                del sys.modules[name]
        _boot.install()
        importlib.import_module(first)
    print("FIRST", first, flush=True)
    exec(probe, {})
"""


def test_any_llamafactory_module_imported_first_gets_everything_patched(env):
    """The training modules imported as a training run imports them, then each training module whose import triggers
    patching imported before anything else, and each LlamaBoard module of WEBUI_FIRST: the targets of every other
    trigger still apply when their modules come later. One interpreter: between two orders LLaMA-Factory and
    lf-multilr's patches are unimported and reverted, the hook (all that a start-up installs) kept; torch and the
    other libraries stay imported, which the hook, watching LLaMA-Factory's modules only, does not see."""
    here = [name for name in sorted(_boot.WATCHED) if importable(name) and not name.startswith("llamafactory.webui")]
    orders = ["", *here, *WEBUI_FIRST]
    result = run([PY, "-c", ORDERS, json.dumps(orders), PROBE], env)
    assert (result.returncode, result.stderr) == (0, ""), result.stderr[-3000:]
    found = {}
    for piece in result.stdout.split("FIRST ")[1:]:
        first, _, counts = piece.partition("\n")
        found[first] = counts.split()
    assert list(found) == orders, result.stdout[-3000:]
    for first, (applied, ready, wrapped) in found.items():
        if first == "llamafactory.webui.interface":  # LlamaBoard imports every web UI module
            assert (applied, ready, wrapped) == (ALL, ALL, "True"), first
        elif first.startswith("llamafactory.webui"):  # one web UI module: its targets and the training ones
            assert applied == ready and int(TRAIN) < int(applied) <= int(ALL) and wrapped == "True", first
        else:
            assert (applied, ready, wrapped) == (TRAIN, TRAIN, "True"), first or "as a training run imports them"


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
