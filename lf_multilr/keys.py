"""The keys lf-multilr adds to a training config, and how their values are checked.

Each module has a learning-rate key and a weight-decay key. ``None`` means "not set": the module then
inherits ``learning_rate`` / ``weight_decay``, and when no key is set at all the run is stock.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

from .errors import ConfigError

#: The modules, in param-group order: the language model first, because HF logs group 0 as ``learning_rate``.
MODULES: tuple[str, ...] = ("language_model", "vision_tower", "multi_modal_projector")
#: Trainable parameters that belong to no module.
OTHER = "other"

#: LLaMA-Factory's flag that freezes each module.
FREEZE_FLAG: dict[str, str] = {
    "vision_tower": "freeze_vision_tower",
    "multi_modal_projector": "freeze_multi_modal_projector",
    "language_model": "freeze_language_model",
}

_WHAT: dict[str, str] = {
    "vision_tower": "the vision (and audio) tower",
    "multi_modal_projector": "the multimodal projector (merger, resampler)",
    "language_model": "the language model, lm_head included",
}


@dataclass(frozen=True)
class Key:
    """One config key: the module it sets and whether it is a learning rate or a weight decay."""

    name: str
    module: str
    kind: Literal["lr", "weight_decay"]

    @property
    def inherits(self) -> str:
        return "learning_rate" if self.kind == "lr" else "weight_decay"

    @property
    def help(self) -> str:
        what = "Learning rate" if self.kind == "lr" else "Weight decay"
        return f"{what} of {_WHAT[self.module]} (lf-multilr). Unset: `{self.inherits}`."


_KINDS: tuple[Literal["lr", "weight_decay"], ...] = ("lr", "weight_decay")
KEYS: tuple[Key, ...] = tuple(
    Key(f"{module}_{kind}", module, kind)
    for kind in _KINDS
    for module in ("vision_tower", "multi_modal_projector", "language_model")
)
KEY_NAMES: tuple[str, ...] = tuple(key.name for key in KEYS)


@dataclass(frozen=True)
class Switch:
    """A boolean option of lf-multilr's that sets no learning rate (so it does not switch the groups on)."""

    name: str
    default: bool
    help: str


SWITCHES: tuple[Switch, ...] = (
    Switch(
        "log_module_metrics",
        True,
        "Log each module's gradient norm (grad_norm/<module>) at every logging step of a multimodal run (lf-multilr).",
    ),
)


def check_value(key: Key, value: Any) -> float | None:
    """Return ``value`` as a float, or ``None`` when unset; refuse anything that is not a finite number >= 0."""
    if value is None:
        return None
    fix = f"give a number >= 0 such as 1.0e-5, or remove the key to inherit `{key.inherits}`"
    if isinstance(value, bool):
        raise ConfigError(key.name, value, "it is a boolean, not a number", fix)
    if isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            raise ConfigError(key.name, value, "it is not a number", fix) from None
    elif isinstance(value, (int, float)):
        number = float(value)
    else:
        raise ConfigError(key.name, value, f"it is a {type(value).__name__}, not a number", fix)
    if math.isnan(number) or math.isinf(number):
        raise ConfigError(key.name, value, "it is not a finite number", fix)
    if number < 0:
        why = "a learning rate cannot be negative" if key.kind == "lr" else "a weight decay cannot be negative"
        raise ConfigError(key.name, value, why, fix)
    return number


@dataclass(frozen=True)
class Settings:
    """The values of every key as the user set them (``None``: not set)."""

    values: dict[str, float | None]

    @classmethod
    def read(cls, args: Any) -> Settings:
        """Read (and check) the keys from any object that has them as attributes, e.g. finetuning args."""
        return cls({key.name: check_value(key, getattr(args, key.name, None)) for key in KEYS})

    @property
    def any_set(self) -> bool:
        return any(value is not None for value in self.values.values())

    def set_keys(self) -> list[str]:
        return [name for name, value in self.values.items() if value is not None]

    def explicit(self, module: str) -> list[str]:
        """The keys set for ``module``."""
        return [key.name for key in KEYS if key.module == module and self.values[key.name] is not None]

    def resolve(self, learning_rate: float, weight_decay: float) -> dict[str, tuple[float, float]]:
        """Each module's (lr, weight decay), unset keys inheriting the base values; ``other`` always inherits."""
        resolved = {OTHER: (learning_rate, weight_decay)}
        for module in MODULES:
            lr = self.values[f"{module}_lr"]
            wd = self.values[f"{module}_weight_decay"]
            resolved[module] = (learning_rate if lr is None else lr, weight_decay if wd is None else wd)
        return resolved


def frozen_fix(module: str, finetuning_type: str) -> str:
    """How to make ``module`` trainable under ``finetuning_type`` (for the error that refuses a frozen module)."""
    if finetuning_type == "lora" and module == "multi_modal_projector":
        return (
            "under LoRA the projector trains only as a full copy: add it to `additional_target` "
            "(e.g. `additional_target: merger` for Qwen-VL, `multi_modal_projector` for LLaVA) "
            "and set `freeze_multi_modal_projector: false`"
        )
    fix = f"set `{FREEZE_FLAG[module]}: false`"
    return fix + " so that LoRA adapts it" if finetuning_type == "lora" else fix


def refuse_frozen(settings: Settings, finetuning_args: Any) -> None:
    """Refuse a key for a module that the config's own flags leave untrained.

    ``finetuning_args`` is anything with LLaMA-Factory's ``finetuning_type``, ``additional_target`` and ``freeze_*``
    attributes. Under LoRA a frozen module can still train as a full copy in ``additional_target``: the
    optimizer-time check on the prepared model decides then.
    """
    finetuning_type = finetuning_args.finetuning_type
    copies = finetuning_type == "lora" and bool(finetuning_args.additional_target)
    for module in MODULES:
        keys = settings.explicit(module)
        if keys and not copies and getattr(finetuning_args, FREEZE_FLAG[module], False):
            raise ConfigError(
                keys[0],
                settings.values[keys[0]],
                f"`{FREEZE_FLAG[module]}: true` freezes the {module}, so its value would do nothing",
                f"{frozen_fix(module, finetuning_type)}, or remove the key",
            )
    projector_keys = settings.explicit("multi_modal_projector")
    if projector_keys and finetuning_type == "lora" and not finetuning_args.additional_target:
        raise ConfigError(
            projector_keys[0],
            settings.values[projector_keys[0]],
            "under LoRA the projector has nothing trainable unless it is a full copy in `additional_target`",
            f"{frozen_fix('multi_modal_projector', 'lora')}, or remove the key",
        )
