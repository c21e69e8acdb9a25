"""The table of modules: one row per module lf-multilr gives its own learning rate, everything else derived.

The keys (``<module>_lr`` ...) and their help, the checks and their messages, the param groups and their order, the
start-of-training table, the plots and LlamaBoard's fields all read these rows; nothing else spells a module out.
A new module is a new row (and, where it needs them, the keys it brings in :attr:`Module.kinds`).

Where a module's parameters come from is its :class:`Source`: some keys of LLaMA-Factory's composite-model registry
entry (for example all of ``vision_model_keys``, or only those that start with ``audio_tower``), plus the rules of
lf-multilr's supplement (:mod:`lf_multilr.grouping.supplement`) that name the module. Where two modules' keys match
one name, the lower :attr:`Module.priority` wins, so a module can be carved out of another's keys (the projector's
``audio_tower.proj`` out of the tower's ``audio_tower`` today).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Literal

#: Trainable parameters that belong to no module: their group and table row.
OTHER = "other"

#: The kinds of key a module can bring, in the order the keys are listed (``<module>_<suffix>``).
ModuleKind = Literal["lr", "weight_decay", "layer_decay", "start_step", "warmup_steps"]
KINDS: tuple[ModuleKind, ...] = ("lr", "weight_decay", "layer_decay", "start_step", "warmup_steps")
#: Every module's keys: its LR and weight decay, and when it starts and warms up.
COMMON: tuple[ModuleKind, ...] = ("lr", "weight_decay", "start_step", "warmup_steps")


@dataclass(frozen=True)
class RegistryEntry:
    """What lf-multilr reads of one entry of LLaMA-Factory's composite-model registry (``CompositeModel``).

    ``patches/registry.py`` fills it from LLaMA-Factory; tests build it by hand.
    """

    projector_keys: tuple[str, ...] = ()
    vision_model_keys: tuple[str, ...] = ()
    language_model_keys: tuple[str, ...] = ()


_REGISTRY_FIELDS = frozenset(f.name for f in fields(RegistryEntry))


@dataclass(frozen=True)
class Source:
    """Where a module's parameters come from for a model type: keys of its registry entry.

    ``field`` names the :class:`RegistryEntry` field whose keys the module takes (None: the registry does not name
    this module apart, so only the supplement's rules place parameters in it); ``prefixes`` keeps only the keys that
    start with one of them (empty: all the field's keys). A key owns a parameter when it is a substring of the
    parameter's name, as in LLaMA-Factory.
    """

    field: str | None
    prefixes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.field is not None and self.field not in _REGISTRY_FIELDS:
            raise ValueError(f"Source.field {self.field!r} is not a registry field ({sorted(_REGISTRY_FIELDS)})")

    def keys(self, entry: RegistryEntry) -> tuple[str, ...]:
        """The keys of ``entry`` that place a parameter in the module (before the supplement's)."""
        if self.field is None:
            return ()
        found: tuple[str, ...] = getattr(entry, self.field)
        return tuple(key for key in found if not self.prefixes or key.startswith(self.prefixes))


@dataclass(frozen=True)
class Module:
    """One module: its name, where its parameters come from, how it is frozen, and how it reads to a user."""

    #: The name of its keys (``<name>_lr``), its param groups, its log entries (``lr/<name>``) and its table row.
    name: str
    #: What the module is, as the keys' help says it ("Learning rate of <what> (lf-multilr)").
    what: str
    #: What the module is in a sentence of a message ("the <noun> of model type ...").
    noun: str
    #: Its name in narrow table headers (``docs/models.md``).
    short: str
    source: Source
    #: The config flag that freezes it: LLaMA-Factory's own, or one lf-multilr adds with the module's keys; None
    #: where no flag freezes it apart (then no check refuses a key because of a flag).
    freeze_flag: str | None
    #: Where keys of several modules match one parameter, the module with the lowest priority owns it.
    priority: int
    #: Its place in the param groups, the logs and the tables (0 first: HF logs group 0 as ``learning_rate``).
    order: int
    #: Its name as it reads inside a LlamaBoard label, per language (Russian takes the genitive).
    labels: Mapping[str, str] = field(compare=False)
    #: Its line colour in the plots.
    color: str
    #: The keys it brings (``<name>_lr`` ...): the common ones, and the vision tower's layer-wise decay.
    kinds: tuple[ModuleKind, ...] = COMMON
    #: None where LLaMA-Factory's LoRA adapts it on every model; otherwise its layers get adapters only where
    #: ``lora_target`` reaches them (``all`` does on some models, such as Qwen3-VL's mergers), and this names its
    #: full copy in ``additional_target`` per family (for the message that says how to train it).
    lora_copy: str | None = None


@dataclass(frozen=True)
class Table:
    """The modules, in the order their keys are listed, with the orders derived from them."""

    rows: tuple[Module, ...]

    def __post_init__(self) -> None:
        names = [row.name for row in self.rows]
        for what, values in (
            ("name", names),
            ("priority", [row.priority for row in self.rows]),
            ("order", [row.order for row in self.rows]),
        ):
            if len(set(values)) != len(values):
                raise ValueError(f"two modules of the table share a {what}: {values}")
        if OTHER in names:
            raise ValueError(f"`{OTHER}` is the group of parameters that belong to no module, not a module")
        for row in self.rows:
            unknown = [kind for kind in row.kinds if kind not in KINDS]
            if unknown:
                raise ValueError(f"module `{row.name}` brings unknown kinds of key {unknown}; known: {KINDS}")

    def __getitem__(self, name: str) -> Module:
        for row in self.rows:
            if row.name == name:
                return row
        raise KeyError(name)

    @property
    def names(self) -> tuple[str, ...]:
        """The modules in the order their keys are listed."""
        return tuple(row.name for row in self.rows)

    @property
    def by_order(self) -> tuple[Module, ...]:
        """The modules in param-group, log and table order."""
        return tuple(sorted(self.rows, key=lambda row: row.order))

    @property
    def group_names(self) -> tuple[str, ...]:
        """The modules in param-group, log and table order, then ``other``."""
        return (*(row.name for row in self.by_order), OTHER)

    @property
    def by_priority(self) -> tuple[Module, ...]:
        """The modules in the order they claim a parameter that several modules' keys match."""
        return tuple(sorted(self.rows, key=lambda row: row.priority))

    def with_row(self, row: Module) -> Table:
        """This table with one more module (what a new module, or a test of one, builds)."""
        return Table((*self.rows, row))

    def nouns(self) -> str:
        """Every module in a sentence, in key order: ``vision tower, projector or language model``."""
        nouns = [row.noun for row in self.rows]
        return nouns[0] if len(nouns) == 1 else f"{', '.join(nouns[:-1])} or {nouns[-1]}"


#: The modules lf-multilr ships. Keys, checks, groups, tables, plots and LlamaBoard's fields derive from these rows.
TABLE = Table(
    (
        Module(
            name="vision_tower",
            what="the vision (and audio) tower",
            noun="vision tower",
            short="vision",
            source=Source("vision_model_keys"),
            freeze_flag="freeze_vision_tower",
            priority=1,
            order=1,
            labels={
                "en": "Vision tower",
                "ru": "визуального энкодера",
                "zh": "视觉编码器",
                "ko": "비전 타워",
                "ja": "ビジョンタワー",
            },
            color="#d62728",
            kinds=("lr", "weight_decay", "layer_decay", "start_step", "warmup_steps"),
        ),
        Module(
            name="multi_modal_projector",
            what="the multimodal projector (merger, resampler)",
            noun="projector",
            short="projector",
            source=Source("projector_keys"),
            freeze_flag="freeze_multi_modal_projector",
            priority=0,
            order=2,
            labels={
                "en": "Multimodal projector",
                "ru": "мультимодального проектора",
                "zh": "多模态投影器",
                "ko": "멀티모달 프로젝터",
                "ja": "マルチモーダルプロジェクター",
            },
            color="#2ca02c",
            lora_copy="`additional_target: merger` for Qwen-VL, `multi_modal_projector` for LLaVA",
        ),
        Module(
            name="language_model",
            what="the language model, lm_head included",
            noun="language model",
            short="LLM",
            source=Source("language_model_keys"),
            freeze_flag="freeze_language_model",
            priority=2,
            order=0,
            labels={
                "en": "Language model",
                "ru": "языковой модели",
                "zh": "语言模型",
                "ko": "언어 모델",
                "ja": "言語モデル",
            },
            color="#1f77b4",
        ),
    )
)
