"""The table of modules: one row per module lf-multilr gives its own learning rate, everything else derived.

The keys (``<module>_lr`` ...) and their help, the checks and their messages, the param groups and their order, the
start-of-training table, the plots and LlamaBoard's fields all read these rows; nothing else spells a module out.
A new module is a new row (and, where it needs them, the keys it brings in :attr:`Module.kinds`).

Where a module's parameters come from is its :class:`Source`: some keys of LLaMA-Factory's composite-model registry
entry (for example all of ``vision_model_keys``, or only those that start with ``audio_tower``), plus the rules of
lf-multilr's supplement (:mod:`lf_multilr.grouping.supplement`) that name the module. Where two modules' keys match
one name, the lower :attr:`Module.priority` wins, so a module can be carved out of another's keys (the projector's
``audio_tower.proj`` out of the audio tower's ``audio_tower``, the audio tower out of the vision keys).

A module can be a part that a run asks for (:attr:`Module.part_of`): the audio tower is its own module only in a run
that sets one of its keys or its freeze flag; in every other run its parameters stay with the vision tower, so a
config written before it existed keeps its param groups, its logs and its checkpoints' layout
(:meth:`Table.for_run`).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field, fields
from typing import Literal

#: Trainable parameters that belong to no module: their group and table row.
OTHER = "other"

#: The kinds of key a module can bring, in the order the keys are listed (``<module>_<suffix>``).
ModuleKind = Literal["lr", "weight_decay", "layer_decay", "start_step", "warmup_steps", "min_lr"]
KINDS: tuple[ModuleKind, ...] = ("lr", "weight_decay", "layer_decay", "start_step", "warmup_steps", "min_lr")
#: Every module's keys: its LR and weight decay, when it starts and warms up, and the floor it decays to.
COMMON: tuple[ModuleKind, ...] = ("lr", "weight_decay", "start_step", "warmup_steps", "min_lr")


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
    #: The keys it brings (``<name>_lr`` ...): the common ones, and a layer-wise decay where it has numbered blocks.
    kinds: tuple[ModuleKind, ...] = COMMON
    #: None where LLaMA-Factory's LoRA adapts it on every model; otherwise its layers get adapters only where
    #: ``lora_target`` reaches them (``all`` does on some models, such as Qwen3-VL's mergers), and this names its
    #: full copy in ``additional_target`` per family (for the message that says how to train it).
    lora_copy: str | None = None
    #: The module whose parameters these are in a run that sets none of this module's keys and not its freeze flag
    #: (None: the module is in every run). Its freeze flag is then lf-multilr's own, and while it is unset the
    #: other module's flag freezes both, as LLaMA-Factory's does.
    part_of: str | None = None


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
            if row.part_of is not None and (row.part_of not in names or row.freeze_flag is None):
                raise ValueError(
                    f"module `{row.name}` is part of `{row.part_of}`: that must be a module of the table, and the "
                    "part needs a freeze flag of its own"
                )

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

    def parts(self) -> tuple[Module, ...]:
        """The modules that are parts a run asks for (:attr:`Module.part_of`)."""
        return tuple(row for row in self.rows if row.part_of is not None)

    def for_run(self, asked: Collection[str]) -> Table:
        """The modules of a run that asks for the parts named in ``asked``: every part it does not ask for stays in
        the module it is part of (its row left out, so that module's keys place its parameters)."""
        return Table(tuple(row for row in self.rows if row.part_of is None or row.name in asked))

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
            priority=2,
            order=1,
            labels={
                "en": "Vision tower",
                "ru": "визуального энкодера",
                "zh": "视觉编码器",
                "ko": "비전 타워",
                "ja": "ビジョンタワー",
            },
            color="#d62728",
            kinds=(*COMMON, "layer_decay"),
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
            priority=3,
            order=0,
            labels={
                "en": "Language model",
                "ru": "языковой модели",
                "zh": "语言模型",
                "ko": "언어 모델",
                "ja": "言語モデル",
            },
            color="#1f77b4",
            kinds=(*COMMON, "layer_decay"),
        ),
        Module(
            name="audio_tower",
            what="the audio tower",
            noun="audio tower",
            short="audio",
            # The registry files every audio encoder under the vision keys: Qwen2-Audio's, the Omni thinkers' and
            # Gemma 3n / 4's `audio_tower`, MiniCPM-o's `apm` (and its parameterless `audio_avg_pooler`). Their
            # output projections stay with the projector (`audio_tower.proj` is a projector key, and the
            # projector's priority wins); MiniCPM-o's `audio_projection_layer` is moved there by the supplement.
            source=Source("vision_model_keys", prefixes=("audio_tower", "apm", "audio_avg_pooler")),
            freeze_flag="freeze_audio_tower",
            priority=1,
            order=3,
            labels={
                "en": "Audio tower",
                "ru": "аудиоэнкодера",
                "zh": "音频编码器",
                "ko": "오디오 타워",
                "ja": "音声タワー",
            },
            color="#9467bd",
            kinds=(*COMMON, "layer_decay"),
            part_of="vision_tower",
        ),
    )
)

#: The modules of a run that asks for no part (:meth:`Table.for_run`): what every config that sets no audio-tower key
#: and no ``freeze_audio_tower`` trains with, the same three modules as before the audio tower had a row.
BASE: Table = TABLE.for_run(())
