"""The keys lf-multilr adds to a training config, and how their values are checked.

Each module of the table (:mod:`lf_multilr.modules`) brings its keys: a learning rate, a weight decay, a start step,
a warm-up and a floor (the LR it decays to), and the vision tower and the language model a layer-wise LR decay.
``None`` means "not set": the module then inherits ``learning_rate`` / ``weight_decay`` and the run's own schedule,
and when no key is set at all (``lr_groups`` included) the run is stock.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

from lf_multilr.errors import ConfigError
from lf_multilr.modules import BASE, KINDS, OTHER, TABLE, ModuleKind, Table

#: The modules of a run that asks for no part (:data:`~lf_multilr.modules.BASE`), in param-group order: the language
#: model first, because HF logs group 0 as ``learning_rate``. A run's own: ``Settings.table``.
MODULES: tuple[str, ...] = tuple(row.name for row in BASE.by_order)
#: Those modules and ``other``, in param-group and table order.
ORDER: tuple[str, ...] = BASE.group_names

#: The flag that freezes each of those modules (LLaMA-Factory's own; the parts' flags: :data:`FREEZE_FLAGS`).
FREEZE_FLAG: dict[str, str] = {row.name: row.freeze_flag for row in BASE.rows if row.freeze_flag is not None}


Kind = ModuleKind | Literal["groups"]

#: Per kind: what the help says it sets, and what an unset key means.
_KIND_HELP: dict[str, tuple[str, str]] = {
    "lr": ("Learning rate of {what}", "`learning_rate`"),
    "weight_decay": ("Weight decay of {what}", "`weight_decay`"),
    "layer_decay": (
        "Layer-wise LR decay of {what}, each stack of numbered blocks on its own: block i of N trains at "
        "{module}_lr * d**(N-1-i), its embeddings at d**N, its head at {module}_lr (0 < d <= 1)",
        "no decay",
    ),
    "start_step": ("Optimizer step from which {what} trains (its LR is 0 before)", "0"),
    "warmup_steps": ("Steps over which the LR of {what} rises linearly from its start step", "the run's schedule"),
    "min_lr": (
        "The LR {what} decays to under a decaying lr_scheduler_type (linear, cosine, polynomial, cosine_with_min_lr, "
        "warmup_stable_decay, ...), in place of the run's own end of decay",
        "the run's own end of decay, in proportion to the module's LR",
    ),
    "groups": (
        "Custom param groups: a list of {{name, params, lr, weight_decay, start_step, warmup_steps, min_lr}}; "
        "`params` is a regular expression on the parameter name; matched before the modules, first match wins; "
        "the others inherit from the module",
        "none",
    ),
}
#: Per kind of module key: the end of its name (``<module>_<suffix>``).
_SUFFIX: dict[str, str] = {"layer_decay": "lr_layer_decay"}


def key_name(module: str, kind: ModuleKind) -> str:
    """The name of ``module``'s key of ``kind``: ``vision_tower_lr``, ``vision_tower_lr_layer_decay``, ..."""
    return f"{module}_{_SUFFIX.get(kind, kind)}"


@dataclass(frozen=True)
class Key:
    """One config key: the module it sets, what kind of value it takes, and what the module is (for its help)."""

    name: str
    module: str
    kind: Kind
    #: The module as the help names it (the table's ``what``); empty: the module's name.
    what: str = ""

    @property
    def inherits(self) -> str:
        return _KIND_HELP[self.kind][1]

    @property
    def help(self) -> str:
        what, unset = _KIND_HELP[self.kind]
        return f"{what.format(what=self.what or self.module, module=self.module)} (lf-multilr). Unset: {unset}."


def keys_of(table: Table) -> tuple[Key, ...]:
    """The keys of ``table``'s modules: by kind (LRs, weight decays, layer decays, start steps, warm-ups), each kind
    in the table's order, for the modules that bring it."""
    return tuple(
        Key(key_name(row.name, kind), row.name, kind, row.what)
        for kind in KINDS
        for row in table.rows
        if kind in row.kinds
    )


_KINDS: tuple[Kind, ...] = ("lr", "weight_decay")
KEYS: tuple[Key, ...] = keys_of(TABLE)
KEY_NAMES: tuple[str, ...] = tuple(key.name for key in KEYS)
#: ``lr_groups``: custom groups by regular expression (see :mod:`.custom_groups`); a list, so not one of ``KEYS``.
LR_GROUPS = Key("lr_groups", OTHER, "groups")


@dataclass(frozen=True)
class Switch:
    """A boolean option of lf-multilr's that sets no learning rate (so it does not switch the groups on)."""

    name: str
    default: bool
    help: str


@dataclass(frozen=True)
class Option:
    """A key of lf-multilr's that sets no learning rate and takes a value of its own kind."""

    name: str
    help: str


#: ``trainer_callbacks``: ``transformers.TrainerCallback`` classes lf-multilr adds to the run
#: (:mod:`lf_multilr.config.callbacks`); a list of ``module:Class`` or ``module.Class`` names.
CALLBACKS = Option(
    "trainer_callbacks",
    "transformers.TrainerCallback classes to add to the run, as a list of `module:Class` or `module.Class` names "
    "(also read from the environment variable LF_MULTILR_CALLBACKS, comma-separated) (lf-multilr). Unset: none.",
)
#: The environment variable that names callbacks for every run, comma-separated, like ``trainer_callbacks``.
CALLBACKS_ENV = "LF_MULTILR_CALLBACKS"


@dataclass(frozen=True)
class FreezeFlag:
    """The freeze flag of a module that is part of another (:attr:`~lf_multilr.modules.Module.part_of`): lf-multilr's
    own, ``None`` when unset (then the other module's flag freezes both, as LLaMA-Factory's does)."""

    name: str
    module: str
    #: The flag of the module it is part of (``freeze_vision_tower``).
    parent: str

    @property
    def help(self) -> str:
        part, parent = TABLE[self.module], TABLE[str(TABLE[self.module].part_of)]
        return (
            f"Whether to freeze {part.what} apart from the {parent.noun} (lf-multilr). Unset: `{self.parent}` "
            f"freezes both, as in LLaMA-Factory; set (true or false): `{self.parent}` freezes the {parent.noun} only."
        )


#: The freeze flags lf-multilr adds with the modules that are parts of others.
FREEZE_FLAGS: tuple[FreezeFlag, ...] = tuple(
    FreezeFlag(str(row.freeze_flag), row.name, str(TABLE[str(row.part_of)].freeze_flag)) for row in TABLE.parts()
)


def check_flag(flag: FreezeFlag, value: Any) -> bool | None:
    """``value`` of a freeze flag: true, false or unset; anything else is refused."""
    if value is None or isinstance(value, bool):
        return value
    raise ConfigError(
        flag.name,
        value,
        f"it is a {type(value).__name__}, not true or false",
        f"give true or false, or remove the key (unset: `{flag.parent}` freezes both, as in LLaMA-Factory)",
    )


SWITCHES: tuple[Switch, ...] = (
    Switch(
        "log_module_metrics",
        True,
        "Log each module's gradient norm (grad_norm/<module>) at every logging step of a multimodal run (lf-multilr).",
    ),
)


_RANGE: dict[str, tuple[str, str]] = {  # kind -> (the rule, an example)
    "lr": ("a number >= 0", "1.0e-5"),
    "weight_decay": ("a number >= 0", "0.01"),
    "layer_decay": ("a number with 0 < d <= 1", "0.9"),
    "start_step": ("a whole number >= 0", "500"),
    "warmup_steps": ("a whole number >= 1", "100"),
    "min_lr": ("a number >= 0", "1.0e-6"),
}


_NOUN = {"lr": "learning rate", "weight_decay": "weight decay", "min_lr": "floor (minimum learning rate)"}


def _in_range(kind: str, number: float) -> str | None:
    """Why ``number`` is out of range for ``kind``, or None."""
    if kind in ("lr", "weight_decay", "min_lr") and number < 0:
        return f"a {_NOUN[kind]} cannot be negative"
    if kind == "layer_decay" and not 0 < number <= 1:
        return "a layer-wise decay must be greater than 0 and at most 1"
    if kind in ("start_step", "warmup_steps") and number != int(number):
        return "a number of steps must be a whole number"
    if kind == "start_step" and number < 0:
        return "a start step cannot be negative"
    if kind == "warmup_steps" and number < 1:
        return "a warm-up lasts at least 1 step"
    return None


def check_value(key: Key, value: Any) -> float | None:
    """Return ``value`` as a float, or ``None`` when unset; refuse anything outside the key's range."""
    if value is None:
        return None
    rule, example = _RANGE[key.kind]
    unset = f"to inherit {key.inherits}" if key.kind in _KINDS else f"(unset: {key.inherits})"
    fix = f"give {rule} such as {example}, or remove the key {unset}"
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
    why = _in_range(key.kind, number)
    if why:
        raise ConfigError(key.name, value, why, fix)
    return number
