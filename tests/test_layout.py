"""Group layouts: what makes optimizer state safe to move between two sets of param groups."""

from __future__ import annotations

import torch

from lf_multilr.grouping.digests import LAYOUT, describe, digest, lr_changes, mismatch


def _groups(*spec: tuple[str | None, list[str], float]) -> list[dict]:
    groups = []
    for name, names, lr in spec:
        group = {"params": [torch.zeros(1) for _ in names], "lr": lr, "initial_lr": lr}
        if name is not None:
            group.update(name=name, **{LAYOUT: digest(names)})
        groups.append(group)
    return groups


def test_same_layout_passes():
    a = _groups(("language_model/decay", ["m.a", "m.b"], 1e-5), ("vision_tower/decay", ["v.a"], 1e-6))
    b = _groups(("language_model/decay", ["m.a", "m.b"], 2e-5), ("vision_tower/decay", ["v.a"], 1e-6))
    assert mismatch(a, b) is None


def test_count_name_size_and_names_are_told_apart():
    base = _groups(("language_model/decay", ["m.a", "m.b"], 1e-5), ("vision_tower/decay", ["v.a"], 1e-6))
    fewer = _groups(("language_model/decay", ["m.a", "m.b"], 1e-5))
    assert "the checkpoint has 2 groups: language_model/decay (2), vision_tower/decay (1)" in mismatch(base, fewer)
    renamed = _groups(("language_model/decay", ["m.a", "m.b"], 1e-5), ("multi_modal_projector/decay", ["v.a"], 1e-6))
    assert "is `vision_tower/decay` in the checkpoint" in mismatch(base, renamed)
    bigger = _groups(("language_model/decay", ["m.a", "m.b", "m.c"], 1e-5), ("vision_tower/decay", ["v.a"], 1e-6))
    assert "holds 2 tensors in the checkpoint and 3" in mismatch(base, bigger)
    swapped = _groups(("language_model/decay", ["m.b", "m.a"], 1e-5), ("vision_tower/decay", ["v.a"], 1e-6))
    assert "different parameters" in mismatch(base, swapped)


def test_stock_groups_compare_by_size_only():
    stock = _groups((None, ["a", "b"], 1e-5), (None, ["c"], 1e-5))
    assert mismatch(stock, _groups((None, ["x", "y"], 1e-5), (None, ["z"], 1e-5))) is None
    assert "unnamed (2)" in describe(stock)
    ours = _groups(("language_model/decay", ["a", "b"], 1e-5), ("language_model/no_decay", ["c"], 1e-5))
    assert "is `unnamed` in the checkpoint" in mismatch(stock, ours)


def test_lr_changes_name_the_group_and_both_values():
    old = _groups(("language_model/decay", ["a"], 1e-5), ("vision_tower/decay", ["v"], 1e-6))
    new = _groups(("language_model/decay", ["a"], 1e-5), ("vision_tower/decay", ["v"], 3e-6))
    assert lr_changes(old, new) == [("vision_tower/decay", 1e-6, 3e-6)]
    assert lr_changes(old, old) == []


def test_digest_is_order_sensitive_and_stable():
    assert digest(["a", "b"]) == digest(["a", "b"]) != digest(["b", "a"])
    assert len(digest(["a"])) == 16


def test_tied_tensors_count_as_loaded_through_their_twin():
    from lf_multilr.training.resume import Account

    account = Account({"embed": 1, "lm_head": 1, "norm": 2, "extra": 3})
    account.loaded.update({"embed", "norm"})
    assert account.missing() == ["extra"]
    assert account.missing(ignored={"extra"}) == []


def test_incomplete_checkpoints_are_refused_with_key_value_why_fix():
    import pytest

    from lf_multilr.errors import ConfigError
    from lf_multilr.training.resume import Account, refuse_incomplete

    account = Account({f"w{i}": i for i in range(5)}, loaded={"w0"}, unexpected=["visual.x"])
    with pytest.raises(ConfigError) as refused:
        refuse_incomplete("ckpt", account)
    message = str(refused.value)
    assert message.startswith("lf-multilr: `resume_from_checkpoint: 'ckpt'` is refused")
    assert "4 of the model's 5 tensors are not filled from it (w1, w2, w3, ... (4 in all))" in message
    assert "1 of its tensors match nothing in the model (visual.x)" in message and "Fix: " in message
    refuse_incomplete("ckpt", Account({"w0": 0}, loaded={"w0"}))  # complete: no error


ROLES = ("decay", "no_decay")


def test_the_lr_message_names_each_changed_module_once():
    from lf_multilr.training.resume import lr_message

    saved = [{"name": f"vision_tower/{role}", "module": "vision_tower", "initial_lr": 1e-4} for role in ROLES]
    now = [{**group, "initial_lr": 3e-4} for group in saved]
    changes = lr_changes(saved, now)
    assert changes == [("vision_tower", 1e-4, 3e-4)] * 2  # one per group, named by module
    message = lr_message("ckpt", changes)
    assert message.count("vision_tower") == 1 and "vision_tower: 1.000e-04 (config: 3.000e-04)" in message
    assert lr_message("ckpt", []) is None
