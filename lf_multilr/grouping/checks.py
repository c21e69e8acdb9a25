"""What a group plan must hold before it trains, and where LLaMA-Factory's freeze flags and the modules disagree."""

from __future__ import annotations

from collections.abc import Sequence

from lf_multilr.config.checks import ADAPTER_TYPES, frozen_fix
from lf_multilr.config.keys import key_name
from lf_multilr.errors import ConfigError
from lf_multilr.grouping.placement import normalize
from lf_multilr.grouping.plan import GroupPlan, SupplementUse
from lf_multilr.modules import OTHER


def _registry_part(plan: GroupPlan, module: str) -> tuple[int, int]:
    """(tensors, trainable tensors) of ``module`` that the registry's keys placed, i.e. without the supplement's."""
    row = plan.rows[module]
    uses = [use for use in plan.supplement if use.module == module]
    return (
        row.tensors - sum(use.tensors for use in uses),
        row.trainable_tensors - sum(use.trainable_tensors for use in uses),
    )


def _gap_warning(plan: GroupPlan, use: SupplementUse) -> str | None:
    """Trainable tensors of a module that its freeze flag cannot reach, where the rest of the module is frozen."""
    module, keys = use.module, ", ".join(use.keys)
    rest, rest_trainable = _registry_part(plan, module)
    flag = plan.module_map.table[module].freeze_flag
    if module in use.registry or not use.trainable_tensors or rest_trainable or flag is None:
        return None
    if rest == 0:
        registry_keys = ", ".join(plan.module_map.keys[module])
        return (
            f"{use.trainable_tensors} {module} tensors train whatever `{flag}` says: LLaMA-Factory's registry keys "
            f"for `{plan.model_type}` ({registry_keys}) match none of them ({keys})."
        )
    return (
        f"{use.trainable_tensors} {module} tensors still train although the rest of the {module} is frozen "
        f"(`{flag}: true`): LLaMA-Factory's registry keys for `{plan.model_type}` miss them ({keys}), "
        "so the flag does not reach them."
    )


def _overlap_warning(plan: GroupPlan, use: SupplementUse) -> str | None:
    """Frozen tensors of a module that another module's freeze flag froze, where the rest of the module trains."""
    table = plan.module_map.table
    others = [module for module in use.registry if module != use.module and table[module].freeze_flag]
    frozen = use.tensors - use.trainable_tensors
    if not others or not frozen or not _registry_part(plan, use.module)[1]:
        return None
    flags = " or ".join(f"`{table[module].freeze_flag}: true`" for module in others)
    return (
        f"{frozen} {use.module} tensors are frozen although the rest of the {use.module} trains: LLaMA-Factory's "
        f"registry also counts them as {' and '.join(others)} ({', '.join(use.keys)}), so {flags} froze them."
    )


def registry_gap_warnings(plan: GroupPlan, finetuning_type: str) -> list[str]:
    """Where LLaMA-Factory's freeze flags and lf-multilr's modules disagree in a full fine-tuning run.

    Only full fine-tuning is judged: there the flags alone decide what trains, so a module that is partly frozen
    shows the flag's reach. (LoRA and freeze tuning freeze base weights for reasons of their own.)
    """
    if finetuning_type != "full":
        return []
    found = [warning(plan, use) for use in plan.supplement for warning in (_gap_warning, _overlap_warning)]
    return [warning for warning in found if warning is not None]


def check_modules(plan: GroupPlan, finetuning_type: str) -> None:
    """Refuse keys (of the settings the plan was built from) that set a module with nothing to train in the model the
    plan was built from: the model that steps, or LLaMA-Factory's prepared model on the meta device before the
    weights load."""
    settings = plan.settings
    method = ADAPTER_TYPES.get(finetuning_type)
    for module in settings.table.by_order:
        row, keys = plan.rows[module.name], settings.explicit(module.name)
        if not keys or row.trainable:
            continue
        key = keys[0]
        keys_text = ", ".join(plan.module_map.keys_of(module.name))
        if row.tensors == 0:
            raise ConfigError(
                key,
                settings.values[key],
                f"model type `{plan.model_type}` has no {module.name}: its keys (LLaMA-Factory's registry, "
                f"lf-multilr's supplement: {keys_text}) match none of its parameters",
                "remove the key",
            )
        why = (
            f"the {module.name} is frozen in this run ({row.tensors} tensors, none trainable)"
            if method is None
            else f"the {module.name} has nothing trainable in this run: {method} put no adapter on it and "
            f"`additional_target` copies none of it ({row.tensors} frozen tensors)"
        )
        raise ConfigError(
            key,
            settings.values[key],
            f"{why}, so its value would do nothing",
            f"{frozen_fix(module, finetuning_type)}, or remove the key",
        )


def check_plan(plan: GroupPlan, finetuning_type: str) -> None:
    """Refuse keys (of the settings the plan was built from) that set a module with nothing to train, or a custom
    group that matches nothing trainable; add warnings for legal but costly choices."""
    check_modules(plan, finetuning_type)
    settings = plan.settings
    modules = settings.table.by_order
    for index, custom in enumerate(settings.groups):
        matched = plan.rows.get(custom.name)
        if matched is None or not matched.trainable:
            raise ConfigError(
                f"lr_groups[{index}].params",
                custom.pattern.pattern,
                f"it matches no trainable parameter of this run ({matched.tensors if matched else 0} frozen "
                "tensors matched)",
                "check the pattern against `lf-multilr plan` or the model's parameter names (without the PEFT "
                "prefix `base_model.model.`), and that the parameters it means are not frozen",
            )
    for module in modules:
        row, name = plan.rows[module.name], key_name(module.name, "lr")
        if row.trainable and row.lr == 0 and settings.values[name] is not None:
            cheaper = f"`{module.freeze_flag}: true` is cheaper" if module.freeze_flag else "freezing it is cheaper"
            plan.warnings.append(
                f"{name} is 0: the {module.name} is held still but still costs gradients and optimizer state; "
                f"{cheaper}."
            )
    if plan.rows[OTHER].trainable:
        shown = ", ".join(plan.other_names[:3]) + (", ..." if len(plan.other_names) > 3 else "")
        plan.warnings.append(
            f"{plan.rows[OTHER].trainable_tensors} trainable tensors belong to no module and train at "
            f"learning_rate / weight_decay in group `other` ({shown})."
        )
    plan.warnings.extend(registry_gap_warnings(plan, finetuning_type))


def badam_ratio_warnings(plan: GroupPlan, names: Sequence[str]) -> list[str]:
    """What BAdam's ratio mode (``BlockOptimizerRatio`` as LLaMA-Factory builds it) does that the keys cannot change:
    it freezes its first tensor named ``*embed*`` and its first named ``*lm_head*`` itself (``names``: the model's
    parameter names in order), whatever their module's LR, and its sparse Adam step applies no weight decay."""
    found = []
    for key in ("embed", "lm_head"):
        name = next((name for name in names if key in name), None)
        if name is not None:
            module = plan.module_map.placement(name).module
            found.append(
                f"BAdam's ratio mode freezes `{normalize(name)}` ({module}) itself, as the first tensor named "
                f"*{key}*: it does not train, whatever the {module}'s LR."
            )
    decays = [key for key in plan.settings.set_keys() if key.endswith("_weight_decay")]
    if decays:
        found.append(f"BAdam's ratio mode applies no weight decay: {', '.join(decays)} do nothing.")
    return found
