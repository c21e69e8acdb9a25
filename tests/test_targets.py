"""The patch table is true: every target resolves, every direct importer holds the patched object after apply
and the original after revert, and no module outside the table holds a patched name."""

import importlib
import sys
import types

import pytest

import lf_multilr
from lf_multilr import patches
from lf_multilr.patches import _patching
from lf_multilr.patches.targets import TARGETS


@pytest.fixture(scope="module")
def loaded():
    for target in TARGETS:
        for module in (target.owner, *target.importers):
            try:
                importlib.import_module(module)
            except ImportError:  # an optional backend (Megatron's mcore_adapter, hyper_parallel) is not installed
                assert module.endswith(OPTIONAL), module
    assert lf_multilr.apply()
    yield
    lf_multilr.apply()


OPTIONAL = ("train.mca.workflow", "train.hyper_parallel.workflow")


def holders(obj):
    """Every loaded LLaMA-Factory / transformers module that has ``obj`` as a module attribute."""
    found = set()
    for name, module in list(sys.modules.items()):
        if isinstance(module, types.ModuleType) and name.startswith(("llamafactory", "transformers")):
            if any(value is obj for value in vars(module).values()):
                found.add(name)
    return found


def test_every_target_is_applied_with_its_original_kept(loaded):
    assert patches.applied() == [target.dotted for target in TARGETS]
    for target in TARGETS:
        _, _, current = target.resolve()
        original = _patching.original_of(target)
        assert current is not original
        if callable(original):
            assert current.__wrapped__ is original


def test_importers_hold_the_patched_name_and_the_table_misses_none(loaded):
    for target in TARGETS:
        _, name, current = target.resolve()
        for importer in target.importers:
            if importer in sys.modules:
                assert getattr(sys.modules[importer], name) is current, (target.dotted, importer)
        if "." not in target.attr:  # module-level names: nobody else may still hold the original
            assert holders(_patching.original_of(target)) == set(), target.dotted
            assert holders(current) == {target.owner, *target.importers} & sys.modules.keys(), target.dotted


def test_revert_restores_every_original_and_apply_is_idempotent(loaded):
    originals = {target.dotted: _patching.original_of(target) for target in TARGETS}
    lf_multilr.revert()
    lf_multilr.revert()
    assert patches.applied() == []
    for target in TARGETS:
        _, name, current = target.resolve()
        assert current is originals[target.dotted]
        for importer in target.importers:
            if importer in sys.modules:
                assert getattr(sys.modules[importer], name) is originals[target.dotted]
    assert lf_multilr.apply() and lf_multilr.apply()
    for target in TARGETS:
        assert target.resolve()[2] is not originals[target.dotted]
        assert _patching.original_of(target) is originals[target.dotted]


def test_each_target_is_verified_on_the_installed_version(loaded):
    import llamafactory
    import transformers

    for target in TARGETS:
        installed = transformers.__version__ if target.owner.startswith("transformers") else llamafactory.__version__
        assert installed in target.verified, target.dotted
