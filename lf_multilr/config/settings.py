"""The values a run sets for lf-multilr's keys, read and checked once, at the edge.

:func:`Settings.read` checks every key of an object that has them as attributes (LLaMA-Factory's finetuning
arguments, once lf-multilr's keys are part of them) and parses ``lr_groups``. The parser keeps the result on the
arguments it built (:func:`settings_of` finds it there), and the plan built from them keeps it too, so nothing
re-reads or re-checks them later.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lf_multilr.config.custom_groups import CustomGroup, parse_lr_groups
from lf_multilr.config.keys import FREEZE_FLAGS, LR_GROUPS, Key, check_flag, check_value, key_name, keys_of
from lf_multilr.modules import BASE, OTHER, TABLE, Table

#: The attribute of the parsed arguments that holds their settings.
ATTRIBUTE = "lf_multilr_settings"


@dataclass(frozen=True)
class Settings:
    """The values of every key of a table of modules as the user set them (``None``: not set)."""

    values: dict[str, float | None]
    #: ``lr_groups``, parsed.
    groups: tuple[CustomGroup, ...] = ()
    #: ``lr_groups`` as given, for messages.
    groups_value: Any = None
    #: The modules of this run: the table's, less the parts it does not ask for (:meth:`Table.for_run`).
    table: Table = BASE
    #: The freeze flags of the parts of modules (``freeze_audio_tower``) by module, as set (``None``: unset).
    flags: dict[str, bool | None] = field(default_factory=dict)

    @classmethod
    def read(cls, args: Any, table: Table = TABLE) -> Settings:
        """Read (and check) the keys from any object that has them as attributes, e.g. finetuning args. A part of a
        module (the audio tower) is a module of this run when one of its keys or its freeze flag is set."""
        raw = getattr(args, LR_GROUPS.name, None)
        values = {key.name: check_value(key, getattr(args, key.name, None)) for key in keys_of(table)}
        flags = {flag.module: check_flag(flag, getattr(args, flag.name, None)) for flag in FREEZE_FLAGS}
        asked = {
            row.name
            for row in table.parts()
            if flags.get(row.name) is not None
            or any(values[key.name] is not None for key in keys_of(table) if key.module == row.name)
        }
        run = table.for_run(asked)
        values = {key.name: values[key.name] for key in keys_of(run)}
        return cls(values, parse_lr_groups(raw, run), raw, run, flags)

    @classmethod
    def none(cls, table: Table = TABLE) -> Settings:
        """No key set (nor a part's freeze flag)."""
        run = table.for_run(())
        return cls(dict.fromkeys(key.name for key in keys_of(run)), table=run)

    @property
    def keys(self) -> tuple[Key, ...]:
        return keys_of(self.table)

    @property
    def any_set(self) -> bool:
        return self.module_keys_set or bool(self.groups)

    @property
    def module_keys_set(self) -> bool:
        """Whether a key of the modules is set (``lr_groups`` alone needs no module map)."""
        return any(value is not None for value in self.values.values())

    def set_keys(self) -> list[str]:
        names = [name for name, value in self.values.items() if value is not None]
        return [*names, LR_GROUPS.name] if self.groups else names

    def value_of(self, name: str) -> Any:
        return self.groups_value if name == LR_GROUPS.name else self.values[name]

    def first_set(self) -> tuple[str, Any]:
        """(key, value) of the first key set: what a refusal names."""
        key = self.set_keys()[0]
        return key, self.value_of(key)

    def schedule(self, module: str) -> tuple[int, int | None]:
        """``module``'s (start step, warm-up steps or None)."""
        start, warmup = (
            self.values.get(key_name(module, "start_step")),
            self.values.get(key_name(module, "warmup_steps")),
        )
        return (0 if start is None else int(start)), None if warmup is None else int(warmup)

    def floor(self, module: str) -> float | None:
        """``module``'s floor (``<module>_min_lr``), or None when it keeps the run's end of decay."""
        return self.values.get(key_name(module, "min_lr"))

    def scheduled(self) -> list[tuple[str, Any]]:
        """(key, value) of every start step, warm-up and floor set, the modules' and ``lr_groups`` entries' own:
        what a scheduler that does not go through lf-multilr's gate would drop."""
        found = [
            (key.name, self.values[key.name])
            for key in self.keys
            if key.kind in ("start_step", "warmup_steps", "min_lr") and self.values.get(key.name) is not None
        ]
        for index, group in enumerate(self.groups):
            for name in ("start_step", "warmup_steps", "min_lr"):
                if getattr(group, name) is not None:
                    found.append((f"{LR_GROUPS.name}[{index}].{name}", getattr(group, name)))
        return found

    def floors(self) -> list[tuple[str, float]]:
        """(key, value) of every floor set: the modules' ``<module>_min_lr`` and the ``lr_groups`` entries' own."""
        return [(key, value) for key, value in self.scheduled() if key.endswith("min_lr")]

    def explicit(self, module: str) -> list[str]:
        """The keys set for ``module``."""
        return [key.name for key in self.keys if key.module == module and self.values.get(key.name) is not None]

    def resolve(self, learning_rate: float, weight_decay: float) -> dict[str, tuple[float, float]]:
        """Each module's (lr, weight decay), unset keys inheriting the base values; ``other`` always inherits."""
        resolved = {OTHER: (learning_rate, weight_decay)}
        for module in self.table.names:
            lr = self.values.get(key_name(module, "lr"))
            wd = self.values.get(key_name(module, "weight_decay"))
            resolved[module] = (learning_rate if lr is None else lr, weight_decay if wd is None else wd)
        return resolved


def keep(args: Any, settings: Settings) -> Settings:
    """Keep ``settings`` with the arguments they were read from."""
    object.__setattr__(args, ATTRIBUTE, settings)
    return settings


def settings_of(args: Any) -> Settings:
    """The settings kept with parsed arguments; for arguments parsed without lf-multilr's keys, none set."""
    kept = getattr(args, ATTRIBUTE, None)
    return kept if isinstance(kept, Settings) else Settings.none()
