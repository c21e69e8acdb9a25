"""A toy network with the parameter names of a Qwen2-VL, for tests that need no LLaMA-Factory."""

from __future__ import annotations

import torch
from torch import nn

from lf_multilr.modules import ModuleMap

QWEN2_VL = ModuleMap.of(
    "qwen2_vl", ["visual.merger"], ["visual.patch_embed", "visual.blocks"], ["language_model", "lm_head"]
)


class Visual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.patch_embed = nn.Linear(4, 8, bias=False)
        self.blocks = nn.ModuleList([nn.Sequential(nn.LayerNorm(8), nn.Linear(8, 8)) for _ in range(2)])
        self.merger = nn.Sequential(nn.LayerNorm(8), nn.Linear(8, 6))


class Inner(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.visual = Visual()
        self.language_model = nn.Sequential(nn.Embedding(10, 6), nn.Linear(6, 6), nn.LayerNorm(6))


class Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.model = Inner()
        self.lm_head = nn.Linear(6, 10, bias=False)
        self.v_head = nn.Linear(6, 1)  # matches no registry key: lands in `other`

    def forward(self, pixels: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        visual = self.model.visual
        x = visual.patch_embed(pixels)
        for block in visual.blocks:
            x = block(x)
        image = visual.merger(x).mean(0)
        hidden = self.model.language_model(tokens) + image
        return self.lm_head(hidden).sum() + self.v_head(hidden).sum()


def decay_names(model: nn.Module) -> set[str]:
    """HF's default rule, restated for the toy: no decay for biases and LayerNorm weights."""
    norms = {f"{name}.weight" for name, module in model.named_modules() if isinstance(module, nn.LayerNorm)}
    return {name for name, _ in model.named_parameters() if "bias" not in name and name not in norms}
