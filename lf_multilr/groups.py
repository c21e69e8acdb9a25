"""Param groups: one set per module, split inside each module the way the replaced path splits.

The default path (HF's) splits a module into decay / no-decay by HF's decay-name rule. With LoRA+
(``loraplus_lr_ratio``) each module is split the way LLaMA-Factory's LoRA+ optimizer splits the whole model:
``lora_A`` (and everything else) at the module's LR, ``lora_B`` and 1-D tensors at LR x ratio, LoRA embedding
B matrices at ``loraplus_lr_embedding``. Every trainable parameter lands in exactly one group, frozen ones in
none, and no group is empty. The plan records the parameters lf-multilr's supplement placed, because the
registry's keys miss or misplace them.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from .custom_groups import CustomGroup
from .errors import ConfigError
from .keys import FREEZE_FLAG, MODULES, OTHER, Settings, frozen_fix
from .layers import EMBEDDINGS, HEAD, decay_scale, depths
from .layout import LAYOUT, digest
from .modules import ModuleMap, Placement, normalize
from .supplement import Rule

ORDER: tuple[str, ...] = (*MODULES, OTHER)


@dataclass(frozen=True)
class LoraPlus:
    """LoRA+ settings as LLaMA-Factory takes them."""

    ratio: float
    embedding_lr: float


@dataclass
class ModuleRow:
    """What one module holds and what it trains at."""

    module: str
    lr: float
    weight_decay: float
    tensors: int = 0
    params: int = 0
    trainable_tensors: int = 0
    trainable_params: int = 0

    @property
    def trainable(self) -> bool:
        return self.trainable_tensors > 0


@dataclass
class SupplementUse:
    """The parameters one supplement rule placed in a run (see :mod:`.supplement`)."""

    rule: Rule
    #: The modules LLaMA-Factory's registry gives these names (what its ``freeze_*`` flags act on).
    registry: tuple[str, ...]
    names: list[str] = field(default_factory=list)
    params: int = 0
    trainable_tensors: int = 0

    @property
    def module(self) -> str:
        return self.rule.module

    @property
    def tensors(self) -> int:
        return len(self.names)

    @property
    def keys(self) -> tuple[str, ...]:
        """The rule's keys that matched a name in this run."""
        return tuple(key for key in self.rule.keys if any(key in name for name in self.names))


@dataclass
class GroupPlan:
    """The param groups for an optimizer and the per-module account of them."""

    module_map: ModuleMap
    rows: dict[str, ModuleRow]
    param_groups: list[dict[str, Any]]
    other_names: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    #: What the supplement decided, one entry per rule (and registry answer) in first-seen order.
    supplement: list[SupplementUse] = field(default_factory=list)
    #: Schedules and layer decay, one line each, for the table.
    notes: list[str] = field(default_factory=list)

    @property
    def model_type(self) -> str:
        return self.module_map.model_type

    @property
    def frozen(self) -> tuple[int, int]:
        """(tensors, parameters) that train in no group."""
        rows = self.rows.values()
        return (
            sum(r.tensors - r.trainable_tensors for r in rows),
            sum(r.params - r.trainable_params for r in rows),
        )


def numel(param: torch.Tensor) -> int:
    """Element count, the full one under DeepSpeed ZeRO-3 where ``param`` holds only a shard."""
    return int(getattr(param, "ds_numel", 0) or param.numel())


def _supplement_use(
    uses: dict[tuple[Rule, tuple[str, ...]], SupplementUse], placement: Placement, name: str, size: int
) -> SupplementUse | None:
    """Count ``name`` under the supplement rule that placed it; None when the registry's keys placed it."""
    if placement.rule is None:
        return None
    use = uses.setdefault((placement.rule, placement.registry), SupplementUse(placement.rule, placement.registry))
    use.names.append(name)
    use.params += size
    return use


def _role(
    name: str, param: torch.Tensor, decay: Collection[str], loraplus: LoraPlus | None
) -> tuple[str, float | None, bool]:
    """(role, lr scale or None for an absolute lr, whether weight decay applies)."""
    if loraplus is None:
        return ("decay", 1.0, True) if name in decay else ("no_decay", 1.0, False)
    if "lora_embedding_B" in name:
        return "embedding", None, True
    if "lora_B" in name or param.ndim == 1:
        return ("lora_b", loraplus.ratio, True) if name in decay else ("lora_b_nodecay", loraplus.ratio, False)
    return "lora_a", 1.0, True


def _layer_scales(
    names: list[str], placements: list[Placement], decay: float | None, model_type: str
) -> dict[int, tuple[float, str]]:
    """Per position of a vision-tower parameter, its layer-decay factor and a tag (``vision_tower_lr_layer_decay``)."""
    if decay is None:
        return {}
    positions = [i for i, placement in enumerate(placements) if placement.module == "vision_tower"]
    found, blocks = depths([normalize(names[i]) for i in positions])
    if blocks == 0:
        raise ConfigError(
            "vision_tower_lr_layer_decay",
            decay,
            f"the vision tower of model type `{model_type}` has no numbered blocks to decay over",
            "remove the key (or set a single `vision_tower_lr`)",
        )
    tags = {EMBEDDINGS: "embeddings", HEAD: "head"}
    return {
        position: (decay_scale(depth, blocks, decay), tags.get(depth, f"block{depth}"))
        for position, depth in zip(positions, found, strict=True)
    }


def _custom_row(
    rows: dict[str, ModuleRow], custom: CustomGroup, module: str, resolved: dict[str, tuple[float, float]]
) -> ModuleRow:
    """The row of a custom group; unset lr / weight decay inherit from the module that owns its parameters."""
    lr, wd = resolved[module]
    inherited = (lr if custom.lr is None else custom.lr, wd if custom.weight_decay is None else custom.weight_decay)
    row = rows.get(custom.name)
    if row is None:
        row = rows[custom.name] = ModuleRow(custom.name, *inherited)
    elif (row.lr, row.weight_decay) != inherited:
        raise ConfigError(
            "lr_groups",
            custom.name,
            f"group `{custom.name}` matches parameters of modules with different LRs or weight decays, "
            "so it cannot inherit both",
            f"give group `{custom.name}` its own `lr` and `weight_decay`, or narrow its `params`",
        )
    return row


def build_plan(
    named_parameters: Iterable[tuple[str, torch.Tensor]],
    module_map: ModuleMap,
    settings: Settings,
    learning_rate: float,
    weight_decay: float,
    decay_names: Collection[str],
    loraplus: LoraPlus | None = None,
    sizes: Mapping[int, int] | None = None,
) -> GroupPlan:
    """Group every trainable parameter by module (or custom group), role and vision block; see the docstring.

    ``sizes`` gives full element counts by ``id`` where a parameter holds only this rank's piece (FSDP1).
    """
    named = list(named_parameters)
    names = [name for name, _ in named]
    placements = [module_map.placement(name) for name in names]
    layers = _layer_scales(names, placements, settings.values.get("vision_tower_lr_layer_decay"), module_map.model_type)
    resolved = settings.resolve(learning_rate, weight_decay)
    rows = {module: ModuleRow(module, *resolved[module]) for module in MODULES}
    custom_rows: dict[str, ModuleRow] = {}
    rows_other = ModuleRow(OTHER, *resolved[OTHER])
    buckets: dict[tuple[Any, ...], dict[str, Any]] = {}
    other_names: list[str] = []
    uses: dict[tuple[Rule, tuple[str, ...]], SupplementUse] = {}
    trainable_ids: set[int] = set()
    for position, ((name, param), placement) in enumerate(zip(named, placements, strict=True)):
        module = placement.module
        size = sizes[id(param)] if sizes and id(param) in sizes else numel(param)
        use = _supplement_use(uses, placement, name, size)
        custom = next((group for group in settings.groups if group.matches(normalize(name))), None)
        if custom is not None:
            row = _custom_row(custom_rows, custom, module, resolved)
        else:
            row = rows_other if module == OTHER else rows[module]
        row.tensors += 1
        row.params += size
        if not param.requires_grad:
            continue
        row.trainable_tensors += 1
        row.trainable_params += size
        if use is not None:
            use.trainable_tensors += 1
        trainable_ids.add(id(param))
        if row is rows_other:
            other_names.append(name)
        role, scale, decays = _role(name, param, decay_names, loraplus)
        layer, tag = (1.0, "") if custom is not None else layers.get(position, (1.0, ""))
        start, warmup = settings.schedule(module) if module != OTHER else (0, None)
        key = (row.module, role, tag, start, warmup)
        bucket = buckets.get(key)
        if bucket is None:
            lr_scale = None if scale is None else scale * layer
            lr = loraplus.embedding_lr if lr_scale is None and loraplus is not None else row.lr * (lr_scale or 1.0)
            bucket = buckets[key] = {
                "params": [],
                "lr": lr,
                "weight_decay": row.weight_decay if decays else 0.0,
                "module": row.module,
                "name": "/".join(part for part in (row.module, role, tag) if part),
                "lr_scale": lr_scale,
            }
            if start or warmup:
                bucket.update(start_step=start, warmup_steps=warmup)
        bucket["params"].append(param)
        bucket.setdefault("_names", []).append(normalize(name))

    customs = {group.name: custom_rows[group.name] for group in settings.groups if group.name in custom_rows}
    rows = {**rows, **customs, OTHER: rows_other}
    rank = {name: i for i, name in enumerate(rows)}
    roles = ("decay", "no_decay", "lora_a", "lora_b", "lora_b_nodecay", "embedding")
    param_groups = sorted(buckets.values(), key=lambda g: (rank[g["module"]], roles.index(g["name"].split("/")[1])))
    for group in param_groups:
        group[LAYOUT] = digest(group.pop("_names"))
    grouped = [id(p) for group in param_groups for p in group["params"]]
    if len(grouped) != len(set(grouped)) or set(grouped) != trainable_ids:
        raise RuntimeError("lf-multilr: internal error: a trainable parameter is not in exactly one param group")
    plan = GroupPlan(module_map, rows, param_groups, other_names, supplement=list(uses.values()))
    plan.notes = _notes(plan, settings, layers)
    return plan


def _notes(plan: GroupPlan, settings: Settings, layers: dict[int, tuple[float, str]]) -> list[str]:
    notes = []
    for module in MODULES:
        start, warmup = settings.schedule(module)
        if plan.rows[module].trainable and (start or warmup):
            ramp = f", then rises linearly over {warmup} steps" if warmup else ""
            notes.append(f"{module}: LR 0 before optimizer step {start}{ramp} (times the run's schedule)")
    decay = settings.values.get("vision_tower_lr_layer_decay")
    if decay is not None and layers:
        lr = plan.rows["vision_tower"].lr
        by_tag = {tag: scale for scale, tag in layers.values()}
        blocks = sum(tag.startswith("block") for tag in by_tag)
        ends = ("embeddings", "block0", f"block{blocks - 1}")
        shown = ", ".join(f"{tag} {lr * by_tag[tag]:.3e}" for tag in ends if tag in by_tag)
        notes.append(f"vision_tower: layer-wise decay {decay:g} over {blocks} blocks: {shown}, head {lr:.3e}")
    return notes


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
    if module in use.registry or not use.trainable_tensors or rest_trainable:
        return None
    flag = FREEZE_FLAG[module]
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
    others = [module for module in use.registry if module != use.module]
    frozen = use.tensors - use.trainable_tensors
    if not others or not frozen or not _registry_part(plan, use.module)[1]:
        return None
    flags = " or ".join(f"`{FREEZE_FLAG[module]}: true`" for module in others)
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


def check_plan(plan: GroupPlan, settings: Settings, finetuning_type: str) -> None:
    """Refuse keys that set a module with nothing to train; add warnings for legal but costly choices."""
    for module in MODULES:
        row, keys = plan.rows[module], settings.explicit(module)
        if not keys or row.trainable:
            continue
        key = keys[0]
        keys_text = ", ".join(plan.module_map.keys_of(module))
        if row.tensors == 0:
            raise ConfigError(
                key,
                settings.values[key],
                f"model type `{plan.model_type}` has no {module}: its keys (LLaMA-Factory's registry, lf-multilr's "
                f"supplement: {keys_text}) match none of its parameters",
                "remove the key",
            )
        raise ConfigError(
            key,
            settings.values[key],
            f"the {module} is frozen in this run ({row.tensors} tensors, none trainable), "
            "so its value would do nothing",
            f"{frozen_fix(module, finetuning_type)}, or remove the key",
        )
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
    for module in MODULES:
        row = plan.rows[module]
        if row.trainable and row.lr == 0 and settings.values[f"{module}_lr"] is not None:
            plan.warnings.append(
                f"{module}_lr is 0: the {module} is held still but still costs gradients and optimizer state; "
                f"`{FREEZE_FLAG[module]}: true` is cheaper."
            )
    if plan.rows[OTHER].trainable:
        shown = ", ".join(plan.other_names[:3]) + (", ..." if len(plan.other_names) > 3 else "")
        plan.warnings.append(
            f"{plan.rows[OTHER].trainable_tensors} trainable tensors belong to no module and train at "
            f"learning_rate / weight_decay in group `other` ({shown})."
        )
    plan.warnings.extend(registry_gap_warnings(plan, finetuning_type))
