"""GPT-Net's inpainting masks, made on tensors: a grid of `patch` x `patch` pixel patches of
which exactly round(ratio x patches) are masked, plus `count` large rectangles per image."""

from __future__ import annotations

import torch


def grid_masks(batch: int, size: int, patch: int, ratio: float, generator: torch.Generator) -> torch.Tensor:
    """B x 1 x S x S float, 1 = masked: each image masks exactly round(ratio * n^2) of its
    n x n patches (n = ceil(S / patch); edge patches are cut at the border)."""
    n = -(-size // patch)
    masked = round(ratio * n * n)
    order = torch.rand(batch, n * n, generator=generator).argsort(dim=1)
    cells = torch.zeros(batch, n * n)
    cells.scatter_(1, order[:, :masked], 1.0)
    cells = cells.reshape(batch, 1, n, n)
    return cells.repeat_interleave(patch, 2).repeat_interleave(patch, 3)[..., :size, :size].contiguous()


def rectangle_masks(batch: int, size: int, low: float, high: float, count: int,
                    generator: torch.Generator) -> torch.Tensor:
    """B x 1 x S x S float: `count` rectangles per image with sides uniform in [low, high]
    pixels (clipped to S), at uniform positions inside the image."""
    out = torch.zeros(batch, 1, size, size)
    if count <= 0:
        return out
    sides = (low + torch.rand(batch, count, 2, generator=generator) * (high - low)).round().clamp(1, size).long()
    corners = torch.rand(batch, count, 2, generator=generator)
    for b in range(batch):
        for r in range(count):
            h, w = int(sides[b, r, 0]), int(sides[b, r, 1])
            y, x = int(corners[b, r, 0] * (size - h + 1)), int(corners[b, r, 1] * (size - w + 1))
            out[b, 0, y:y + h, x:x + w] = 1.0
    return out


def inpainting_masks(batch: int, size: int, patch: int, ratio: float, large_min: float, large_max: float,
                     large_count: int, generator: torch.Generator) -> torch.Tensor:
    """Grid masks united with large rectangles; sizes in pixels at this image size."""
    grid = grid_masks(batch, size, patch, ratio, generator)
    return torch.maximum(grid, rectangle_masks(batch, size, large_min, large_max, large_count, generator))
