"""Greedy coreset subsampling of the memory bank (PatchCore, Roth et al. 2022, Alg. 1).

The greedy k-center selection: start from one seeded random row, then repeatedly add the
row farthest from everything selected so far (its distance = the minimum over the selected
rows). Distances are measured after a seeded Gaussian random projection to `projection_dim`
dimensions (Johnson-Lindenstrauss; the paper projects to 128), which only makes it cheaper.

Deterministic: the projection and the start come from a CPU generator seeded with `seed`,
ties go to the lowest row index (torch.argmax), so every worker that holds the same bank
selects the same rows.
"""

from __future__ import annotations

import torch


def random_projection(features: torch.Tensor, dim: int, seed: int) -> torch.Tensor:
    """N x D -> N x dim by a seeded Gaussian matrix scaled by 1/sqrt(dim); unchanged when
    dim <= 0 or dim >= D (nothing to gain)."""
    d = features.shape[1]
    if dim <= 0 or dim >= d:
        return features
    generator = torch.Generator().manual_seed(seed)
    matrix = torch.randn(d, dim, generator=generator, dtype=torch.float32) / dim ** 0.5
    return features.float() @ matrix.to(features.device)


def greedy_coreset(features: torch.Tensor, count: int, seed: int = 0) -> torch.Tensor:
    """Indices (count, long, on the features' device) of the greedy k-center selection of
    N x D `features`, in selection order. count >= N selects every row (in order 0..N-1)."""
    n = features.shape[0]
    if count >= n:
        return torch.arange(n, device=features.device)
    if count <= 0:
        raise ValueError(f"coreset size must be >= 1, got {count}")
    x = features.float()
    norms = (x * x).sum(dim=1)
    start = int(torch.randint(n, (1,), generator=torch.Generator().manual_seed(seed)))
    selected = torch.empty(count, dtype=torch.long, device=x.device)
    selected[0] = start
    nearest = _squared_distances(x, norms, start)
    for i in range(1, count):
        index = torch.argmax(nearest)  # stays on the device: no host sync per step
        selected[i] = index
        nearest = torch.minimum(nearest, _squared_distances(x, norms, index))
    return selected


def _squared_distances(x: torch.Tensor, norms: torch.Tensor, index: int | torch.Tensor) -> torch.Tensor:
    """Squared distance of every row of x (N x D) to row `index`: |x|^2 - 2 x.c + |c|^2 (one
    matrix-vector product, no N x D temporary), clamped at 0."""
    centre = x[index]
    return (norms - 2.0 * (x @ centre) + norms[index]).clamp_min_(0.0)


def coreset_size(n: int, ratio: float) -> int:
    """Rows kept from a bank of n rows at `ratio` (at least one)."""
    return max(1, min(n, int(round(n * ratio))))
