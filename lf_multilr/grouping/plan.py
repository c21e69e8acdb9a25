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
:func:`blocks` factor (each module with ``<module>_lr_layer_decay`` is a stack of its own), :func:`bucket` them
into groups, :func:`order` the groups, and :func:`check_exactly_once`.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import torch

from lf_multilr.config.custom_groups import CustomGroup
from lf_multilr.config.keys import key_name
from lf_multilr.config.settings import Settings
from lf_multilr.errors import ConfigError
from lf_multilr.grouping.blocks import EMBEDDINGS, HEAD, decay_scale, depths
from lf_multilr.grouping.digests import digest
from lf_multilr.grouping.placement import ModuleMap, Placement, normalize
from lf_multilr.grouping.schema import ModuleGroup
from lf_multilr.grouping.supplement import Rule
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
    group's unset LR and weight decay inherit from the module that owns its parameters, which must then be one."""
    resolved = settings.resolve(learning_rate, weight_decay)
    rows = {row.name: ModuleRow(row.name, *resolved[row.name]) for row in settings.table.by_order}
    for custom in settings.groups:
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
            rows[custom.name] = ModuleRow(custom.name, *inherited.pop())
    rows[OTHER] = ModuleRow(OTHER, *resolved[OTHER])
    return rows


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


def blocks(params: Sequence[Param], settings: Settings, model_type: str) -> dict[str, dict[int, tuple[float, str]]]:
    """Per module with a layer-wise decay set (``<module>_lr_layer_decay``), per index into ``params`` of one of its
    parameters: its layer-decay factor and block tag. Each module is its own stack of blocks; parameters of custom
    groups keep their group's LR."""
    stacks: dict[str, dict[int, tuple[float, str]]] = {}
    for module in settings.table.rows:
        name = key_name(module.name, "layer_decay")
        decay = settings.values.get(name) if "layer_decay" in module.kinds else None
        if decay is None:
            continue
        positions = [i for i, param in enumerate(params) if param.module == module.name]
        found, count_ = depths([normalize(params[i].name) for i in positions])
        if count_ == 0:
            raise ConfigError(
                name,
                decay,
                f"the {module.noun} of model type `{model_type}` has no numbered blocks to decay over",
                f"remove the key (or set a single `{key_name(module.name, 'lr')}`)",
            )
        tags = {EMBEDDINGS: "embeddings", HEAD: "head"}
        stacks[module.name] = {
            position: (decay_scale(depth, count_, decay), tags.get(depth, f"block{depth}"))
            for position, depth in zip(positions, found, strict=True)
            if params[position].custom is None
        }
    return stacks


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
        start, warmup = settings.schedule(param.module) if param.module != OTHER else (0, None)
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
            names[id(group)] = []
        group["params"].append(param.tensor)
        names[id(group)].append(normalize(param.name))
    for group in groups.values():
        group["layout"] = digest(names[id(group)])
    return list(groups.values())


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
    layers = {position: factor for stack in stacks.values() for position, factor in stack.items()}
    groups = order(bucket(params, rows, settings, decay_names, split, layers), rows)
    check_exactly_once(groups, params)
    other = [param.name for param in params if param.row == OTHER and param.tensor.requires_grad]
    plan = GroupPlan(module_map, settings, rows, groups, other, supplement=supplement)
    plan.notes = notes(plan, stacks)
    plan.tensor_names = {id(param.tensor): normalize(param.name) for param in params}
    return plan


def notes(plan: GroupPlan, stacks: Mapping[str, Mapping[int, tuple[float, str]]]) -> list[str]:
    """One line per module that starts late or warms up on its own, and one per module with layer-wise decay."""
    found = []
    for row in plan.settings.table.by_order:
        start, warmup = plan.settings.schedule(row.name)
        if plan.rows[row.name].trainable and (start or warmup):
            ramp = f", then rises linearly over {warmup} steps" if warmup else ""
            found.append(f"{row.name}: LR 0 before optimizer step {start}{ramp} (times the run's schedule)")
    for row in plan.settings.table.rows:
        layers = stacks.get(row.name)
        if not layers:
            continue
        decay = plan.settings.values[key_name(row.name, "layer_decay")]
        lr = plan.rows[row.name].lr
        by_tag = {tag: scale for scale, tag in layers.values()}
        count_ = sum(tag.startswith("block") for tag in by_tag)
        ends = ("embeddings", "block0", f"block{count_ - 1}")
        shown = ", ".join(f"{tag} {lr * by_tag[tag]:.3e}" for tag in ends if tag in by_tag)
        found.append(f"{row.name}: layer-wise decay {decay:g} over {count_} blocks: {shown}, head {lr:.3e}")
    return found
