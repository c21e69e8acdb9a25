"""lf-multilr's supplement to LLaMA-Factory's composite-model registry: one table, a reason per row.

LLaMA-Factory's registry (``COMPOSITE_MODELS``) names each module by substring keys. Under transformers 5.x some
keys miss real parameters, some match two modules, and a few give a part to a module it does not belong to. Each
:class:`Rule` below puts such parameters in the right module. A rule matches a parameter the way the registry
does (a key is a substring of the name, wrapper prefixes removed) and is consulted before the registry's keys;
it decides a parameter only when the registry's own answer differs (so a rule the registry has caught up with
changes nothing). ``registry`` says what LLaMA-Factory's registry does with the rule's names, i.e. which
``freeze_*`` flags freeze them; ``tests/test_models.py`` checks it against LLaMA-Factory's own freezing code.

A second table, :data:`POSITIONS`, serves layer-wise decay (:mod:`lf_multilr.grouping.blocks`): where a model defines
a tensor in another order than its forward pass runs it, a :class:`Position` says where it runs in its stack.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass


@dataclass(frozen=True)
class Rule:
    """Parameters of ``model_types`` whose names contain one of ``keys`` belong to ``module``."""

    model_types: tuple[str, ...]
    keys: tuple[str, ...]
    module: str
    #: The modules LLaMA-Factory's registry gives these names (empty: none, so no freeze flag reaches them).
    registry: tuple[str, ...]
    reason: str
    #: A part of a module (:attr:`lf_multilr.modules.Module.part_of`) the rule waits for: it applies only in a run
    #: that asks for that part (None: always), so a run that does not keeps its groups.
    with_part: str | None = None

    def matches(self, normalized_name: str) -> bool:
        return any(key in normalized_name for key in self.keys)


SUPPLEMENT: tuple[Rule, ...] = (
    Rule(
        ("glm4v", "glm4v_moe", "glm_ocr"),
        ("visual.embeddings", "visual.post_conv_layernorm", "visual.post_layernorm", "visual.downsample"),
        "vision_tower",
        (),
        "the GLM vision model has position embeddings, extra norms and a downsampling conv that Qwen2-VL's has "
        "not; the registry's keys, copied from Qwen2-VL, miss them. Only `visual.merger` is the projector "
        "(as in ms-swift)",
    ),
    Rule(
        ("llava_next", "llava_next_video"),
        ("image_newline",),
        "multi_modal_projector",
        (),
        "`image_newline` is a learned vector of the LLM's width placed between rows of the projected image "
        "features; LLaVA creates it next to `mm_projector`. No registry key matches it",
    ),
    Rule(
        ("video_llava",),
        ("image_tower", "video_tower"),
        "vision_tower",
        (),
        "Video-LLaVA's towers are `image_tower` and `video_tower`; the registry's default key `vision_tower` "
        "matches neither, so `freeze_vision_tower` freezes nothing",
    ),
    Rule(
        ("qwen3_vl", "qwen3_vl_moe"),
        ("visual.deepstack_merger_list",),
        "multi_modal_projector",
        ("vision_tower",),
        "DeepStack mergers are patch mergers of the same class as `visual.merger`, projecting intermediate "
        "vision features into the LLM's first layers: projector by function (ms-swift's aligner, and the "
        "registry's own reading for Qwen3-Omni's `merger_list`); the registry lists them as vision tower",
    ),
    Rule(
        ("qwen3_omni_moe_thinker",),
        ("visual.merger_list",),
        "multi_modal_projector",
        ("multi_modal_projector",),
        "DeepStack mergers, as for Qwen3-VL; the registry's `visual.merger` key matches `visual.merger_list` "
        "only as a substring, and lf-multilr keeps that answer on purpose",
    ),
    Rule(
        ("qwen2_5_omni_thinker", "qwen3_omni_moe_thinker"),
        ("audio_tower.proj",),
        "multi_modal_projector",
        ("multi_modal_projector", "vision_tower"),
        "the audio tower's output projection matches both the projector key `audio_tower.proj` and the tower "
        "key `audio_tower`; it maps audio features to the LLM's width, so the projector takes it",
    ),
    Rule(
        ("qwen3_omni_moe_thinker",),
        ("model.embed_tokens", "model.layers.", "model.norm."),
        "language_model",
        (),
        "the thinker's language model is `model.*` (the Qwen2.5-Omni entry uses the key `model`); the "
        "registry's `language_model` key matches none of it, leaving only `lm_head`",
    ),
    Rule(
        ("gemma3n",),
        ("embed_vision", "embed_audio"),
        "multi_modal_projector",
        (),
        "Gemma 3n's projectors are the multimodal embedders `embed_vision` / `embed_audio` (the Gemma 4 entry "
        "uses these keys); the registry's default key `multi_modal_projector` matches nothing",
    ),
    Rule(
        ("minicpmo",),
        ("audio_projection_layer",),
        "multi_modal_projector",
        ("vision_tower",),
        "MiniCPM-o's `audio_projection_layer` maps the audio encoder's features to the LLM's width, as "
        "`resampler` does for vision and as Qwen-Omni's `audio_tower.proj` and Gemma's `embed_audio` do: the "
        "projector, once the audio tower is a module of its own. The registry files it with the towers; in a run "
        "that sets no audio-tower key it stays with the vision tower, where it always was",
        with_part="audio_tower",
    ),
)


def rules_for(model_type: str) -> tuple[Rule, ...]:
    """The supplement's rules for ``model_type``, in table order."""
    return tuple(rule for rule in SUPPLEMENT if model_type in rule.model_types)


#: :attr:`Position.at`: the tensors run before their stack's first block (its embeddings).
EMBEDDINGS_AT = "embeddings"
#: :attr:`Position.at`: the tensors run after their stack's last block (its head).
HEAD_AT = "head"
#: :attr:`Position.at` ``after:<container>``: the tensors run after the last block of ``<container>`` and before the
#: next blocks of the stack, so they train with that last block.
AFTER = "after:"
#: :attr:`Position.at`: the rule's keys are block containers numbered ``<container>.S.B`` (stage S, block B), each
#: (S, B) one block, in order.
STAGES = "stages"


@dataclass(frozen=True)
class Position:
    """For layer-wise decay: where tensors of ``model_types`` whose names contain one of ``keys`` run in their stack,
    where ``named_parameters()`` order does not say it (see :mod:`lf_multilr.grouping.blocks`)."""

    model_types: tuple[str, ...]
    keys: tuple[str, ...]
    #: ``embeddings``, ``head``, ``after:<container>`` or ``stages`` (the constants above).
    at: str
    reason: str

    def matches(self, normalized_name: str) -> bool:
        return any(key in normalized_name for key in self.keys)


POSITIONS: tuple[Position, ...] = (
    Position(
        ("mllama",),
        ("vision_model.layernorm_post", "vision_model.post_tile_positional_embedding"),
        f"{AFTER}transformer.layers",
        "Mllama's vision model runs its 32 local layers (`transformer.layers`), then `layernorm_post` and the "
        "post-tile position embedding, then its 8 global layers (`global_transformer.layers`) on top; both are "
        "defined before the layers",
    ),
    Position(
        ("llama4",),
        ("vision_model.layernorm_post",),
        HEAD_AT,
        "Llama 4's vision model runs `layernorm_post` after its layers (then the vision adapter); it is defined "
        "before them",
    ),
    Position(
        ("glm4v", "glm4v_moe"),
        ("visual.post_conv_layernorm",),
        EMBEDDINGS_AT,
        "GLM-4V's vision model normalizes the patch embeddings with `post_conv_layernorm` before the position "
        "embeddings and the blocks; it is defined after the blocks",
    ),
    Position(
        ("qwen3_omni_moe_thinker",),
        ("audio_tower.conv2d1", "audio_tower.conv2d2", "audio_tower.conv2d3", "audio_tower.conv_out"),
        EMBEDDINGS_AT,
        "Qwen3-Omni's audio encoder runs its convolution stem (`conv2d1-3`, `conv_out`) before its layers; it is "
        "defined after them",
    ),
    Position(
        ("gemma3n",),
        ("timm_model.blocks",),
        STAGES,
        "Gemma 3n's vision tower is timm's MobileNetV5, numbered `blocks.<stage>.<block>`; each block is a layer, "
        "as timm's own fine-grained group matcher (`^blocks\\.(\\d+)\\.(\\d+)`) counts them for layer decay",
    ),
    Position(
        ("gemma3n",),
        (
            "language_model.embed_tokens_per_layer",
            "language_model.per_layer_model_projection",
            "language_model.per_layer_projection_norm",
            "language_model.altup_projections",
        ),
        EMBEDDINGS_AT,
        "Gemma 3n's language model computes the per-layer inputs and the AltUp streams from the token embeddings "
        "before its first layer; they are defined after the layers",
    ),
    Position(
        ("gemma4",),
        (
            "language_model.embed_tokens_per_layer",
            "language_model.per_layer_model_projection",
            "language_model.per_layer_projection_norm",
        ),
        EMBEDDINGS_AT,
        "Gemma 4's language model computes the per-layer inputs from the token embeddings before its first layer; "
        "they are defined after the layers",
    ),
)


def positions_for(model_type: str) -> tuple[Position, ...]:
    """The layer-decay positions for ``model_type``, in table order."""
    return tuple(rule for rule in POSITIONS if model_type in rule.model_types)


def left_open(model_type: str, frozen: Collection[str]) -> set[str]:
    """The modules of which the supplement places parts in ``model_type`` that no freeze flag of the ``frozen``
    modules reaches (LLaMA-Factory's registry gives those parts to no frozen module), so that these flags alone
    cannot say the module has nothing trainable: Qwen3-VL's DeepStack mergers train under
    ``freeze_multi_modal_projector: true`` unless the vision tower is frozen too."""
    return {rule.module for rule in rules_for(model_type) if not set(rule.registry) & set(frozen)}
