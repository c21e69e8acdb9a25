"""The pretrained parts of the evidence experiment (``bench/evidence.py``) and the retention measurement.

* A CLIP vision tower (LLaVA's, a registered architecture of LLaMA-Factory) and a linear head are trained together
  on task A (every cell's class) with a plain torch loop. The head reads what LLaVA's projector reads, the last
  layer's patch features without the CLS token (``vision_feature_layer=-1``, strategy ``default``): one linear map,
  the same for every cell, of the mean of the cell's patch features. So each cell's class lies in its own patches'
  features, where the language model can find it.
* A Llama language model is trained on text: each task-B question put after the scene's caption, as the LLaVA
  template of LLaMA-Factory renders a text-only turn (the whole sequence is the loss), so it knows the captions'
  words and the answers' form before it ever sees an image.
* Both go into a LLaVA checkpoint folder built with ``tools/tiny.py``'s tokenizer, processor and chat template,
  with a random projector: LLaMA-Factory loads it with ``model_name_or_path``.
* Retention: the saved head's task-A accuracy (per cell) on a fine-tuned model's vision tower, held still.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM, LlavaForConditionalGeneration

from bench import evidence_data as data
from tools import tiny


@dataclass(frozen=True)
class Sizes:
    """What the generated model and data are made of; their hash names the cache folder."""

    image: int = 56  # pixels; patches of 14
    grid: int = 2  # cells per side
    vision_hidden: int = 64
    vision_layers: int = 3
    vision_heads: int = 4
    text_hidden: int = 64
    text_layers: int = 2
    vision_steps: int = 1200
    text_steps: int = 600
    text_scenes: int = 4000
    batch: int = 64
    pretrain_lr: float = 2e-3
    caption_scenes: int = 800
    train_scenes: int = 1000
    questions_per_scene: int = 2
    val_scenes: int = 100
    test_scenes: int = 400
    retention_scenes: int = 500


PATCH = 14
VISION_SEED, TEXT_SEED, RETENTION_SEED = 11, 12, 13


def device() -> torch.device:
    """Where the plain torch loops run: the GPU when there is one (the ``gpu`` profile), else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def vision_config(sizes: Sizes) -> CLIPVisionConfig:
    return CLIPVisionConfig(
        hidden_size=sizes.vision_hidden,
        intermediate_size=4 * sizes.vision_hidden,
        num_hidden_layers=sizes.vision_layers,
        num_attention_heads=sizes.vision_heads,
        image_size=sizes.image,
        patch_size=PATCH,
        projection_dim=sizes.vision_hidden,
    )


def text_config(sizes: Sizes, base: LlamaConfig) -> LlamaConfig:
    config = LlamaConfig(**base.to_dict())
    config.hidden_size = sizes.text_hidden
    config.intermediate_size = 2 * sizes.text_hidden
    config.num_hidden_layers = sizes.text_layers
    config.head_dim = sizes.text_hidden // config.num_attention_heads
    return config


def patches(sizes: Sizes) -> int:
    return (sizes.image // PATCH) ** 2


def cutoff(sizes: Sizes) -> int:
    """``cutoff_len`` of every run: the image tokens and room for the longest question and answer (a shorter cut
    drops image tokens and LLaMA-Factory stops: "Image features and image tokens do not match")."""
    return max(256, patches(sizes) + 128)


def head(sizes: Sizes) -> nn.Linear:
    """Task A's head: a cell's class from the mean of its patches' features, the same for every cell."""
    return nn.Linear(sizes.vision_hidden, data.CLASSES)


def cell_features(tower: CLIPVisionModel, pixel_values: torch.Tensor, grid: int) -> torch.Tensor:
    """Per image and cell (reading order), the mean feature of the cell's patches, taken where LLaVA's projector
    reads them (last layer, CLS dropped)."""
    hidden = tower(pixel_values=pixel_values, output_hidden_states=True).hidden_states[-1][:, 1:]
    side = round(hidden.shape[1] ** 0.5)
    if side % grid:
        raise ValueError(f"{side} x {side} patches do not split into {grid} x {grid} cells")
    k = side // grid
    cells = hidden.reshape(len(hidden), grid, k, grid, k, -1).mean(dim=(2, 4))
    return cells.reshape(len(hidden), grid * grid, -1)


def cell_logits(tower: CLIPVisionModel, linear: nn.Linear, pixel_values: torch.Tensor, grid: int) -> torch.Tensor:
    return linear(cell_features(tower, pixel_values, grid))


def pixels(processor: Any, scenes: Sequence[data.Scene], size: int) -> torch.Tensor:
    images = [data.draw(scene, size) for scene in scenes]
    return processor.image_processor(images=images, return_tensors="pt")["pixel_values"]


def labels(scenes: Sequence[data.Scene]) -> torch.Tensor:
    return torch.tensor([scene.labels() for scene in scenes])


def _log(what: str, step: int, steps: int, loss: float, start: float) -> None:
    print(f"  {what}: step {step}/{steps}, loss {loss:.4f} ({time.monotonic() - start:.0f} s)", flush=True)


def _train(
    params: Sequence[nn.Parameter], steps: int, lr: float, loss_at: Callable[[int], torch.Tensor], what: str
) -> None:
    """AdamW with a linear warm-up over 5% of the steps and a cosine decay."""
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    warmup = max(1, steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + torch.cos(torch.tensor(torch.pi * s / steps)).item()),
    )
    start = time.monotonic()
    for step in range(steps):
        loss = loss_at(step)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        if (step + 1) % max(1, steps // 5) == 0:
            _log(what, step + 1, steps, loss.item(), start)


def pretrain_vision(sizes: Sizes, processor: Any) -> tuple[CLIPVisionModel, nn.Linear]:
    """The tower and head trained on task A, on freshly drawn scenes every step."""
    torch.manual_seed(VISION_SEED)
    tower, linear = CLIPVisionModel(vision_config(sizes)).to(device()), head(sizes).to(device())
    rng = random.Random(VISION_SEED)
    loss_fn = nn.CrossEntropyLoss()

    def loss_at(step: int) -> torch.Tensor:
        batch = [data.random_scene(rng, sizes.grid) for _ in range(sizes.batch)]
        logits = cell_logits(tower, linear, pixels(processor, batch, sizes.image).to(device()), sizes.grid)
        return loss_fn(logits.flatten(0, 1), labels(batch).flatten().to(device()))

    params = [*tower.parameters(), *linear.parameters()]
    _train(params, sizes.vision_steps, sizes.pretrain_lr, loss_at, "vision tower on task A")
    return tower, linear


def text_sequences(encode: Callable[[str, str], list[int]], sizes: Sizes) -> list[list[int]]:
    """Token ids of text-only turns: a scene's caption then a task-B question, the answer; and captions alone."""
    rng = random.Random(TEXT_SEED)
    rows = []
    for scene in data.scenes(TEXT_SEED, sizes.text_scenes, sizes.grid):
        user, answer = data.question(scene, rng)
        rows.append(encode(f"Picture: {scene.caption()}\n{user}", answer))
        rows.append(encode("Describe the picture.", scene.caption()))
    return rows


def _batches(rows: list[list[int]], batch: int, pad: int, seed: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    rng = random.Random(seed)
    while True:
        chosen = rng.choices(rows, k=batch)
        width = max(map(len, chosen))
        ids = torch.full((batch, width), pad)
        mask = torch.zeros((batch, width), dtype=torch.long)
        for i, row in enumerate(chosen):
            ids[i, : len(row)] = torch.tensor(row)
            mask[i, : len(row)] = 1
        yield ids, mask


def pretrain_text(sizes: Sizes, config: LlamaConfig, rows: list[list[int]]) -> LlamaForCausalLM:
    torch.manual_seed(TEXT_SEED)
    model = LlamaForCausalLM(config).to(device())
    batches = _batches(rows, sizes.batch, config.pad_token_id, TEXT_SEED)

    def loss_at(step: int) -> torch.Tensor:
        ids, mask = (tensor.to(device()) for tensor in next(batches))
        return model(input_ids=ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100)).loss

    _train(list(model.parameters()), sizes.text_steps, sizes.pretrain_lr, loss_at, "language model on text")
    return model


def compose(sizes: Sizes, tower: CLIPVisionModel, text: LlamaForCausalLM, processor: Any, out: Path) -> Path:
    """The LLaVA checkpoint folder: the pretrained tower and language model, a random projector (seeded)."""
    config, _ = tiny.llava_parts()
    config.vision_config = vision_config(sizes)
    config.text_config = text.config
    config.image_seq_length = patches(sizes)
    torch.manual_seed(VISION_SEED + TEXT_SEED)
    model = LlavaForConditionalGeneration(config)
    model.model.vision_tower.load_state_dict(tower.state_dict())
    model.model.language_model.load_state_dict(text.model.state_dict())
    model.lm_head.load_state_dict(text.lm_head.state_dict())
    model.float().save_pretrained(out)
    processor.save_pretrained(out)
    return out


def processor_for(sizes: Sizes) -> Any:
    """``tools/tiny.py``'s LLaVA processor, at ``sizes.image`` pixels."""
    _, processor = tiny.llava_parts()
    processor.image_processor.size = {"shortest_edge": sizes.image}
    processor.image_processor.crop_size = {"height": sizes.image, "width": sizes.image}
    return processor


@torch.no_grad()
def cell_accuracy(
    tower: CLIPVisionModel, linear: nn.Linear, pixel_values: torch.Tensor, truth: torch.Tensor, grid: int
) -> float:
    """The share of cells whose class the head reads right from ``tower``'s features."""
    tower.eval()
    tower.to(device())
    linear.to(device())
    chunks = pixel_values.to(device()).split(128)
    predicted = torch.cat([cell_logits(tower, linear, chunk, grid).argmax(-1) for chunk in chunks])
    return (predicted == truth.to(device())).float().mean().item()


def retention_set(sizes: Sizes, processor: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Held-out task-A scenes (a seed no other split uses): their pixel values and cell classes."""
    held_out = data.scenes(RETENTION_SEED, sizes.retention_scenes, sizes.grid)
    return pixels(processor, held_out, sizes.image), labels(held_out)


def tower_of(model_dir: Path) -> CLIPVisionModel:
    """The vision tower of a saved LLaVA model (a fine-tuned run's output folder)."""
    model = LlavaForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32)
    tower = CLIPVisionModel(model.config.vision_config)
    tower.load_state_dict(model.model.vision_tower.state_dict())
    return tower
