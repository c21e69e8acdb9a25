"""A tiny Qwen2-Audio trains end to end through ``llamafactory-cli train`` with its audio tower as a module of its own.

The data are sine waves written as WAV (``tools/tiny.build_audio_dataset``), read by LLaMA-Factory the way it reads
every audio file: ``torchaudio.load``, through TorchCodec and FFmpeg (``make system-packages``). LLaMA-Factory's
``freeze_vision_tower: true`` would freeze Qwen2-Audio's only tower, its audio encoder; ``freeze_audio_tower: false``
trains it, at its own LR.
"""

from __future__ import annotations

import pytest
import torch

from lf_multilr.modules import TABLE
from tools import tiny as builder
from tools.testing import full_suite_only, log_records, one_step, train, write_config

pytestmark = full_suite_only("a tiny Qwen2-Audio built with transformers 5")

LRS = {"language_model_lr": 1.0e-2, "multi_modal_projector_lr": 1.0e-3, "audio_tower_lr": 1.0e-4}
EXPECTED = {"language_model": 1.0e-2, "multi_modal_projector": 1.0e-3, "audio_tower": 1.0e-4}


def weights(model_dir) -> dict[str, torch.Tensor]:
    from transformers import Qwen2AudioForConditionalGeneration

    model = Qwen2AudioForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32)
    return {name: param.detach().clone() for name, param in model.named_parameters()}


def test_one_adamw_step_moves_every_audio_tower_tensor_by_audio_tower_lr(tiny, tmp_path, env):
    from lf_multilr.patches.registry import module_map

    data = builder.build_audio_dataset(tmp_path / "data")
    family = "qwen2_audio"
    config, out = write_config(
        tmp_path,
        tiny(family),
        data,
        family,
        dataset="tiny_audio",
        freeze_vision_tower=True,
        freeze_audio_tower=False,
        plot_loss=True,
        **LRS,
    )
    result = train(config, env)
    assert result.returncode == 0, result.stderr[-3000:]
    mapping = module_map(family, TABLE)
    assert mapping is not None
    before, after = weights(tiny(family)), weights(out)
    steps: dict[str, list[float]] = {}
    for name, tensor in after.items():
        step = (tensor - before[name]).abs().max().item()
        if step > 0:
            steps.setdefault(mapping.owner(name), []).append(step)
    assert set(steps) == set(EXPECTED)
    for module, values in steps.items():
        assert values == one_step(EXPECTED[module], len(values)), module
    audio = [name for name in after if mapping.owner(name) == "audio_tower"]
    assert len(steps["audio_tower"]) == len(audio) == 37  # every tensor of the audio encoder moved

    assert "lf-multilr: `freeze_audio_tower: false`: audio_tower trainable by this flag alone." in result.stdout
    table = result.stdout[result.stdout.index("lf-multilr param groups for model type `qwen2_audio`") :]
    assert "\n  audio_tower                  37 " in table
    (record,) = [r for r in log_records(out) if "loss" in r]
    assert record["lr/audio_tower"] == 1.0e-4 and record["lr/multi_modal_projector"] == 1.0e-3
    assert record["lr/language_model"] == record["lr"] == 1.0e-2
    assert record["grad_norm/audio_tower"] > 0 and "lr/vision_tower" not in record
    assert (out / "training_lr.png").is_file() and (out / "training_grad_norm.png").is_file()


@pytest.mark.parametrize("seconds", [0.5, 1.0])
def test_the_generated_clips_are_sine_waves_torchaudio_reads(tmp_path, seconds):
    torchaudio = pytest.importorskip("torchaudio")
    data = builder.build_audio_dataset(tmp_path)
    audio, rate = torchaudio.load(str(data / f"audios/middle_{seconds:g}s.wav"))
    assert rate == builder.AUDIO_RATE and audio.shape == (1, int(builder.AUDIO_RATE * seconds))
    spectrum = torch.fft.rfft(audio[0]).abs()
    assert spectrum.argmax().item() / seconds == pytest.approx(440.0)
