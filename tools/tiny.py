"""Deterministic, offline builder of tiny random multimodal models and a tiny dataset.

Builds, without any network access, randomly initialised ~200k-parameter versions of six
vision-language families that LLaMA-Factory can train on a CPU in seconds:

* ``qwen2_vl`` / ``qwen2_5_vl`` / ``qwen3_vl``: Qwen2-VL / Qwen2.5-VL (template ``qwen2_vl``) and
  Qwen3-VL (template ``qwen3_vl_nothink``). Text: hidden 64, 2 layers, 4 heads (2 KV), head_dim 16.
  Vision: depth 2, width 32, patch 14, spatial merge 2, temporal patch 2; Qwen3-VL adds an 8x8 learned
  position grid and one DeepStack merger (``deepstack_visual_indexes=[0]``). The image processor is
  capped at 56x56..112x112 pixels, so an image becomes 4-16 ``<|image_pad|>`` tokens.
* ``llava`` / ``llava_next``: llava-1.5 / LLaVA-NeXT style (templates ``llava`` / ``llava_next``).
  CLIP vision tower (hidden 32, 2 layers, image 56 px, patch 14 -> 16 image tokens) + Llama text model
  (hidden 64, 2 layers); LLaVA-NeXT adds up to 2x2 tiles of 56 px and the learned ``image_newline``.
* ``gemma3``: Gemma 3 (template ``gemma3``). SigLIP tower (hidden 32, 2 layers, no head, image 56 px,
  patch 14) pooled to 4 image tokens + Gemma 3 text (hidden 64, a sliding and a full attention layer,
  tied embeddings).

Each model directory holds ``config.json``, float32 ``model.safetensors``, ``generation_config.json``,
the tokenizer, the processor configs and a chat template. The tokenizer is a byte-level BPE
(~400 tokens) trained on the in-file ``CORPUS`` with all 256 bytes as initial alphabet (so any text
encodes), followed by the family's special tokens in their canonical order.
``build_dataset`` writes PIL-drawn shape images and ``dataset_info.json`` declaring ``tiny_mm``
(sharegpt, 8 single-image, 1 two-image, 1 text-only sample), ``tiny_text`` (alpaca),
``tiny_mm_pref`` (sharegpt ranking, for dpo/rm) and ``tiny_mm_kto`` (sharegpt with kto_tag).
``build_sweep_dataset`` writes a larger set for benchmarks whose runs should see mostly new data:
``tiny_sweep_train`` (912 conversations) and ``tiny_sweep_eval`` (48, on 12 held-out images).

Gotchas:

* Determinism: BPE training runs single-threaded (``RAYON_NUM_THREADS=1`` is set before
  ``tokenizers`` is imported) and weights come from ``torch.manual_seed(seed)``; two builds with
  the same seed are byte-identical.
* Special tokens are appended to the trained vocab *before* the tokenizer is built, otherwise
  their ids come out in an odd order.
* Qwen ``mrope_section`` must sum to head_dim / 2 ([2, 3, 3] for head_dim 16) or the first
  forward crashes; Qwen3-VL interleaves the sections ([4, 2, 2]).
* Gemma 3's ``mm_input_projection_weight`` is initialised to zeros by transformers, which blocks every
  gradient to the vision tower; the builder draws it from N(0, 0.1) instead.
* ``gemma3``'s tokenizer names its image tokens (``boi_token``, ``eoi_token``, ``image_token`` as
  ``extra_special_tokens``), which ``Gemma3Processor`` reads from it.
* LLaVA uses ``vision_feature_layer=-1`` with the ``default`` strategy (CLS dropped,
  ``num_additional_image_tokens=1``), so every vision tensor except CLIP's ``post_layernorm``
  receives a gradient.
* The tokenizer of ``llava`` is a generic ``PreTrainedTokenizerFast`` (with ``<s>`` added by
  ``add_bos_token``): transformers 5's ``LlamaTokenizer`` rebuilds a SentencePiece-style pipeline
  that does not match byte-level merges.
* Training: use ``cutoff_len >= 128`` (shorter cuts image tokens: "Image features and image tokens
  do not match") and fp32 on CPU. Under LoRA the projector stays frozen unless
  ``additional_target: merger`` (Qwen) or ``multi_modal_projector`` (LLaVA).
* After one full fine-tuning step with the vision tower unfrozen (lr 1e-3, Adam), every tensor
  changes except, for ``llava`` and ``llava_next``, CLIP's ``post_layernorm.{weight,bias}`` (unused
  with layer -1).
  The ``llava`` CLIP attention ``k_proj.bias`` tensors change only by ~1e-7: without rotary
  embeddings a key bias shifts all scores of a query equally, so its true gradient is zero and
  Adam only amplifies rounding noise. Qwen has no such case (rotary embeddings in both towers).
* transformers 5 saves checkpoints in the original hub layout (e.g. ``visual.*``, ``model.*`` for
  Qwen; ``vision_tower.*``, ``language_model.model.*`` for llava), not the in-memory module names.
* Under transformers 4.x (LLaMA-Factory 0.9.4) a Qwen config saved with a nested ``text_config`` reads back with
  ``model_type`` ``qwen2_vl_text``; the builder drops that nested key so the model reads like a hub checkpoint.
* Known LLaMA-Factory 0.9.5 + transformers 5.6 limitations (not caused by these models):
  ``stage: kto`` fails for Qwen (its KTO trainer drops ``mm_token_type_ids``) but works for llava;
  ``stage: rm`` fails for llava (value head looks for ``model.language_model``) but works for Qwen.

Usage::

    python tools/tiny.py model --family qwen2_vl --out DIR [--seed 0]
    python tools/tiny.py data --out DIR
"""

from __future__ import annotations

import argparse
import json
import os
import random
from pathlib import Path
from typing import Any

os.environ["RAYON_NUM_THREADS"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"

import torch  # noqa: E402
import transformers  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers  # noqa: E402
from transformers import (  # noqa: E402
    CLIPImageProcessor,
    CLIPVisionConfig,
    Gemma3Config,
    Gemma3ForConditionalGeneration,
    Gemma3ImageProcessor,
    Gemma3Processor,
    Gemma3TextConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    LlavaNextImageProcessor,
    LlavaNextProcessor,
    LlavaProcessor,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
    ProcessorMixin,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
    Qwen2AudioConfig,
    Qwen2AudioForConditionalGeneration,
    Qwen2AudioProcessor,
    Qwen2Tokenizer,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen2VLImageProcessor,
    Qwen2VLProcessor,
    Qwen3VLConfig,
    Qwen3VLForConditionalGeneration,
    Qwen3VLProcessor,
    SiglipVisionConfig,
    WhisperFeatureExtractor,
)
from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX  # noqa: E402
from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor  # noqa: E402
from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor  # noqa: E402

FAMILIES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "llava", "llava_next", "gemma3", "qwen2_audio")

CORPUS = (
    "The quick brown fox jumps over the lazy dog. A red square, a green circle and a blue triangle "
    "are drawn on a white background. What shape is in the picture? It is a yellow circle.",
    "Describe the image in one sentence. The image shows a small purple square next to an orange "
    "triangle. Which colour is bigger? The left one is larger than the right one.",
    "You are a helpful assistant. Answer the question briefly and politely. Count the shapes, name "
    "their colours, and say where they are: top, bottom, left, right or centre.",
    "Numbers such as 0 1 2 3 4 5 6 7 8 9 10 and words like yes, no, maybe, many, few, none, "
    "first, second, third appear in short answers. Thank you for asking!",
)
BPE_SIZE = 400
QWEN_SPECIALS = tuple(
    f"<|{name}|>"
    for name in "endoftext im_start im_end object_ref_start object_ref_end box_start box_end quad_start quad_end "
    "vision_start vision_end vision_pad image_pad video_pad".split()
)
QWEN25_EXTRAS = ("<tool_call>", "</tool_call>") + tuple(
    f"<|{name}|>" for name in "fim_prefix fim_middle fim_suffix fim_pad repo_name file_sep".split()
)
QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for c in message['content'] %}{% if c['type'] == 'image' %}"
    "<|vision_start|><|image_pad|><|vision_end|>{% elif c['type'] == 'video' %}"
    "<|vision_start|><|video_pad|><|vision_end|>{% else %}{{ c['text'] }}{% endif %}{% endfor %}"
    "{% endif %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
LLAVA_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'].upper() + ': ' }}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for c in message['content'] %}{% if c['type'] == 'image' %}<image>\n{% else %}{{ c['text'] }}"
    "{% endif %}{% endfor %}{% endif %}{{ '</s>' if message['role'] == 'assistant' else ' ' }}"
    "{% endfor %}{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)
TEXT: dict[str, Any] = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 1024,
}
QWEN_ROPE = {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [2, 3, 3]}
QWEN_PIXELS = {"min_pixels": 56 * 56, "max_pixels": 112 * 112}
LLAVA_NEXT_PINPOINTS = [[56, 56], [56, 112], [112, 56], [112, 112]]
GEMMA_PREFIX = ("<pad>", "<eos>", "<bos>", "<unk>")
GEMMA_SUFFIX = ("<start_of_turn>", "<end_of_turn>", "<start_of_image>", "<end_of_image>", "<image_soft_token>")
GEMMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<start_of_turn>"
    "{{ 'model' if message['role'] == 'assistant' else message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for c in message['content'] %}{% if c['type'] == 'image' %}<start_of_image>{% else %}{{ c['text'] }}"
    "{% endif %}{% endfor %}{% endif %}<end_of_turn>\n{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)
QWEN3_VIDEO_SIZE = {"shortest_edge": 56 * 56, "longest_edge": 112 * 112}
#: transformers 4.x (LLaMA-Factory 0.9.4 pins 4.57) has slow/fast tokenizer pairs and `rope_scaling` configs.
TRANSFORMERS_4 = int(transformers.__version__.split(".")[0]) < 5


def _byte_level(tokenizer: Tokenizer) -> Tokenizer:
    """Give ``tokenizer`` Qwen2's byte-level pipeline (NFC, Qwen2 split regex, byte-level bytes)."""
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


def _train_bpe(prefix: tuple[str, ...], suffix: tuple[str, ...]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Train a byte-level BPE on ``CORPUS`` and return its (vocab, merges).

    ``prefix`` tokens get the first ids and ``suffix`` tokens the last ones, i.e. the special tokens
    sit at their canonical positions and are part of the vocab before any tokenizer is built.
    """
    tokenizer = _byte_level(Tokenizer(models.BPE()))
    trainer = trainers.BpeTrainer(
        vocab_size=BPE_SIZE, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tokenizer.train_from_iterator(CORPUS, trainer)
    bpe = json.loads(tokenizer.to_str())["model"]
    learned = sorted(bpe["vocab"], key=bpe["vocab"].__getitem__)
    vocab = {token: i for i, token in enumerate([*prefix, *learned, *suffix])}
    return vocab, [tuple(merge) for merge in bpe["merges"]]


def _qwen_tokenizer(family: str) -> PreTrainedTokenizerBase:
    """Qwen2 tokenizer: learned BPE, then the Qwen special tokens (eos ``<|im_end|>``, pad ``<|endoftext|>``)."""
    extras = QWEN25_EXTRAS if family != "qwen2_vl" else ()
    vocab, merges = _train_bpe((), QWEN_SPECIALS + extras)
    common: dict[str, Any] = {
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "model_max_length": TEXT["max_position_embeddings"],
    }
    tokenizer: PreTrainedTokenizerBase
    if TRANSFORMERS_4:  # 4.x's Qwen2Tokenizer is the slow one (files only); the fast one takes the same pipeline
        from transformers import Qwen2TokenizerFast

        backend = _byte_level(Tokenizer(models.BPE(vocab=vocab, merges=merges)))
        tokenizer = Qwen2TokenizerFast(tokenizer_object=backend, **common)
    else:
        tokenizer = Qwen2Tokenizer(
            vocab=vocab,
            merges=merges,  # type: ignore[arg-type]  # the BPE backend wants (left, right) tuples
            **common,
        )
    tokenizer.add_special_tokens({"additional_special_tokens": list(QWEN_SPECIALS[1:])})
    tokenizer.add_tokens([AddedToken(token, special=False, normalized=False) for token in extras])
    return tokenizer


def _llava_tokenizer() -> PreTrainedTokenizerFast:
    """Llama-style tokenizer: ``<unk> <s> </s>``, learned BPE, ``<image> <pad>``; prepends ``<s>``."""
    vocab, merges = _train_bpe(("<unk>", "<s>", "</s>"), ("<image>", "<pad>"))
    return PreTrainedTokenizerFast(
        tokenizer_object=_byte_level(Tokenizer(models.BPE(vocab=vocab, merges=merges))),
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        additional_special_tokens=["<image>"],
        add_bos_token=True,
        model_max_length=TEXT["max_position_embeddings"],
    )


def _rope(parameters: dict[str, Any]) -> dict[str, Any]:
    """Text-config keys for ``parameters``: transformers 5's ``rope_parameters``, 4.x's ``rope_theta`` and
    ``rope_scaling``."""
    if not TRANSFORMERS_4:
        return {"rope_parameters": dict(parameters)}
    scaling = {key: value for key, value in parameters.items() if key != "rope_theta"}
    return {"rope_theta": parameters["rope_theta"], "rope_scaling": scaling}


def _padded_vocab(tokenizer: PreTrainedTokenizerBase) -> int:
    """Vocabulary size for the embedding: ``len(tokenizer)`` rounded up to a multiple of 8."""
    return -(-len(tokenizer) // 8) * 8


def _build_qwen(family: str) -> tuple[PreTrainedModel, ProcessorMixin]:
    """Random Qwen2-VL, Qwen2.5-VL or Qwen3-VL model and its processor (image + video processor, tokenizer)."""
    tokenizer = _qwen_tokenizer(family)
    ids = tokenizer.get_vocab()
    text = {
        **TEXT,
        "vocab_size": _padded_vocab(tokenizer),
        **_rope(QWEN_ROPE),
        "bos_token_id": None,
        "eos_token_id": ids["<|im_end|>"],
        "pad_token_id": ids["<|endoftext|>"],
    }
    vision: dict[str, Any] = {"depth": 2, "num_heads": 2, "patch_size": 14, "spatial_merge_size": 2}
    config_cls: type[PretrainedConfig]
    model_cls: type[PreTrainedModel]
    processor_cls: type[ProcessorMixin]
    video_processor: Any = Qwen2VLVideoProcessor(**QWEN_PIXELS)
    if family == "qwen2_vl":
        vision.update(embed_dim=32, hidden_size=TEXT["hidden_size"], mlp_ratio=4)
        config_cls, model_cls, processor_cls = Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLProcessor
    elif family == "qwen2_5_vl":  # window 112 px = 4x4 merged tokens; layer 0 windowed, layer 1 full attention
        vision.update(hidden_size=32, intermediate_size=128, out_hidden_size=TEXT["hidden_size"])
        vision.update(window_size=112, fullatt_block_indexes=[1], tokens_per_second=2)
        config_cls, model_cls = Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
        processor_cls = Qwen2_5_VLProcessor
    else:  # qwen3_vl: 8x8 learned position grid (interpolated); one DeepStack merger, fed into LLM layer 0
        vision.update(hidden_size=32, intermediate_size=128, out_hidden_size=TEXT["hidden_size"])
        vision.update(num_position_embeddings=64, deepstack_visual_indexes=[0])
        text.update(_rope({**QWEN_ROPE, "mrope_section": [4, 2, 2], "mrope_interleaved": True}))
        config_cls, model_cls, processor_cls = Qwen3VLConfig, Qwen3VLForConditionalGeneration, Qwen3VLProcessor
        video_processor = Qwen3VLVideoProcessor(patch_size=14, size=QWEN3_VIDEO_SIZE)
    config = config_cls(
        text_config=text,
        vision_config=vision,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )
    processor = processor_cls(
        image_processor=Qwen2VLImageProcessor(**QWEN_PIXELS),
        video_processor=video_processor,
        tokenizer=tokenizer,
        chat_template=QWEN_CHAT_TEMPLATE,
    )
    return model_cls(config), processor


def _build_llava(family: str) -> tuple[PreTrainedModel, ProcessorMixin]:
    """Random llava-1.5 or LLaVA-NeXT style model (CLIP tower, MLP projector, Llama) and its processor.

    LLaVA-NeXT adds any-resolution tiles (``LLAVA_NEXT_PINPOINTS``: up to 2x2 tiles of 56 px) and the learned
    ``image_newline`` closing each row of tile features.
    """
    tokenizer = _llava_tokenizer()
    image_size, patch_size = 56, 14
    vision = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=image_size,
        patch_size=patch_size,
        projection_dim=32,
    )
    text = LlamaConfig(
        **TEXT,
        vocab_size=_padded_vocab(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    common: dict[str, Any] = {
        "vision_config": vision,
        "text_config": text,
        "image_token_index": tokenizer.get_vocab()["<image>"],
        "image_seq_length": (image_size // patch_size) ** 2,
        "vision_feature_layer": -1,
        "vision_feature_select_strategy": "default",
        "tie_word_embeddings": False,
    }
    sizes: dict[str, Any] = {
        "size": {"shortest_edge": image_size},
        "crop_size": {"height": image_size, "width": image_size},
    }
    processor_kwargs: dict[str, Any] = {
        "tokenizer": tokenizer,
        "patch_size": patch_size,
        "vision_feature_select_strategy": "default",
        "num_additional_image_tokens": 1,
        "chat_template": LLAVA_CHAT_TEMPLATE,
    }
    if family == "llava":
        processor: ProcessorMixin = LlavaProcessor(image_processor=CLIPImageProcessor(**sizes), **processor_kwargs)
        return LlavaForConditionalGeneration(LlavaConfig(**common)), processor
    image_processor = LlavaNextImageProcessor(**sizes, image_grid_pinpoints=LLAVA_NEXT_PINPOINTS)
    processor = LlavaNextProcessor(image_processor=image_processor, **processor_kwargs)
    config = LlavaNextConfig(**common, image_grid_pinpoints=LLAVA_NEXT_PINPOINTS)
    return LlavaNextForConditionalGeneration(config), processor


def llava_parts() -> tuple[LlavaConfig, ProcessorMixin]:
    """The ``llava`` family's config and processor (tokenizer, CLIP image processor, chat template), unsaved: the
    base of LLaVA models of other sizes built elsewhere (``bench/evidence.py`` pretrains one)."""
    model, processor = _build_llava("llava")
    return model.config, processor


def _gemma3_tokenizer() -> PreTrainedTokenizerFast:
    """Gemma-style tokenizer: ``<pad> <eos> <bos> <unk>``, learned BPE, turn and image tokens.

    The image tokens are named (``boi_token``, ``eoi_token``, ``image_token``), as ``Gemma3Processor`` reads them.
    """
    vocab, merges = _train_bpe(GEMMA_PREFIX, GEMMA_SUFFIX)
    return PreTrainedTokenizerFast(
        tokenizer_object=_byte_level(Tokenizer(models.BPE(vocab=vocab, merges=merges))),
        pad_token="<pad>",
        eos_token="<eos>",
        bos_token="<bos>",
        unk_token="<unk>",
        extra_special_tokens=dict(zip(("boi_token", "eoi_token", "image_token"), GEMMA_SUFFIX[2:], strict=True)),
        model_max_length=TEXT["max_position_embeddings"],
    )


def _build_gemma3() -> tuple[PreTrainedModel, ProcessorMixin]:
    """Random Gemma 3 model (SigLIP tower, 2x2-pooling projector, Gemma 3 text with tied embeddings) and processor.

    A 56 px image gives 4x4 SigLIP patches, pooled to ``mm_tokens_per_image`` = 4 image tokens.
    """
    tokenizer = _gemma3_tokenizer()
    ids = tokenizer.get_vocab()
    image_size, patch_size, image_tokens = 56, 14, 4
    text = Gemma3TextConfig(
        **TEXT,
        vocab_size=_padded_vocab(tokenizer),
        head_dim=16,
        query_pre_attn_scalar=16,
        layer_types=["sliding_attention", "full_attention"],
        sliding_window=64,
        bos_token_id=ids["<bos>"],
        eos_token_id=ids["<eos>"],
        pad_token_id=ids["<pad>"],
    )
    vision = SiglipVisionConfig(
        hidden_size=32,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=image_size,
        patch_size=patch_size,
    )
    vision.vision_use_head = False  # Gemma 3 reads the patch features, not SigLIP's pooling head
    config = Gemma3Config(
        text_config=text,
        vision_config=vision,
        mm_tokens_per_image=image_tokens,
        boi_token_index=ids["<start_of_image>"],
        eoi_token_index=ids["<end_of_image>"],
        image_token_index=ids["<image_soft_token>"],
    )
    processor = Gemma3Processor(
        image_processor=Gemma3ImageProcessor(size={"height": image_size, "width": image_size}),
        tokenizer=tokenizer,
        chat_template=GEMMA3_CHAT_TEMPLATE,
        image_seq_length=image_tokens,
    )
    model = Gemma3ForConditionalGeneration(config)
    # transformers initialises the projection to zeros, which would keep every gradient from the vision tower
    torch.nn.init.normal_(model.model.multi_modal_projector.mm_input_projection_weight, std=0.1)
    return model, processor


#: Qwen2-Audio's audio special tokens, in the order its tokenizer has them.
QWEN_AUDIO_SPECIALS = ("<|audio_bos|>", "<|audio_eos|>", "<|AUDIO|>")
#: Audio: 16 kHz, at most 2 s (Whisper's feature extractor pads every clip to 200 frames of 16 mel bins), so the
#: encoder sees 100 positions and a 1 s clip becomes 25 audio tokens.
AUDIO_RATE, AUDIO_SECONDS, AUDIO_MELS = 16000, 2, 16


def _build_qwen2_audio() -> tuple[PreTrainedModel, ProcessorMixin]:
    """Random Qwen2-Audio (Whisper-style audio encoder, linear projector, Qwen2) and its processor (Whisper's
    feature extractor, the Qwen tokenizer with the audio tokens)."""
    tokenizer = _qwen_tokenizer("qwen2_vl")
    tokenizer.add_special_tokens({"additional_special_tokens": [*QWEN_SPECIALS[1:], *QWEN_AUDIO_SPECIALS]})
    ids = tokenizer.get_vocab()
    text = {
        **TEXT,
        "model_type": "qwen2",
        "vocab_size": _padded_vocab(tokenizer),
        **_rope({"rope_type": "default", "rope_theta": 1000000.0}),
        "bos_token_id": None,
        "eos_token_id": ids["<|im_end|>"],
        "pad_token_id": ids["<|endoftext|>"],
    }
    audio = {
        "num_mel_bins": AUDIO_MELS,
        "d_model": 32,
        "encoder_layers": 2,
        "encoder_attention_heads": 2,
        "encoder_ffn_dim": 64,
        "max_source_positions": AUDIO_SECONDS * 50,  # 100 frames a second, halved by the second conv
    }
    config = Qwen2AudioConfig(
        audio_config=audio, text_config=text, audio_token_index=ids["<|AUDIO|>"], tie_word_embeddings=False
    )
    features = WhisperFeatureExtractor(
        feature_size=AUDIO_MELS, sampling_rate=AUDIO_RATE, chunk_length=AUDIO_SECONDS, hop_length=160, n_fft=400
    )
    processor = Qwen2AudioProcessor(feature_extractor=features, tokenizer=tokenizer, chat_template=QWEN_CHAT_TEMPLATE)
    return Qwen2AudioForConditionalGeneration(config), processor


def build_model(family: str, out_dir: str | Path, seed: int = 0) -> Path:
    """Write a loadable tiny random model of ``family`` (one of ``FAMILIES``) to ``out_dir``."""
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; expected one of {FAMILIES}")
    out = Path(out_dir)
    torch.manual_seed(seed)
    if family.startswith("llava"):
        model, processor = _build_llava(family)
    elif family == "qwen2_audio":
        model, processor = _build_qwen2_audio()
    else:
        model, processor = _build_gemma3() if family == "gemma3" else _build_qwen(family)
    model.float().save_pretrained(out)
    processor.save_pretrained(out)
    if TRANSFORMERS_4:
        _read_like_the_hub(out, type(model.config).model_type)
    return out


def _read_like_the_hub(out: Path, model_type: str) -> None:
    """transformers 4.x writes Qwen2-VL's nested ``text_config`` with its own ``model_type`` (``qwen2_vl_text``) and,
    reading it back, reports that as the model's type, so LLaMA-Factory 0.9.4 finds no registry entry for it (its
    freeze flags then do nothing). Hub checkpoints are flat and have no such key: drop it, so the tiny model reads
    like them."""
    from transformers import AutoConfig

    if AutoConfig.from_pretrained(out).model_type == model_type:
        return
    path = out / "config.json"
    config = json.loads(path.read_text())
    del config["text_config"]["model_type"]
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


SHAPES = ("circle", "square", "triangle")
COLOURS = {"red": (220, 30, 30), "green": (30, 170, 60), "blue": (40, 60, 220), "yellow": (230, 200, 20)}
SIZES = ((56, 56), (84, 56), (112, 84), (112, 112), (56, 112), (84, 84), (98, 70), (70, 98))


def _draw(path: Path, shape: str, colour: str, size: tuple[int, int]) -> None:
    """Draw one ``colour`` ``shape`` centred on a white ``size`` canvas and save it as PNG."""
    width, height = size
    image = Image.new("RGB", size, (255, 255, 255))
    box = (width // 5, height // 5, width - width // 5, height - height // 5)
    draw = ImageDraw.Draw(image)
    fill = COLOURS[colour]
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    else:
        draw.polygon([(width // 2, box[1]), (box[2], box[3]), (box[0], box[3])], fill=fill)
    image.save(path)


def _chat(*turns: str) -> list[dict[str, str]]:
    """Alternate user/assistant messages in sharegpt ``role``/``content`` form."""
    roles = ("user", "assistant")
    return [{"role": roles[i % 2], "content": text} for i, text in enumerate(turns)]


SHAREGPT_TAGS = {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"}
TEXT_SAMPLES = (
    ("Say hello.", "", "Hello!"),
    ("Add the numbers.", "2 and 3", "5"),
    ("Name a colour.", "", "Blue."),
    ("Name a shape with three sides.", "", "A triangle."),
    ("Is the sky green?", "", "No, it is blue."),
    ("Repeat the word.", "circle", "circle"),
    ("Count to three.", "", "1 2 3"),
    ("Answer politely.", "Thank you!", "You are welcome."),
)


def build_dataset(out_dir: str | Path) -> Path:
    """Write images, data files and ``dataset_info.json`` to ``out_dir``.

    Declares ``tiny_mm``, ``tiny_text``, ``tiny_mm_pref`` and ``tiny_mm_kto``; image paths are relative to
    ``out_dir``, which LLaMA-Factory uses as ``media_dir`` by default (``dataset_dir: out_dir``).
    """
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    items = []
    for i, size in enumerate(SIZES):
        shape, colour = SHAPES[i % len(SHAPES)], list(COLOURS)[i % len(COLOURS)]
        name = f"images/{i}_{colour}_{shape}.png"
        _draw(out / name, shape, colour, size)
        items.append((name, shape, colour))

    questions = ("What is in the picture?", "Describe the image.", "Which colour is the shape?")
    mm = [
        {"messages": _chat(f"<image>{questions[i % 3]}", f"A {colour} {shape}."), "images": [name]}
        for i, (name, shape, colour) in enumerate(items)
    ]
    (a, shape_a, colour_a), (b, shape_b, colour_b) = items[0], items[1]
    mm.append(
        {
            "messages": _chat(
                "<image><image>Compare the two images.",
                f"The first is a {colour_a} {shape_a}, the second a {colour_b} {shape_b}.",
            ),
            "images": [a, b],
        }
    )
    mm.append(
        {"messages": _chat("Which shape has four equal sides?", "A square.", "And three?", "A triangle."), "images": []}
    )

    def answer(text: str) -> dict[str, str]:
        return {"role": "assistant", "content": text}

    def wrong(shape: str) -> str:
        return SHAPES[(SHAPES.index(shape) + 1) % len(SHAPES)]

    pref = [
        {
            "messages": _chat("<image>What is in the picture?"),
            "images": [name],
            "chosen": answer(f"A {colour} {shape}."),
            "rejected": answer(f"A {colour} {wrong(shape)}."),
        }
        for name, shape, colour in items[:6]
    ]
    kto = [
        {
            "messages": _chat("<image>What is in the picture?", f"A {colour} {shape if j % 2 else wrong(shape)}."),
            "images": [name],
            "label": bool(j % 2),
        }
        for j, (name, shape, colour) in enumerate(items[:6])
    ]
    text = [{"instruction": q, "input": x, "output": y} for q, x, y in TEXT_SAMPLES]

    files = {"tiny_mm": mm, "tiny_text": text, "tiny_mm_pref": pref, "tiny_mm_kto": kto}
    for name, rows in files.items():
        (out / f"{name}.json").write_text(json.dumps(rows, indent=2) + "\n")
    mm_columns = {"messages": "messages", "images": "images"}
    info = {
        "tiny_mm": {
            "file_name": "tiny_mm.json",
            "formatting": "sharegpt",
            "columns": mm_columns,
            "tags": SHAREGPT_TAGS,
        },
        "tiny_text": {
            "file_name": "tiny_text.json",
            "columns": {"prompt": "instruction", "query": "input", "response": "output"},
        },
        "tiny_mm_pref": {
            "file_name": "tiny_mm_pref.json",
            "formatting": "sharegpt",
            "ranking": True,
            "columns": {**mm_columns, "chosen": "chosen", "rejected": "rejected"},
            "tags": SHAREGPT_TAGS,
        },
        "tiny_mm_kto": {
            "file_name": "tiny_mm_kto.json",
            "formatting": "sharegpt",
            "columns": {**mm_columns, "kto_tag": "label"},
            "tags": SHAREGPT_TAGS,
        },
    }
    (out / "dataset_info.json").write_text(json.dumps(info, indent=2) + "\n")
    return out


#: Pitches of the generated audio clips (Hz), each named as the answer says it.
TONES = {"low": 220.0, "middle": 440.0, "high": 880.0}


def _write_tone(path: Path, hertz: float, seconds: float) -> None:
    """A sine wave of ``hertz`` for ``seconds``, written as 16-bit mono WAV at :data:`AUDIO_RATE`."""
    import wave

    samples = torch.arange(int(AUDIO_RATE * seconds)) / AUDIO_RATE
    wave_ = (0.3 * torch.sin(2 * torch.pi * hertz * samples) * 32767).to(torch.int16)
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(AUDIO_RATE)
        out.writeframes(wave_.numpy().tobytes())


def build_audio_dataset(out_dir: str | Path) -> Path:
    """Write sine-wave WAV clips, ``tiny_audio.json`` and ``dataset_info.json`` (declaring ``tiny_audio``) to
    ``out_dir``; audio paths are relative to it, LLaMA-Factory's ``media_dir`` by default."""
    out = Path(out_dir)
    (out / "audios").mkdir(parents=True, exist_ok=True)
    rows = []
    for i, (name, hertz) in enumerate(TONES.items()):
        for seconds in (0.5, 1.0):
            clip = f"audios/{name}_{seconds:g}s.wav"
            _write_tone(out / clip, hertz, seconds)
            question = ("<audio>Which pitch is the tone?", "<audio>Describe the sound.")[i % 2]
            rows.append({"messages": _chat(question, f"A {name} tone of {seconds:g} seconds."), "audios": [clip]})
    (out / "tiny_audio.json").write_text(json.dumps(rows, indent=2) + "\n")
    info = {
        "tiny_audio": {
            "file_name": "tiny_audio.json",
            "formatting": "sharegpt",
            "columns": {"messages": "messages", "audios": "audios"},
            "tags": SHAREGPT_TAGS,
        }
    }
    (out / "dataset_info.json").write_text(json.dumps(info, indent=2) + "\n")
    return out


def build_v1_dataset(out_dir: str | Path) -> Path:
    """The multimodal samples of :func:`build_dataset` in the v1 engine's format (``USE_V1=1``): a JSONL of
    ``{"messages": [{"role", "content": [{"type": "image_url" | "text", "value"}]}]}`` with absolute image paths, and
    the dataset YAML that names it (``train_dataset``); returns the YAML's path."""
    out = Path(out_dir)
    build_dataset(out)
    rows = []
    for sample in json.loads((out / "tiny_mm.json").read_text()):
        images = iter(sample["images"])
        messages = []
        for message in sample["messages"]:
            text = message["content"]
            content = [{"type": "image_url", "value": str(out / next(images))} for _ in range(text.count("<image>"))]
            content.append({"type": "text", "value": text.replace("<image>", "")})
            messages.append({"role": message["role"], "content": content})
        rows.append(json.dumps({"messages": messages}))
    (out / "tiny_mm_v1.jsonl").write_text("\n".join(rows) + "\n")
    info = out / "tiny_mm_v1.yaml"
    info.write_text(f"tiny_mm_v1:\n  path: {out / 'tiny_mm_v1.jsonl'}\n  source: local\n")
    return info


SWEEP_SHAPES = ("circle", "square", "triangle", "diamond")
SWEEP_COLOURS = {**COLOURS, "purple": (140, 40, 170), "orange": (240, 130, 20)}
SWEEP_SCALES = {"small": 4, "large": 2}  # the shape spans 1/4 or 1/2 of the canvas
SWEEP_PLACES = {"centre": (0.5, 0.5), "top left": (0.27, 0.27), "top right": (0.73, 0.27),
                "bottom left": (0.27, 0.73), "bottom right": (0.73, 0.73)}  # fmt: skip
SWEEP_QUESTIONS = (  # (two phrasings, the answer's pattern); each image gets every kind once
    (("What is in the picture?", "Describe the image."), "A {scale} {colour} {shape} in the {place}."),
    (("Which colour is the shape?", "What colour do you see?"), "{Colour}."),
    (("Where is the shape?", "Where is it placed?"), "In the {place}."),
    (("What shape is it?", "Name the shape."), "A {shape}."),
)
SWEEP_CANVAS = 84


def _draw_placed(path: Path, shape: str, colour: str, scale: str, place: str) -> None:
    """Draw one ``colour`` ``shape`` of ``scale`` at ``place`` on a white square canvas and save it as PNG."""
    image = Image.new("RGB", (SWEEP_CANVAS, SWEEP_CANVAS), (255, 255, 255))
    half = SWEEP_CANVAS // SWEEP_SCALES[scale] // 2
    x, y = (round(SWEEP_CANVAS * c) for c in SWEEP_PLACES[place])
    left, top, right, bottom = x - half, y - half, x + half, y + half
    draw, fill = ImageDraw.Draw(image), SWEEP_COLOURS[colour]
    if shape == "circle":
        draw.ellipse((left, top, right, bottom), fill=fill)
    elif shape == "square":
        draw.rectangle((left, top, right, bottom), fill=fill)
    elif shape == "triangle":
        draw.polygon([(x, top), (right, bottom), (left, bottom)], fill=fill)
    else:
        draw.polygon([(x, top), (right, y), (x, bottom), (left, y)], fill=fill)
    image.save(path)


def build_sweep_dataset(out_dir: str | Path, held_out: int = 12, seed: int = 0) -> Path:
    """Write a larger multimodal SFT set for benchmarks whose runs should see mostly new data: one image per
    (shape, colour, scale, place), 4 x 6 x 2 x 5 = 240 images, each asked four kinds of question (two phrasings
    each), 960 conversations. ``held_out`` images (chosen with ``seed``) and all their questions form the eval set.

    Declares ``tiny_sweep_train`` and ``tiny_sweep_eval`` in ``dataset_info.json``; paths as in ``build_dataset``.
    """
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    images = [
        (shape, colour, scale, place)
        for shape in SWEEP_SHAPES
        for colour in SWEEP_COLOURS
        for scale in SWEEP_SCALES
        for place in SWEEP_PLACES
    ]
    random.Random(seed).shuffle(images)
    splits: dict[str, list[dict[str, Any]]] = {"tiny_sweep_eval": [], "tiny_sweep_train": []}
    for i, (shape, colour, scale, place) in enumerate(images):
        name = f"images/{i}_{scale}_{colour}_{shape}_{place.replace(' ', '_')}.png"
        _draw_placed(out / name, shape, colour, scale, place)
        rows = splits["tiny_sweep_eval" if i < held_out else "tiny_sweep_train"]
        for k, (phrasings, pattern) in enumerate(SWEEP_QUESTIONS):
            reply = pattern.format(shape=shape, colour=colour, Colour=colour.capitalize(), scale=scale, place=place)
            rows.append({"messages": _chat(f"<image>{phrasings[(i + k) % 2]}", reply), "images": [name]})
    info = {}
    for name, rows in splits.items():
        random.Random(seed).shuffle(rows)
        (out / f"{name}.json").write_text(json.dumps(rows, indent=2) + "\n")
        info[name] = {
            "file_name": f"{name}.json",
            "formatting": "sharegpt",
            "columns": {"messages": "messages", "images": "images"},
            "tags": SHAREGPT_TAGS,
        }
    (out / "dataset_info.json").write_text(json.dumps(info, indent=2) + "\n")
    return out


def main(argv: list[str] | None = None) -> None:
    """Command line: ``model --family F --out DIR [--seed N]`` or ``data --out DIR``; prints the path."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    model = commands.add_parser("model", help="build a tiny random model")
    model.add_argument("--family", choices=FAMILIES, required=True)
    model.add_argument("--out", type=Path, required=True)
    model.add_argument("--seed", type=int, default=0)
    data = commands.add_parser("data", help="build the tiny dataset")
    data.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    path = build_model(args.family, args.out, args.seed) if args.command == "model" else build_dataset(args.out)
    print(path)


if __name__ == "__main__":
    main()
