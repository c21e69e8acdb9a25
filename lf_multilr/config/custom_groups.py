"""``lr_groups``: groups of parameters picked by a regular expression, each with its own LR and weight decay, and
its own start step, warm-up and floor.

A YAML list (a JSON string on the command line) of ``{name, params, lr, weight_decay, start_step, warmup_steps,
min_lr}``. ``params`` is searched in the normalised parameter name (wrapper prefixes removed, see
``placement.normalize``); groups are matched before the module defaults and the first match wins; every field but
``name`` and ``params`` is optional and inherits from the module that owns the parameter (``min_lr`` as the module's
ratio of floor to LR). Each field is checked like the module key of its kind.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from lf_multilr.config.keys import Key, check_value
from lf_multilr.errors import ConfigError
from lf_multilr.modules import OTHER, TABLE, ModuleKind, Table

KEY = "lr_groups"
#: The fields that are numbers, each checked like the module key of its kind.
NUMBERS: tuple[ModuleKind, ...] = ("lr", "weight_decay", "start_step", "warmup_steps", "min_lr")
FIELDS = ("name", "params", *NUMBERS)
EXAMPLE = '[{"name": "vit_last_blocks", "params": "visual\\\\.blocks\\\\.(30|31)\\\\.", "lr": 1.0e-5}]'
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class CustomGroup:
    name: str
    pattern: re.Pattern[str]
    lr: float | None = None
    weight_decay: float | None = None
    #: Its own start step and warm-up (None: the owning module's), and its own floor (None: the module's ratio).
    start_step: int | None = None
    warmup_steps: int | None = None
    min_lr: float | None = None

    @property
    def schedules(self) -> bool:
        """Whether the entry sets a start step, warm-up or floor of its own."""
        return self.start_step is not None or self.warmup_steps is not None or self.min_lr is not None

    def matches(self, normalized_name: str) -> bool:
        return self.pattern.search(normalized_name) is not None


def _refuse(where: str, value: Any, why: str, fix: str = f"give a list like {EXAMPLE}") -> ConfigError:
    return ConfigError(where, value, why, fix)


def parse_lr_groups(value: Any, table: Table = TABLE) -> tuple[CustomGroup, ...]:
    """Check and compile ``lr_groups``; refuse anything malformed with the key, the value, why and the fix. A group
    cannot take the name of one of ``table``'s modules."""
    builtin = (*table.names, OTHER)
    groups: list[CustomGroup] = []
    for index, entry in enumerate(_entries(value)):
        groups.append(_group(f"{KEY}[{index}]", entry, builtin, taken=[group.name for group in groups]))
    return tuple(groups)


def _entries(value: Any) -> list[Any]:
    """The list of groups the value gives (a YAML list, or a JSON string from the command line)."""
    if value is None or value == "":
        return []
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as error:
            raise _refuse(KEY, value, f"it is not valid JSON ({error.msg})") from None
    if not isinstance(value, (list, tuple)) or not value:
        raise _refuse(KEY, value, "it must be a non-empty list of groups")
    return list(value)


def _group(where: str, entry: Any, builtin: tuple[str, ...], taken: list[str]) -> CustomGroup:
    """One entry, checked field by field."""
    if not isinstance(entry, dict):
        raise _refuse(where, entry, "a group must be a mapping with `name` and `params`")
    unknown = sorted(set(entry) - set(FIELDS))
    if unknown:
        raise _refuse(where, entry, f"unknown field(s) {unknown}", f"use only {list(FIELDS)}")
    name = _name(f"{where}.name", entry.get("name"), builtin, taken)
    compiled = _pattern(f"{where}.params", entry.get("params"))
    number = {kind: check_value(Key(f"{where}.{kind}", OTHER, kind), entry.get(kind)) for kind in NUMBERS}
    lr, floor = number["lr"], number["min_lr"]
    if lr is not None and floor is not None and floor > lr:
        raise _refuse(
            f"{where}.min_lr",
            entry["min_lr"],
            f"it is above the group's own `lr: {entry['lr']}`, and a floor is what the LR decays to",
            f"give a `min_lr` of at most {lr:g}, or remove it (the group then keeps its module's ratio of floor to LR)",
        )
    start, warmup = number["start_step"], number["warmup_steps"]
    return CustomGroup(
        name,
        compiled,
        lr,
        number["weight_decay"],
        None if start is None else int(start),
        None if warmup is None else int(warmup),
        floor,
    )


def _name(where: str, name: Any, builtin: tuple[str, ...], taken: list[str]) -> str:
    """``builtin``: the modules' groups and ``other``; ``taken``: the names of the groups before this one."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise _refuse(where, name, "a group needs a name of letters, digits, '_', '.', '-'")
    if name in builtin:
        raise _refuse(where, name, "it is the name of a built-in group", "choose another name")
    if name in taken:
        raise _refuse(where, name, "two groups have this name", "give each group its own name")
    return name


def _pattern(where: str, pattern: Any) -> re.Pattern[str]:
    if not isinstance(pattern, str) or not pattern:
        raise _refuse(where, pattern, "a group needs `params`, a regular expression")
    try:
        return re.compile(pattern)
    except re.error as error:
        raise _refuse(where, pattern, f"it is not a valid regular expression ({error})") from None
