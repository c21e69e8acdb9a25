"""Tiny configs for every model type in LLaMA-Factory's composite-model registry that transformers can build.

``build(model_type)`` makes the model the way LLaMA-Factory's loader picks its class (image-text-to-text,
then seq2seq for audio, then text-to-waveform, of which it keeps the ``thinker``), from a config with tiny
dimensions (text: hidden 64, 2 layers; towers: width 32, 2 layers), on the meta device by default: the
parameter names and shapes are real, no memory is allocated and nothing is downloaded. Grouping tests and
``tools/models_table.py`` need no more; the trainable tiny models with tokenizers and processors are in
``tools/tiny.py``.

Gotchas:

* The omni thinkers are built from their thinker configs (``qwen2_5_omni_thinker``,
  ``qwen3_omni_moe_thinker``): LLaMA-Factory loads the whole omni model and keeps ``model.thinker``, whose
  parameter names are the same.
* Gemma 3n's vision tower is a timm MobileNetV5 (``mobilenetv5_base`` here, the smallest timm offers); it
  needs the ``timm`` package, and without it ``build("gemma3n")`` raises ImportError.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from transformers import (
    CONFIG_MAPPING,
    AutoModelForImageTextToText,
    AutoModelForSeq2SeqLM,
    AutoModelForTextToWaveform,
    PretrainedConfig,
)

#: Model types that need a package outside LLaMA-Factory's requirements to build.
NEEDS: dict[str, str] = {"gemma3n": "timm"}

#: Registry types whose code lives on the hub (``trust_remote_code``): not buildable offline.
REMOTE: tuple[str, ...] = (
    *("Keye", "dots_ocr", "interns1", "kimi_vl", "minicpmo", "minicpmv", "minicpmv4_6"),
    "moss_vl",  # LLaMA-Factory main's 32nd type
)

TEXT: dict[str, Any] = {
    "vocab_size": 512,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "max_position_embeddings": 1024,
}
MROPE = {"rope_parameters": {"rope_type": "default", "rope_theta": 1.0e6, "mrope_section": [2, 3, 3]}}
MOE = {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32}
#: A Qwen-style vision tower: 2 blocks of width 32, patches of 14 merged 2x2 into the text width.
QWEN_VISION: dict[str, Any] = {
    "depth": 2,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_heads": 2,
    "patch_size": 14,
    "out_hidden_size": TEXT["hidden_size"],
}
CLIP: dict[str, Any] = {
    "model_type": "clip_vision_model",
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "image_size": 56,
    "patch_size": 14,
    "projection_dim": 32,
}
SIGLIP: dict[str, Any] = {**CLIP, "model_type": "siglip_vision_model", "vision_use_head": False}
QWEN_AUDIO: dict[str, Any] = {
    "num_mel_bins": 16,
    "d_model": 32,
    "encoder_layers": 2,
    "encoder_attention_heads": 2,
    "encoder_ffn_dim": 64,
}
GEMMA_LAYERS = {"layer_types": ["sliding_attention", "full_attention"], "sliding_window": 64}


def _text(**extra: Any) -> dict[str, Any]:
    return {**TEXT, **extra}


def _llava_like() -> dict[str, Any]:
    return {"text_config": _text(model_type="llama"), "vision_config": dict(CLIP)}


def _qwen_vl(vision: dict[str, Any], text: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"vision_config": {**QWEN_VISION, **vision}, "text_config": text or _text(**MROPE)}


def _qwen3_5(**text: Any) -> dict[str, Any]:
    linear = {
        "layer_types": ["linear_attention", "full_attention"],
        "linear_key_head_dim": 16,
        "linear_value_head_dim": 16,
        "linear_num_key_heads": 2,
        "linear_num_value_heads": 4,
    }
    return _qwen_vl({"num_position_embeddings": 64}, _text(**MROPE, **linear, **text))


def _glm(**text: Any) -> dict[str, Any]:
    return {
        "vision_config": {**QWEN_VISION, "image_size": 56},
        "text_config": _text(**MROPE, **text),
    }


def _omni(audio: dict[str, Any], vision: dict[str, Any], **text: Any) -> dict[str, Any]:
    return {
        "audio_config": {**QWEN_AUDIO, "output_dim": TEXT["hidden_size"], **audio},
        "vision_config": {**QWEN_VISION, **vision},
        "text_config": _text(**MROPE, **text),
    }


def _gemma4() -> dict[str, Any]:
    vision = {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "position_embedding_size": 64,
    }
    audio = {
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "subsampling_conv_channels": [8, 4],
        "output_proj_dims": 32,
    }
    text = _text(**GEMMA_LAYERS, global_head_dim=16, vocab_size_per_layer_input=512, hidden_size_per_layer_input=16)
    return {"text_config": text, "vision_config": vision, "audio_config": audio}


def _gemma3n() -> dict[str, Any]:
    text = _text(
        **GEMMA_LAYERS,
        intermediate_size=[128, 128],
        vocab_size_per_layer_input=512,
        hidden_size_per_layer_input=16,
        num_kv_shared_layers=0,
        altup_num_inputs=2,
        laurel_rank=8,
        activation_sparsity_pattern=[0.0, 0.0],
    )
    vision = {"architecture": "mobilenetv5_base", "vocab_offset": 512, "vocab_size": 16}
    audio = {
        "hidden_size": 32,
        "conf_num_hidden_layers": 2,
        "conf_num_attention_heads": 2,
        "sscp_conv_channel_size": [8, 4],
        "vocab_offset": 528,
        "vocab_size": 16,
    }
    return {"text_config": text, "vision_config": vision, "audio_config": audio}


def _mllama() -> dict[str, Any]:
    vision = {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_global_layers": 1,
        "attention_heads": 2,
        "intermediate_layers_indices": [0, 1],
        "vision_output_dim": 96,  # width x (intermediate layers + 1)
        "image_size": 56,
        "patch_size": 14,
        "max_num_tiles": 4,
    }
    return {
        "text_config": _text(num_hidden_layers=3, cross_attention_layers=[1], pad_token_id=0),
        "vision_config": vision,
    }


def _llama4() -> dict[str, Any]:
    text = _text(intermediate_size_mlp=128, num_local_experts=2, interleave_moe_layer_step=1, attention_chunk_size=64)
    vision = {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "vision_output_dim": 64,
        "projector_input_dim": 64,
        "projector_output_dim": 64,
        "image_size": 56,
        "patch_size": 14,
    }
    return {"text_config": text, "vision_config": vision}


def _internvl() -> dict[str, Any]:
    vision = {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "image_size": [56, 56],
        "patch_size": [14, 14],
    }
    return {"text_config": _text(model_type="qwen2"), "vision_config": vision}


def _mistral3() -> dict[str, Any]:
    vision = {
        "model_type": "pixtral",
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "head_dim": 16,
        "image_size": 56,
        "patch_size": 14,
    }
    return {"text_config": _text(model_type="mistral"), "vision_config": vision}


#: model type -> keyword arguments of its config class (sub-configs as dicts).
CONFIGS: dict[str, Callable[[], dict[str, Any]]] = {
    "qwen2_vl": lambda: _qwen_vl({"embed_dim": 32, "hidden_size": TEXT["hidden_size"], "mlp_ratio": 2}),
    "qwen2_5_vl": lambda: _qwen_vl({"window_size": 112, "fullatt_block_indexes": [1]}),
    "qwen3_vl": lambda: _qwen_vl({"num_position_embeddings": 64, "deepstack_visual_indexes": [0]}),
    "qwen3_vl_moe": lambda: _qwen_vl(
        {"num_position_embeddings": 64, "deepstack_visual_indexes": [0]},
        _text(**MROPE, **MOE),
    ),
    "qwen3_5": lambda: _qwen3_5(),
    "qwen3_5_moe": lambda: _qwen3_5(**MOE, shared_expert_intermediate_size=32),
    "glm4v": lambda: _glm(),
    "glm4v_moe": lambda: _glm(n_routed_experts=4, n_shared_experts=1, num_experts_per_tok=2, moe_intermediate_size=32),
    "glm_ocr": lambda: _glm(),
    "llava": _llava_like,
    "llava_next": _llava_like,
    "llava_next_video": _llava_like,
    "video_llava": _llava_like,
    "paligemma": lambda: {
        "text_config": _text(model_type="gemma"),
        "vision_config": dict(SIGLIP),
        "projection_dim": TEXT["hidden_size"],
    },
    "gemma3": lambda: {
        "text_config": _text(**GEMMA_LAYERS),
        "vision_config": dict(SIGLIP),
        "mm_tokens_per_image": 4,
    },
    "gemma3n": _gemma3n,
    "gemma4": _gemma4,
    "mllama": _mllama,
    "llama4": _llama4,
    "internvl": _internvl,
    "mistral3": _mistral3,
    "qwen2_audio": lambda: {"text_config": _text(model_type="qwen2"), "audio_config": dict(QWEN_AUDIO)},
    "qwen2_5_omni_thinker": lambda: _omni({}, {"window_size": 112, "fullatt_block_indexes": [1]}),
    "qwen3_omni_moe_thinker": lambda: _omni(
        {"downsample_hidden_size": 8},
        {"num_position_embeddings": 64, "deepstack_visual_indexes": [0]},
        **MOE,
    ),
}


def tiny_config(model_type: str) -> PretrainedConfig:
    """The tiny config of ``model_type`` (one of :data:`CONFIGS`)."""
    return CONFIG_MAPPING[model_type](**CONFIGS[model_type]())


def build(model_type: str, device: str = "meta") -> torch.nn.Module:
    """The tiny model of ``model_type``, of the class LLaMA-Factory's loader would pick for its config."""
    config = tiny_config(model_type)
    for auto in (AutoModelForImageTextToText, AutoModelForSeq2SeqLM, AutoModelForTextToWaveform):
        if type(config) in auto._model_mapping:
            with torch.device(device):
                model = auto.from_config(config)
            return getattr(model, "thinker", model)
    raise ValueError(f"no multimodal auto class builds `{model_type}`")
