"""The exportable graph: uint8 RGB images in, the method's anomaly map and image score out.

The graph holds every step after the resize, so a consumer only decodes and resizes
(`contract.json` says how): N x S x S x 3 uint8 -> float /255 -> ImageNet normalisation
(the constants `data.transforms.eval_transform` uses) -> `method.score`, the function the
torch scoring path runs. Maps come out N x 1 x S x S float32, scores N float32.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from logicad.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from logicad.models.base import Method
from torch import nn

INPUT = "image"
OUTPUTS = ("map", "score")


class ExportGraph(nn.Module):
    """`method` behind the input contract above (the method in eval mode, unchanged). `score`:
    what maps normalised images to (maps, scores); default `method.score` (the benchmark passes
    the compiled scoring path's traceable function)."""

    def __init__(self, method: Method, score: Callable | None = None) -> None:
        super().__init__()
        self.method = method.eval()
        self.score = score or method.score
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = image.permute(0, 3, 1, 2).to(torch.float32) / 255.0
        maps, scores = self.score((x - self.mean) / self.std)
        return maps.to(torch.float32), scores.to(torch.float32)


def example_input(size: int, batch: int = 2, seed: int = 0) -> torch.Tensor:
    """A seeded uint8 batch to trace with (batch 2: a batch of 1 could let the tracer fold the
    batch dimension into a constant)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, size, size, 3), generator=generator, dtype=torch.uint8)
