"""Which module owns a parameter.

Ownership follows LLaMA-Factory's composite-model registry and matches its keys the way LLaMA-Factory does
when it freezes modules: a key owns a parameter when it is a substring of the parameter's dotted name.
Wrapper prefixes (PEFT, value head, DDP/DeepSpeed, FSDP, activation checkpointing, torch.compile) are removed
first, so that a key such as ``model`` cannot match every name through ``base_model.``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from .keys import OTHER

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
class ModuleMap:
    """The registry's keys for one model type."""

    model_type: str
    keys: dict[str, tuple[str, ...]]

    @classmethod
    def of(cls, model_type: str, projector: Iterable[str], vision: Iterable[str], language: Iterable[str]) -> ModuleMap:
        return cls(
            model_type,
            {
                "multi_modal_projector": tuple(projector),
                "vision_tower": tuple(vision),
                "language_model": tuple(language),
            },
        )

    def owner(self, name: str) -> str:
        """The module that owns parameter ``name``, or ``other``."""
        normalized = normalize(name)
        for module in PRIORITY:
            if any(key in normalized for key in self.keys[module]):
                return module
        return OTHER
