"""LLaMA-Factory's v1 engine (``USE_V1=1``): lf-multilr's keys inside ``optim_config: {name: multilr, ...}`` and its
schedule inside ``lr_scheduler_config: {name: multilr, ...}``, read and checked once, at the edge.

v1 selects its optimizer and scheduler by name from its plugin registries and hands each plugin its config dict,
which keeps any key. The optimizer plugin ``multilr`` takes the same keys, with the same names, checks and messages,
as a v0 config (:mod:`lf_multilr.config.keys`), plus the base ``weight_decay`` and AdamW's ``betas`` and ``eps``;
any other key is refused by name. v1 itself puts ``learning_rate`` into the dict as ``lr``.

Stock v1 trains with ``torch.optim.AdamW(trainable, lr=learning_rate)``: torch's default weight decay (0.01) on every
tensor. With no weight-decay key set (neither ``weight_decay`` nor a module's), the plugin does the same, so that
module LRs all equal to ``learning_rate`` reproduce a stock v1 run; once one is set, the groups split into decay and
no-decay by HF's rule, as v0's do.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, TypeGuard

from lf_multilr.config.checks import refuse_frozen
from lf_multilr.config.keys import KEYS, LR_GROUPS, SWITCHES, key_name
from lf_multilr.config.settings import Settings
from lf_multilr.errors import ConfigError
from lf_multilr.modules import TABLE, Table

#: The name both plugins are registered under (``optim_config: {name: multilr}``, ``lr_scheduler_config: ...``).
PLUGIN = "multilr"
OPTIM_CONFIG, SCHEDULER_CONFIG = "optim_config", "lr_scheduler_config"
#: What torch's AdamW, and so stock v1, uses when no weight decay is given.
TORCH_ADAMW_WEIGHT_DECAY = 0.01
#: The keys of the optimizer plugin that are not lf-multilr's module keys: v1's own (``name``, and ``lr``, which v1
#: sets from ``learning_rate``), the base weight decay, and AdamW's.
OPTIM_OWN = ("name", "lr", "weight_decay", "betas", "eps", "base")
#: The bases the plugin builds its groups on: torch's AdamW (stock v1's default), or v1's own Muon.
BASES = ("adamw", "muon")
#: What stock v1's Muon plugin (``optim_config: {name: muon}``) uses when its config does not say: its weight decay
#: (``wd``, on every tensor) and its own keys, which the plugin passes to the same class under ``base: muon``.
MUON_WEIGHT_DECAY = 0.1
MUON_KEYS = ("momentum", "nesterov", "ns_steps", "adamw_betas", "adamw_eps")
#: v1 has no freeze flags: the plugin takes v0's (``freeze_vision_tower`` ...), one per module of the table that has
#: one; a frozen module's parameters get no gradient, no group and no optimizer state.
FREEZE_FLAGS = {row.freeze_flag: row.name for row in TABLE.rows if row.freeze_flag}
OPTIM_KEYS: tuple[str, ...] = (
    *OPTIM_OWN,
    *MUON_KEYS,
    *(key.name for key in KEYS),
    LR_GROUPS.name,
    *(switch.name for switch in SWITCHES),
    *FREEZE_FLAGS,
)
#: The scheduler's decays after its warm-up (each a multiplier of every group's LR, so the modules' ratios hold).
DECAYS = ("cosine", "linear", "constant")
SCHEDULER_KEYS = ("name", "warmup_steps", "decay", "min_lr_rate")


def _unknown(section: str, key: str, value: Any, known: tuple[str, ...]) -> ConfigError:
    return ConfigError(
        f"{section}.{key}",
        value,
        f"it is not a key of lf-multilr's {'optimizer' if section == OPTIM_CONFIG else 'scheduler'} plugin `{PLUGIN}`",
        f"remove it, or use one of: {', '.join(known)}",
    )


def _number(where: str, value: Any, low: float, high: float = math.inf, whole: bool = False) -> float:
    """``value`` as a number in [low, high] (a whole one if asked), or a refusal naming ``where`` (section.key)."""
    rule = f"a {'whole ' if whole else ''}number >= {low:g}" + (f" and <= {high:g}" if high != math.inf else "")
    fix = f"give {rule}, or remove the key"
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ConfigError(where, value, f"it is a {type(value).__name__}, not a number", fix)
    try:
        number = float(value)
    except ValueError:
        raise ConfigError(where, value, "it is not a number", fix) from None
    if not math.isfinite(number) or not low <= number <= high or (whole and number != int(number)):
        raise ConfigError(where, value, f"it is not {rule}", fix)
    return number


def _switch(section: str, key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    raise ConfigError(f"{section}.{key}", value, "it is not true or false", "give true or false, or remove the key")


@dataclass(frozen=True)
class OptimConfig:
    """What ``optim_config: {name: multilr, ...}`` asks for."""

    settings: Settings
    learning_rate: float
    #: The base weight decay: ``weight_decay``, else torch's AdamW default (stock v1's).
    weight_decay: float
    #: Whether every tensor decays (no weight-decay key set: stock v1's AdamW), else HF's decay names decay.
    decay_every_tensor: bool
    #: AdamW's own keyword arguments (``betas``, ``eps``), as given.
    adamw: dict[str, Any] = field(default_factory=dict)
    log_module_metrics: bool = True
    #: The modules a ``freeze_*`` key freezes, in the table's order.
    frozen: tuple[str, ...] = ()
    #: The optimizer the groups are built on (:data:`BASES`), and v1's Muon's own keyword arguments, as given.
    base: str = "adamw"
    muon: dict[str, Any] = field(default_factory=dict)


def weight_decay_keys(table: Table) -> list[str]:
    return [key_name(row.name, "weight_decay") for row in table.rows if "weight_decay" in row.kinds]


def refuse_parts(config: Mapping[str, Any]) -> None:
    """Refuse a part's key (the audio tower's, or ``freeze_audio_tower``): the plugin groups v1's models by their three
    modules, and splitting the audio tower out of the vision tower is wired into v0's freezing only."""
    for row in TABLE.parts():
        for key in (*(key_name(row.name, kind) for kind in row.kinds), row.freeze_flag):
            if key is not None and config.get(key) is not None:
                raise ConfigError(
                    f"{OPTIM_CONFIG}.{key}",
                    config[key],
                    f"the v1 plugin does not take the {row.noun} apart from the {TABLE[str(row.part_of)].noun} (the "
                    "v1 engine trains vision-language models; the split is wired into LLaMA-Factory's default "
                    "engine only)",
                    f"remove the key (the {row.noun} trains with `vision_tower_lr`), or train with LLaMA-Factory's "
                    "default engine",
                )


def read_optim_config(config: Mapping[str, Any]) -> OptimConfig:
    """Check every key of ``optim_config`` (the multilr plugin's) and read it; refuse an unknown one by name."""
    for key, value in config.items():
        if key not in OPTIM_KEYS:
            raise _unknown(OPTIM_CONFIG, key, value, OPTIM_KEYS[1:])
    refuse_parts(config)
    values = {key: config.get(key) for key in (*(k.name for k in KEYS), LR_GROUPS.name)}
    settings = Settings.read(SimpleNamespace(**values))
    learning_rate = _number(f"{OPTIM_CONFIG}.lr", config.get("lr", 1e-4), 0.0)
    given_decay = config.get("weight_decay")
    weight_decay = (
        TORCH_ADAMW_WEIGHT_DECAY if given_decay is None else _number(f"{OPTIM_CONFIG}.weight_decay", given_decay, 0.0)
    )
    decay_set = given_decay is not None or any(
        settings.values[key] is not None for key in weight_decay_keys(settings.table)
    )
    adamw: dict[str, Any] = {}
    if config.get("eps") is not None:
        adamw["eps"] = _number(f"{OPTIM_CONFIG}.eps", config["eps"], 0.0)
    if config.get("betas") is not None:
        betas = config["betas"]
        if not isinstance(betas, (list, tuple)) or len(betas) != 2:
            raise ConfigError(
                f"{OPTIM_CONFIG}.betas", betas, "it is not a pair of numbers", "give two numbers such as [0.9, 0.999]"
            )
        adamw["betas"] = tuple(_number(f"{OPTIM_CONFIG}.betas", beta, 0.0, 1.0) for beta in betas)
    metrics = config.get(SWITCHES[0].name)
    flags = {flag: _switch(OPTIM_CONFIG, flag, config[flag]) for flag in FREEZE_FLAGS if config.get(flag) is not None}
    refuse_frozen(settings, SimpleNamespace(finetuning_type="full", additional_target=None, **flags))
    base, muon = read_base(config)
    if base == "muon":  # v1's Muon decays every tensor, at its own default where no weight-decay key is set
        weight_decay = MUON_WEIGHT_DECAY if given_decay is None else weight_decay
        decay_set = False
    return OptimConfig(
        settings,
        learning_rate,
        weight_decay,
        not decay_set,
        adamw,
        SWITCHES[0].default if metrics is None else _switch(OPTIM_CONFIG, SWITCHES[0].name, metrics),
        tuple(module for flag, module in FREEZE_FLAGS.items() if flags.get(flag)),
        base,
        muon,
    )


def read_base(config: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """``base`` (:data:`BASES`) and, under ``base: muon``, v1's Muon keys as given; each base's own keys refused
    under the other."""
    base = config.get("base", "adamw")
    if base not in BASES:
        raise ConfigError(
            f"{OPTIM_CONFIG}.base",
            base,
            "it is not an optimizer the plugin builds on",
            f"use one of: {', '.join(BASES)}",
        )
    own = {"adamw": ("betas", "eps"), "muon": MUON_KEYS}
    other = "muon" if base == "adamw" else "adamw"
    for key in own[other]:
        if config.get(key) is not None:
            raise ConfigError(
                f"{OPTIM_CONFIG}.{key}",
                config[key],
                f"it is a key of the {other} base, and the plugin builds on {base}",
                f"set `base: {other}`, or remove the key"
                + (" (Muon's AdamW takes `adamw_betas` and `adamw_eps`)" if base == "muon" else ""),
            )
    return base, {key: config[key] for key in MUON_KEYS if config.get(key) is not None}


@dataclass(frozen=True)
class SchedulerConfig:
    """What ``lr_scheduler_config: {name: multilr, ...}`` asks for: a linear warm-up over ``warmup_steps``, then
    ``decay`` to ``min_lr_rate`` times each group's LR, for every group alike (a module's own start step and warm-up
    travel in its param groups and are applied on top)."""

    warmup_steps: int = 0
    decay: str = "cosine"
    min_lr_rate: float = 0.0


def read_scheduler_config(config: Mapping[str, Any]) -> SchedulerConfig:
    for key, value in config.items():
        if key not in SCHEDULER_KEYS:
            raise _unknown(SCHEDULER_CONFIG, key, value, SCHEDULER_KEYS[1:])
    decay = config.get("decay", "cosine")
    if decay not in DECAYS:
        raise ConfigError(
            f"{SCHEDULER_CONFIG}.decay", decay, "it is not a decay the plugin knows", f"use one of: {', '.join(DECAYS)}"
        )
    warmup = config.get("warmup_steps")
    rate = config.get("min_lr_rate")
    return SchedulerConfig(
        0 if warmup is None else int(_number(f"{SCHEDULER_CONFIG}.warmup_steps", warmup, 0.0, whole=True)),
        str(decay),
        0.0 if rate is None else _number(f"{SCHEDULER_CONFIG}.min_lr_rate", rate, 0.0, 1.0),
    )


def names_plugin(config: Any) -> TypeGuard[Mapping[str, Any]]:
    """Whether a v1 plugin config (a dict, or None) selects lf-multilr's plugin."""
    return isinstance(config, Mapping) and config.get("name") == PLUGIN
