"""The group plan: every trainable parameter in one param group, by module (or custom group), role and block.

The default path (HF's) splits a module into decay / no-decay by HF's decay-name rule. With LoRA+
(``loraplus_lr_ratio``) each module is split the way LLaMA-Factory's LoRA+ optimizer splits the whole model:
``lora_A`` (and everything else) at the module's LR, ``lora_B`` and 1-D tensors at LR x ratio, LoRA embedding
B matrices at ``loraplus_lr_embedding``. With LLaMA-Factory's Muon (``use_muon``) each module is split the way its
``_create_muon_optimizer`` splits the whole model: 2-D matrices but embeddings and ``lm_head`` (by name) step with
Muon, the rest with Muon's internal AdamW, and every tensor decays. Every trainable parameter lands in exactly one
group, frozen ones in none, and no group is empty. The plan records the parameters lf-multilr's supplement placed,
because the registry's keys miss or misplace them.

:func:`build_plan` runs the steps in order: :func:`place` each parameter (module, custom group, size),
:func:`count` them into the rows of the table, give each trainable one its :func:`role` and its layer-decay
:func:`blocks` factor (each stack of a module with ``<module>_lr_layer_decay`` counted on its own, :mod:`.blocks`),
:func:`bucket` them into groups, :func:`order` the groups, and :func:`check_exactly_once`.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import torch

from lf_multilr.config.custom_groups import CustomGroup
from lf_multilr.config.keys import key_name
from lf_multilr.config.settings import Settings
from lf_multilr.errors import ConfigError
from lf_multilr.grouping.blocks import Stack, locate, scale
from lf_multilr.grouping.digests import digest
from lf_multilr.grouping.placement import ModuleMap, Placement, normalize
from lf_multilr.grouping.schema import ModuleGroup
from lf_multilr.grouping.supplement import Rule, positions_for
from lf_multilr.modules import OTHER, Table

#: Roles inside a module, in group order.
ROLES: tuple[str, ...] = ("decay", "no_decay", "lora_a", "lora_b", "lora_b_nodecay", "embedding")
ROLES += ("muon", "adamw", "galore", "apollo")


@dataclass(frozen=True)
class LoraPlus:
    """LoRA+ settings as LLaMA-Factory takes them."""

    ratio: float
    embedding_lr: float


@dataclass(frozen=True)
class MuonSplit:
    """LLaMA-Factory's Muon (``use_muon``): which tensors its ``_create_muon_optimizer`` hands to Muon, the rest going
    to Muon's internal AdamW. That class decays every tensor (its one ``wd``), so every role here decays."""

    #: The table's line for it.
    describe = "use_muon: LLaMA-Factory's Muon steps the 2-D matrices (not embeddings or lm_head), its AdamW the rest"

    @staticmethod
    def uses_muon(name: str, tensor: torch.Tensor) -> bool:
        """LLaMA-Factory's rule, on the name as the model's ``named_parameters()`` gives it: a 2-D tensor whose name
        has neither ``embed`` nor ``lm_head``."""
        return tensor.ndim == 2 and "embed" not in name and "lm_head" not in name


@dataclass(frozen=True)
class Projected:
    """GaLore or APOLLO (LLaMA-Factory's ``use_galore`` / ``use_apollo``, or HF's ``optim: galore_*`` / ``apollo_*``):
    the tensors it projects (``kind``: galore or apollo; named as the model's ``named_parameters()`` gives them) form a
    role of their own, which carries the projection's settings; the rest split into decay / no-decay by the decay names
    given. LLaMA-Factory's projected tensors decay; HF's build applies no weight decay at all (``decays`` False)."""

    kind: str
    names: frozenset[str]
    decays: bool = True


#: How each module is split into roles: HF's decay split (None), LoRA+'s, Muon's, or GaLore's / APOLLO's.
Split = LoraPlus | MuonSplit | Projected | None


@dataclass
class ModuleRow:
    """What one module (or custom group) holds and what it trains at."""

    module: str
    lr: float
    weight_decay: float
    #: The LR it decays to (``<module>_min_lr``, an ``lr_groups`` entry's own or inherited ``min_lr``), or None.
    min_lr: float | None = None
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
    """The param groups for an optimizer, the per-module account of them, and the settings they were built from."""

    module_map: ModuleMap
    settings: Settings
    rows: dict[str, ModuleRow]
    param_groups: list[ModuleGroup]
    other_names: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    #: What the supplement decided, one entry per rule (and registry answer) in first-seen order.
    supplement: list[SupplementUse] = field(default_factory=list)
    #: Schedules and layer decay, one line each, for the table.
    notes: list[str] = field(default_factory=list)
    #: Each grouped tensor's parameter name as ``named_parameters()`` gives it, wrapper prefixes removed (by ``id``).
    tensor_names: dict[int, str] = field(default_factory=dict)
    #: How each module was split into roles (:data:`Split`).
    split: Split = None

    def names_of(self, group: ModuleGroup) -> list[str]:
        """The parameter names of ``group``'s tensors, in the group's order."""
        return [self.tensor_names[id(tensor)] for tensor in group["params"]]

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


@dataclass
class Param:
    """One parameter on its way into a group."""

    name: str
    tensor: torch.Tensor
    placement: Placement
    #: The custom group (``lr_groups``) whose pattern matched first, if any.
    custom: CustomGroup | None
    size: int

    @property
    def module(self) -> str:
        return self.placement.module

    @property
    def row(self) -> str:
        """The table row (and group ``module``) it counts in: its custom group, else its module."""
        return self.custom.name if self.custom is not None else self.module


@dataclass(frozen=True)
class Role:
    """How a parameter trains inside its module: its role, its LR relative to the module's (None: an LR of its
    own), and whether weight decay applies."""

    name: str
    scale: float | None
    decays: bool


def place(
    named: Sequence[tuple[str, torch.Tensor]],
    module_map: ModuleMap,
    groups: Sequence[CustomGroup],
    sizes: Mapping[int, int] | None,
) -> list[Param]:
    """Each parameter's module, first matching custom group and full size (``sizes`` by ``id`` where a parameter
    holds only this rank's piece, as under FSDP1)."""
    placed = []
    for name, tensor in named:
        normalized = normalize(name)
        custom = next((group for group in groups if group.matches(normalized)), None)
        size = sizes[id(tensor)] if sizes and id(tensor) in sizes else numel(tensor)
        placed.append(Param(name, tensor, module_map.placement(name), custom, size))
    return placed


def rows_for(
    settings: Settings, learning_rate: float, weight_decay: float, params: Sequence[Param]
) -> dict[str, ModuleRow]:
    """The table's rows: the modules in table order, the custom groups that matched, then ``other``. A custom
    group's unset LR and weight decay inherit from the module that owns its parameters, which must then be one; its
    unset floor keeps that module's ratio of floor to LR."""
    resolved = settings.resolve(learning_rate, weight_decay)
    rows = {
        row.name: ModuleRow(row.name, *resolved[row.name], settings.floor(row.name)) for row in settings.table.by_order
    }
    for index, custom in enumerate(settings.groups):
        owners = {param.module for param in params if param.custom is custom}
        inherited = {
            (
                resolved[owner][0] if custom.lr is None else custom.lr,
                resolved[owner][1] if custom.weight_decay is None else custom.weight_decay,
            )
            for owner in owners
        }
        if len(inherited) > 1:
            raise ConfigError(
                "lr_groups",
                custom.name,
                f"group `{custom.name}` matches parameters of modules with different LRs or weight decays, "
                "so it cannot inherit both",
                f"give group `{custom.name}` its own `lr` and `weight_decay`, or narrow its `params`",
            )
        if inherited:
            lr, decay = inherited.pop()
            rows[custom.name] = ModuleRow(custom.name, lr, decay, custom_floor(index, custom, lr, owners, rows))
    rows[OTHER] = ModuleRow(OTHER, *resolved[OTHER])
    return rows


def custom_floor(
    index: int, custom: CustomGroup, lr: float, owners: Collection[str], rows: Mapping[str, ModuleRow]
) -> float | None:
    """A custom group's floor: its own ``min_lr`` (at most its LR), else its modules' ratio of floor to LR (their
    floor itself where it inherits their LR), else None."""
    where = f"lr_groups[{index}].min_lr"
    if custom.min_lr is not None:
        if custom.min_lr > lr:
            raise ConfigError(
                where,
                custom.min_lr,
                f"it is above the LR {lr:g} that group `{custom.name}` inherits from its module, and a floor is what "
                "the LR decays to",
                f"give a `min_lr` of at most {lr:g}, or give the group an `lr` of its own",
            )
        return custom.min_lr
    floors = [inherited_floor(rows.get(owner), custom.lr is None, lr) for owner in sorted(owners)]
    first = floors[0] if floors else None
    if any((floor is None) != (first is None) or (floor != first and not _close(floor, first)) for floor in floors):
        raise ConfigError(
            "lr_groups",
            custom.name,
            f"group `{custom.name}` matches parameters of modules with different floors (`<module>_min_lr`), so it "
            "cannot inherit both",
            f"give group `{custom.name}` its own `min_lr`, or narrow its `params`",
        )
    return first


def inherited_floor(owner: ModuleRow | None, same_lr: bool, lr: float) -> float | None:
    """The floor a custom group at ``lr`` inherits from the module row ``owner``: the module's floor where it has the
    module's LR (``same_lr``), else the same fraction of its own LR; None where the module has no floor."""
    if owner is None or owner.min_lr is None:
        return None
    if same_lr:
        return owner.min_lr
    return owner.min_lr / owner.lr * lr if owner.lr > 0 else None  # a module held at 0 has no ratio to keep


def _close(a: float | None, b: float | None) -> bool:
    return a is not None and b is not None and math.isclose(a, b, rel_tol=1e-12, abs_tol=0.0)


def count(params: Sequence[Param], rows: Mapping[str, ModuleRow]) -> list[SupplementUse]:
    """Count every parameter into its row; the supplement rules' shares, in first-seen order."""
    uses: dict[tuple[Rule, tuple[str, ...]], SupplementUse] = {}
    for param in params:
        row = rows[param.row]
        row.tensors += 1
        row.params += param.size
        trainable = param.tensor.requires_grad
        row.trainable_tensors += trainable
        row.trainable_params += param.size if trainable else 0
        rule = param.placement.rule
        if rule is not None:
            use = uses.setdefault((rule, param.placement.registry), SupplementUse(rule, param.placement.registry))
            use.names.append(param.name)
            use.params += param.size
            use.trainable_tensors += trainable
    return list(uses.values())


def role(param: Param, decay: Collection[str], split: Split) -> Role:
    """The role of a trainable parameter: HF's decay split, or LLaMA-Factory's LoRA+ or Muon split."""
    name = param.name
    if isinstance(split, Projected) and name in split.names:
        return Role(split.kind, 1.0, split.decays)
    if split is None or isinstance(split, Projected):
        return Role("decay", 1.0, True) if name in decay else Role("no_decay", 1.0, False)
    if isinstance(split, MuonSplit):
        return Role("muon", 1.0, True) if split.uses_muon(name, param.tensor) else Role("adamw", 1.0, True)
    loraplus = split
    if "lora_embedding_B" in name:
        return Role("embedding", None, True)
    if "lora_B" in name or param.tensor.ndim == 1:
        return Role("lora_b", loraplus.ratio, True) if name in decay else Role("lora_b_nodecay", loraplus.ratio, False)
    return Role("lora_a", 1.0, True)


@dataclass(frozen=True)
class Decay:
    """One module's layer-wise decay: its stacks, and per index into the params of one of its tensors outside the
    custom groups, the tensor's factor and block tag (``block3``, ``embeddings``, ``head``; after the stack's name
    where the module holds several stacks: ``audio_tower/block3``)."""

    decay: float
    stacks: tuple[Stack, ...]
    factors: dict[int, tuple[float, str]]


def blocks(params: Sequence[Param], settings: Settings, model_type: str) -> dict[str, Decay]:
    """Per module with a layer-wise decay set (``<module>_lr_layer_decay``), its stacks and the factor and block tag
    of each of its parameters (:mod:`.blocks`: each stack of the module counted on its own). Parameters of custom
    groups keep their group's LR."""
    found: dict[str, Decay] = {}
    rules = positions_for(model_type)
    for module in settings.table.rows:
        name = key_name(module.name, "layer_decay")
        decay = settings.values.get(name) if "layer_decay" in module.kinds else None
        if decay is None:
            continue
        positions = [i for i, param in enumerate(params) if param.module == module.name]
        where, stacks = locate([normalize(params[i].name) for i in positions], rules)
        if not stacks:
            raise ConfigError(
                name,
                decay,
                f"the {module.noun} of model type `{model_type}` has no numbered blocks to decay over",
                f"remove the key (or set a single `{key_name(module.name, 'lr')}`)",
            )
        found[module.name] = Decay(
            decay,
            tuple(stacks),
            {
                position: (scale(place, stacks, decay), place.tag(stacks))
                for position, place in zip(positions, where, strict=True)
                if params[position].custom is None
            },
        )
    return found


def bucket(
    params: Sequence[Param],
    rows: Mapping[str, ModuleRow],
    settings: Settings,
    decay: Collection[str],
    split: Split,
    layers: Mapping[int, tuple[float, str]],
) -> list[ModuleGroup]:
    """The trainable parameters in groups: one per row, role, layer-decay block and schedule."""
    groups: dict[tuple[str, str, str, int, int | None], ModuleGroup] = {}
    names: dict[int, list[str]] = {}
    for position, param in enumerate(params):
        if not param.tensor.requires_grad:
            continue
        row, kind = rows[param.row], role(param, decay, split)
        layer, tag = layers.get(position, (1.0, ""))
        start, warmup = schedule(param, settings)
        key = (row.module, kind.name, tag, start, warmup)
        group = groups.get(key)
        if group is None:
            scale = None if kind.scale is None else kind.scale * layer
            own = split.embedding_lr if isinstance(split, LoraPlus) else row.lr
            lr = row.lr * scale if scale is not None else own
            group = groups[key] = ModuleGroup(
                params=[],
                lr=lr,
                weight_decay=row.weight_decay if kind.decays else 0.0,
                name="/".join(part for part in (row.module, kind.name, tag) if part),
                module=row.module,
                role=kind.name,
                layout="",
                lr_scale=scale,
            )
            if start or warmup:
                group["start_step"], group["warmup_steps"] = start, warmup
            if row.min_lr is not None:  # the same fraction of the group's LR as the row's floor of the row's LR
                group["min_lr"] = (
                    row.min_lr * scale if scale is not None else lr * row.min_lr / row.lr if row.lr else 0.0
                )
            names[id(group)] = []
        group["params"].append(param.tensor)
        names[id(group)].append(normalize(param.name))
    for group in groups.values():
        group["layout"] = digest(names[id(group)])
    return list(groups.values())


def schedule(param: Param, settings: Settings) -> tuple[int, int | None]:
    """A parameter's (start step, warm-up steps or None): its custom group's own, else its module's."""
    start, warmup = settings.schedule(param.module) if param.module != OTHER else (0, None)
    custom = param.custom
    if custom is None:
        return start, warmup
    return (
        start if custom.start_step is None else custom.start_step,
        warmup if custom.warmup_steps is None else custom.warmup_steps,
    )


def order(groups: Sequence[ModuleGroup], rows: Mapping[str, ModuleRow]) -> list[ModuleGroup]:
    """Rows in table order (the language model first: HF logs group 0 as ``learning_rate``), roles in
    :data:`ROLES` order; groups of one row and role keep the order they were met in."""
    rank = {name: i for i, name in enumerate(rows)}
    return sorted(groups, key=lambda group: (rank[group["module"]], ROLES.index(group["role"])))


def check_exactly_once(groups: Sequence[ModuleGroup], params: Sequence[Param]) -> None:
    grouped = [id(tensor) for group in groups for tensor in group["params"]]
    trainable = {id(param.tensor) for param in params if param.tensor.requires_grad}
    if len(grouped) != len(set(grouped)) or set(grouped) != trainable:
        raise RuntimeError("lf-multilr: internal error: a trainable parameter is not in exactly one param group")


def _same_table(module_map: ModuleMap, settings: Settings) -> Table:
    """The table of modules that both the map and the settings were built from."""
    if module_map.table != settings.table:
        raise ValueError("lf-multilr: internal error: the module map and the settings come from different tables")
    return module_map.table


def build_plan(
    named_parameters: Iterable[tuple[str, torch.Tensor]],
    module_map: ModuleMap,
    settings: Settings,
    learning_rate: float,
    weight_decay: float,
    decay_names: Collection[str],
    split: Split = None,
    sizes: Mapping[int, int] | None = None,
) -> GroupPlan:
    """The plan for ``named_parameters`` (see the module docstring)."""
    _same_table(module_map, settings)
    params = place(list(named_parameters), module_map, settings.groups, sizes)
    rows = rows_for(settings, learning_rate, weight_decay, params)
    supplement = count(params, rows)
    stacks = blocks(params, settings, module_map.model_type)
    layers = {position: factor for found in stacks.values() for position, factor in found.factors.items()}
    groups = order(bucket(params, rows, settings, decay_names, split, layers), rows)
    check_exactly_once(groups, params)
    other = [param.name for param in params if param.row == OTHER and param.tensor.requires_grad]
    plan = GroupPlan(module_map, settings, rows, groups, other, supplement=supplement, split=split)
    plan.notes = notes(plan, stacks)
    plan.tensor_names = {id(param.tensor): normalize(param.name) for param in params}
    return plan


def notes(plan: GroupPlan, stacks: Mapping[str, Decay]) -> list[str]:
    """One line per module (or custom group) that starts late or warms up on its own, one per floor, and one per
    module with layer-wise decay (each of its stacks: its block count and the LRs of its embeddings, first and last
    block and head)."""
    found = []
    schedules = [(row.name, *plan.settings.schedule(row.name)) for row in plan.settings.table.by_order]
    schedules += [
        (custom.name, custom.start_step or 0, custom.warmup_steps)
        for custom in plan.settings.groups
        if custom.start_step is not None or custom.warmup_steps is not None
    ]
    for name, start, warmup in schedules:
        if name in plan.rows and plan.rows[name].trainable and (start or warmup):
            ramp = f", then rises linearly over {warmup} steps" if warmup else ""
            found.append(f"{name}: LR 0 before optimizer step {start}{ramp} (times the run's schedule)")
    for floored in plan.rows.values():
        if floored.trainable and floored.min_lr is not None:
            found.append(
                f"{floored.module}: decays from {floored.lr:.3e} to min_lr {floored.min_lr:.3e} along the run's "
                "schedule"
            )
    for row in plan.settings.table.rows:
        decay = stacks.get(row.name)
        if decay is None or not decay.factors:
            continue
        lr = plan.rows[row.name].lr
        by_tag = {tag: factor for factor, tag in decay.factors.values()}
        shown = []
        for stack in decay.stacks:
            prefix = f"{stack.name}/" if len(decay.stacks) > 1 else ""
            ends = ("embeddings", "block0", f"block{stack.blocks - 1}")
            lrs = ", ".join(f"{tag} {lr * by_tag[prefix + tag]:.3e}" for tag in ends if prefix + tag in by_tag)
            over = f"{stack.name} over {stack.blocks} blocks" if prefix else f"over {stack.blocks} blocks"
            shown.append(f"{over}: {lrs}, head {lr:.3e}")
        each = "per stack: " if len(decay.stacks) > 1 else ""
        found.append(f"{row.name}: layer-wise decay {decay.decay:g} {each}{'; '.join(shown)}")
    return found
