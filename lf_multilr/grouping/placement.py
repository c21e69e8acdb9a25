"""Which module owns a parameter.

Ownership follows LLaMA-Factory's composite-model registry and matches its keys the way LLaMA-Factory does
when it freezes modules: a key owns a parameter when it is a substring of the parameter's dotted name.
Wrapper prefixes (PEFT, value head, DDP/DeepSpeed, FSDP, activation checkpointing, torch.compile) are removed
first, so that a key such as ``model`` cannot match every name through ``base_model.``.

Which registry keys belong to which module is the table of modules' business (:mod:`lf_multilr.modules`: each row's
:class:`~lf_multilr.modules.Source`, and its priority where keys overlap). Where the registry is wrong or ambiguous
for a model type, lf-multilr's supplement (:mod:`.supplement`) decides: its rules are consulted first, and a placement
records the rule that decided it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

from lf_multilr.grouping.supplement import Rule
from lf_multilr.modules import BASE, OTHER, TABLE, RegistryEntry, Table

#: The shipped table's modules by priority: where keys overlap, the first listed wins (the projector beats the audio
#: tower, the audio tower the vision tower).
PRIORITY: tuple[str, ...] = tuple(row.name for row in TABLE.by_priority)

_LEADING_WRAPPERS: tuple[str, ...] = ("base_model.model.", "pretrained_model.", "module.", "_orig_mod.")
_INNER_WRAPPERS: tuple[str, ...] = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.")


@lru_cache(maxsize=1 << 16)
def normalize(name: str) -> str:
    """Remove the prefixes that wrappers add, wherever they add them. Placing, grouping, digesting and naming a
    parameter each ask for its normalised name: the answer is kept (a model has a few thousand names)."""
    for wrapper in _INNER_WRAPPERS:
        name = name.replace(wrapper, "")
    stripped = True
    while stripped:
        stripped = False
        for prefix in _LEADING_WRAPPERS:
            if name.startswith(prefix):
                name, stripped = name[len(prefix) :], True
    return name


@dataclass(frozen=True)
class Placement:
    """Where a parameter goes, and why."""

    module: str
    #: The modules whose registry keys match the name, in priority order (what LLaMA-Factory's ``freeze_*`` flags
    #: act on).
    registry: tuple[str, ...]
    #: The supplement's rule that decided, or None when the registry's keys did.
    rule: Rule | None = None


@dataclass(frozen=True)
class ModuleMap:
    """Per module of a table, the registry's keys for one model type; and lf-multilr's supplement rules for it."""

    model_type: str
    keys: dict[str, tuple[str, ...]]
    supplement: tuple[Rule, ...] = ()
    #: The modules of the run (a run that asks for no part: :data:`~lf_multilr.modules.BASE`).
    table: Table = BASE

    @classmethod
    def from_registry(
        cls, model_type: str, entry: RegistryEntry, supplement: Iterable[Rule] = (), table: Table = BASE
    ) -> ModuleMap:
        """The map of ``model_type`` from its registry entry: each module takes the keys its row's source names.
        The supplement's rules for modules the table lacks, or for a part it does not hold, are left out."""
        rules = tuple(
            rule
            for rule in supplement
            if rule.module in table.names and (rule.with_part is None or rule.with_part in table.names)
        )
        return cls(model_type, {row.name: row.source.keys(entry) for row in table.rows}, rules, table)

    @classmethod
    def of(
        cls,
        model_type: str,
        projector_keys: Iterable[str],
        vision_model_keys: Iterable[str],
        language_model_keys: Iterable[str],
        supplement: Iterable[Rule] = (),
    ) -> ModuleMap:
        """The map of a registry entry given as its three lists of keys, in the registry's order, for a run that
        asks for no part (another table: :meth:`from_registry`)."""
        entry = RegistryEntry(tuple(projector_keys), tuple(vision_model_keys), tuple(language_model_keys))
        return cls.from_registry(model_type, entry, supplement)

    @classmethod
    def none(cls, model_type: str, table: Table = BASE) -> ModuleMap:
        """A map with no keys: every parameter belongs to ``other`` (a model type the registry does not know)."""
        return cls.from_registry(model_type, RegistryEntry(), table=table)

    def keys_of(self, module: str) -> tuple[str, ...]:
        """The keys that can place a parameter in ``module``: the registry's, then the supplement's."""
        extra = (key for rule in self.supplement if rule.module == module for key in rule.keys)
        return self.keys[module] + tuple(extra)

    def registry_modules(self, name: str) -> tuple[str, ...]:
        """The modules whose registry keys match ``name`` (normalized), in priority order."""
        normalized = normalize(name)
        return tuple(
            row.name for row in self.table.by_priority if any(key in normalized for key in self.keys[row.name])
        )

    def placement(self, name: str) -> Placement:
        """The module of ``name``: a supplement rule's where it differs from the registry's answer."""
        registry = self.registry_modules(name)
        normalized = normalize(name)
        rule = next((rule for rule in self.supplement if rule.matches(normalized)), None)
        if rule is not None and registry != (rule.module,):
            return Placement(rule.module, registry, rule)
        return Placement(registry[0] if registry else OTHER, registry)

    def owner(self, name: str) -> str:
        """The module that owns parameter ``name``, or ``other``."""
        return self.placement(name).module
