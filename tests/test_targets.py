"""The patch table is true: every target resolves, every direct importer holds the patched object after apply
and the original after revert, and no module outside the table holds a patched name. A target left stock on the
installed versions says why (stood in for, or a name this release does not have), and on every leg of the test
matrix each applied one is verified there: none is lost."""

import importlib
import sys
import types

import pytest

import lf_multilr
from lf_multilr import compat, patches
from lf_multilr.patches import _patching, _state
from lf_multilr.patches.targets import TARGETS

pytestmark = pytest.mark.core


@pytest.fixture(scope="module")
def loaded():
    for target in TARGETS:
        for module in (target.owner, *target.importers):
            try:
                importlib.import_module(module)
            except ImportError:  # an optional backend (Megatron's mcore_adapter, hyper_parallel) is not installed
                assert module.endswith(OPTIONAL) or target.optional, module
    assert lf_multilr.apply()
    yield
    lf_multilr.apply()


OPTIONAL = ("train.mca.workflow", "train.hyper_parallel.workflow")
#: What every verified version patches: the keys, the checks, the optimizer, the logs and plots, the scheduler.
CORE = (
    "llamafactory.hparams.parser._TRAIN_ARGS",
    "llamafactory.hparams.parser.get_train_args",
    "llamafactory.train.tuner._training_function",
    "llamafactory.train.trainer_utils.create_custom_optimizer",
    "llamafactory.train.callbacks.LogCallback.on_log",
    "llamafactory.extras.ploting.plot_loss",
    "transformers.trainer.Trainer.create_scheduler",
    "transformers.trainer.Trainer._get_learning_rate",
    "transformers.trainer.Trainer.log",
)
#: Where the gradient norm is measured: transformers 5's two methods, or 4.x's stand-ins.
GRAD_NORM = (
    ("transformers.trainer.Trainer._clip_grad_norm", "transformers.trainer.Trainer._get_grad_norm"),
    ("transformers.trainer.Trainer._inner_training_loop", "accelerate.accelerator.Accelerator.clip_grad_norm_"),
)


def applied_targets():
    return [target for target in TARGETS if _patching.is_applied(target)]


def holders(obj):
    """Every loaded LLaMA-Factory / transformers module that has ``obj`` as a module attribute."""
    found = set()
    for name, module in list(sys.modules.items()):
        if isinstance(module, types.ModuleType) and name.startswith(("llamafactory", "transformers")):
            if any(value is obj for value in vars(module).values()):
                found.add(name)
    return found


def decision(target):
    return _state.STATE.decided.get(target.dotted)


def test_every_target_is_applied_with_its_original_kept(loaded):
    assert patches.applied() == [target.dotted for target in TARGETS if decision(target) and decision(target).applies]
    assert set(CORE) <= set(patches.applied())
    assert [set(pair) <= set(patches.applied()) for pair in GRAD_NORM].count(True) == 1
    for target in applied_targets():
        _, _, current = target.resolve()
        original = _patching.original_of(target)
        assert current is not original
        if isinstance(original, type):  # a class: the keyed subclass
            assert issubclass(current, original)
        elif callable(original):
            assert current.__wrapped__ is original


def test_importers_hold_the_patched_name_and_the_table_misses_none(loaded):
    for target in applied_targets():
        _, name, current = target.resolve()
        for importer in target.importers:
            # an importer that does not bind the name in this release (0.9.5's empty v1 dpo_trainer) holds nothing
            if importer in sys.modules and hasattr(sys.modules[importer], name):
                assert getattr(sys.modules[importer], name) is current, (target.dotted, importer)
        if "." not in target.attr:  # module-level names: nobody else may still hold the original
            assert holders(_patching.original_of(target)) == set(), target.dotted
            binding = {importer for importer in target.importers if hasattr(sys.modules.get(importer), name)}
            assert holders(current) == {target.owner, *binding} & sys.modules.keys(), target.dotted


def test_revert_restores_every_original_and_apply_is_idempotent(loaded):
    targets = applied_targets()
    originals = {target.dotted: _patching.original_of(target) for target in targets}
    lf_multilr.revert()
    lf_multilr.revert()
    assert patches.applied() == []
    for target in targets:
        _, name, current = target.resolve()
        assert current is originals[target.dotted]
        for importer in target.importers:
            if importer in sys.modules and hasattr(sys.modules[importer], name):
                assert getattr(sys.modules[importer], name) is originals[target.dotted]
    assert lf_multilr.apply() and lf_multilr.apply()
    assert applied_targets() == targets
    for target in targets:
        assert target.resolve()[2] is not originals[target.dotted]
        assert _patching.original_of(target) is originals[target.dotted]


def test_each_applied_target_is_verified_on_the_installed_version(loaded):
    for target in applied_targets():
        assert decision(target).verdict is compat.Verdict.VERIFIED, (target.dotted, decision(target).status())
        assert decision(target).installed in target.verified, target.dotted


def test_each_target_left_stock_says_why_and_none_is_lost(loaded):
    expected_stock = {
        compat.Verdict.STOOD_IN,
        compat.Verdict.NOT_NEEDED,
        compat.Verdict.ABSENT,
        compat.Verdict.OLDER,
        compat.Verdict.PREDATES,
    }
    for target in TARGETS:
        if not _patching.is_applied(target):
            made = decision(target)
            if made is None and target.optional and target.owner not in sys.modules:  # a module this release lacks
                with pytest.raises(ImportError):  # (0.9.5's v1 engine has no optimizer plugin family)
                    importlib.import_module(target.owner)
                continue
            assert made is not None, target.dotted
            assert made.verdict in expected_stock and not made.broken, (target.dotted, made.status())
            if made.verdict is compat.Verdict.OLDER:  # LlamaBoard and the v1 engine on 0.9.4: verified from 0.9.5 on
                assert not target.essential and target.owner.startswith(("llamafactory.webui", "llamafactory.v1"))
            assert made.why() and made.status().startswith("stock: "), target.dotted
