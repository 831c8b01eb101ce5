"""Small generated image batches shared by the method tests (tests/ is on the path)."""

from __future__ import annotations

import torch


def square_images(n: int, size: int = 64, seed: int = 0) -> torch.Tensor:
    """Crude structured images, n x 3 x size x size: a bright square at a per-image position on noise."""
    g = torch.Generator().manual_seed(seed)
    x = 0.3 * torch.randn(n, 3, size, size, generator=g)
    for i in range(n):
        r, c = (int(v) for v in torch.randint(0, size // 2, (2,), generator=g))
        x[i, :, r:r + size // 4, c:c + size // 4] += 2.0
    return x
