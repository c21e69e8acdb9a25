"""Writes the Qwen2-VL 2B / 7B / 72B ``config.json`` files used by the planning benchmarks and tests.

The hyperparameters are those of the public Qwen2-VL-{2B,7B,72B}-Instruct releases; only the configs are needed
(lf-multilr plans on the meta device, without weights).
Usage: python bench/configs/make_configs.py
"""

from pathlib import Path

from transformers import Qwen2VLConfig

SIZES = {
    "2b": dict(
        hidden_size=1536,
        intermediate_size=8960,
        num_hidden_layers=28,
        num_attention_heads=12,
        num_key_value_heads=2,
        vocab_size=151936,
        tie_word_embeddings=True,
    ),
    "7b": dict(
        hidden_size=3584,
        intermediate_size=18944,
        num_hidden_layers=28,
        num_attention_heads=28,
        num_key_value_heads=4,
        vocab_size=152064,
        tie_word_embeddings=False,
    ),
    "72b": dict(
        hidden_size=8192,
        intermediate_size=29568,
        num_hidden_layers=80,
        num_attention_heads=64,
        num_key_value_heads=8,
        vocab_size=152064,
        tie_word_embeddings=False,
    ),
}
VISION = dict(
    depth=32,
    embed_dim=1280,
    mlp_ratio=4,
    num_heads=16,
    in_chans=3,
    patch_size=14,
    spatial_merge_size=2,
    temporal_patch_size=2,
)


def main() -> None:
    for name, text in SIZES.items():
        config = Qwen2VLConfig(
            text_config=dict(
                text,
                rope_scaling={"type": "mrope", "mrope_section": [16, 24, 24]},
                rope_theta=1000000.0,
                max_position_embeddings=32768,
                rms_norm_eps=1e-6,
                hidden_act="silu",
            ),
            vision_config=dict(VISION, hidden_size=text["hidden_size"]),
            image_token_id=151655,
            video_token_id=151656,
            vision_start_token_id=151652,
            vision_end_token_id=151653,
            tie_word_embeddings=text["tie_word_embeddings"],
        )
        folder = Path(__file__).parent / f"qwen2_vl_{name}"
        config.save_pretrained(folder)


if __name__ == "__main__":
    main()
