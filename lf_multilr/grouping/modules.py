"""Which module owns a parameter.

Ownership follows LLaMA-Factory's composite-model registry and matches its keys the way LLaMA-Factory does
when it freezes modules: a key owns a parameter when it is a substring of the parameter's dotted name.
Wrapper prefixes (PEFT, value head, DDP/DeepSpeed, FSDP, activation checkpointing, torch.compile) are removed
first, so that a key such as ``model`` cannot match every name through ``base_model.``.

Where the registry is wrong or ambiguous for a model type, lf-multilr's supplement (:mod:`.supplement`) decides:
its rules are consulted first, and a placement records the rule that decided it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from lf_multilr.config.keys import OTHER
from lf_multilr.grouping.supplement import Rule

#: Where keys overlap, the first module listed wins: the projector beats the vision tower.
PRIORITY: tuple[str, ...] = ("multi_modal_projector", "vision_tower", "language_model")

_LEADING_WRAPPERS: tuple[str, ...] = ("base_model.model.", "pretrained_model.", "module.", "_orig_mod.")
_INNER_WRAPPERS: tuple[str, ...] = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.")


def normalize(name: str) -> str:
    """Remove the prefixes that wrappers add, wherever they add them."""
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
    #: The modules whose registry keys match the name, in :data:`PRIORITY` order (what LLaMA-Factory's
    #: ``freeze_*`` flags act on).
    registry: tuple[str, ...]
    #: The supplement's rule that decided, or None when the registry's keys did.
    rule: Rule | None = None


@dataclass(frozen=True)
class ModuleMap:
    """The registry's keys for one model type, and lf-multilr's supplement rules for it."""

    model_type: str
    keys: dict[str, tuple[str, ...]]
    supplement: tuple[Rule, ...] = ()

    @classmethod
    def of(
        cls,
        model_type: str,
        projector: Iterable[str],
        vision: Iterable[str],
        language: Iterable[str],
        supplement: Iterable[Rule] = (),
    ) -> ModuleMap:
        return cls(
            model_type,
            {
                "multi_modal_projector": tuple(projector),
                "vision_tower": tuple(vision),
                "language_model": tuple(language),
            },
            tuple(supplement),
        )

    def keys_of(self, module: str) -> tuple[str, ...]:
        """The keys that can place a parameter in ``module``: the registry's, then the supplement's."""
        extra = (key for rule in self.supplement if rule.module == module for key in rule.keys)
        return self.keys[module] + tuple(extra)

    def registry_modules(self, name: str) -> tuple[str, ...]:
        """The modules whose registry keys match ``name`` (normalized), in priority order."""
        normalized = normalize(name)
        return tuple(module for module in PRIORITY if any(key in normalized for key in self.keys[module]))

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
