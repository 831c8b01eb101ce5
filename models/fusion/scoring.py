"""Normalising member outputs onto one scale and combining them (no parameters learned).

Statistics of a member's raw values on validation normals: mean, std and a quantile grid
(`GRID` levels). Normalisations:
- "zscore": (x - mean) / std;
- "quantile": EfficientAD's two-quantile mapping, (x - q_0.9) / (q_0.995 - q_0.9);
- the "rank" rule uses the empirical CDF instead (interpolated on the grid, extended
  linearly past the largest normal so that anomalies beyond every normal keep their order).
Rules over members (`weights`, one per member, >= 0):
- "sum": weighted mean of the normalised values;
- "max": the largest normalised value among members of non-zero weight;
- "rank": weighted mean of the members' CDF values (free of each member's scale).
"""

from __future__ import annotations

import torch

NORMS = ("zscore", "quantile")
RULES = ("sum", "max", "rank")
#: quantile levels of the grid: 0, 0.005, ..., 1 (0.9 and 0.995 are on it)
GRID = torch.linspace(0.0, 1.0, 201, dtype=torch.float64)
Q_LOW, Q_HIGH = 180, 199  # indices of 0.9 and 0.995


def statistics(values: torch.Tensor) -> torch.Tensor:
    """Flattened raw values -> 203 numbers: mean, std, then the quantile grid (float32)."""
    values = values.double().flatten()
    grid = torch.quantile(values, GRID) if values.numel() <= 2**24 else _subsampled_quantiles(values)
    std = values.std() if values.numel() > 1 else values.new_tensor(1.0)
    return torch.cat([values.mean()[None], std.clamp_min(1e-12)[None], grid]).float()


def _subsampled_quantiles(values: torch.Tensor) -> torch.Tensor:
    step = values.numel() // 2**24 + 1
    return torch.quantile(values[::step], GRID)


def normalise(x: torch.Tensor, stats: torch.Tensor, norm: str) -> torch.Tensor:
    """x (any shape) on the member's normal scale under `norm`."""
    if norm == "zscore":
        return (x - stats[0]) / stats[1]
    grid = stats[2:]
    return (x - grid[Q_LOW]) / (grid[Q_HIGH] - grid[Q_LOW]).clamp_min(1e-12)


def cdf(x: torch.Tensor, stats: torch.Tensor) -> torch.Tensor:
    """Empirical CDF of the member's normal values at x, piecewise linear on the grid, and
    extended with the top segment's slope (in grid steps) past the largest normal value."""
    grid = stats[2:].to(x.dtype).contiguous()
    levels = GRID.to(x.dtype).to(x.device)
    flat = x.reshape(-1).contiguous()
    upper = torch.searchsorted(grid, flat).clamp(1, len(grid) - 1)
    lo, hi = grid[upper - 1], grid[upper]
    frac = ((flat - lo) / (hi - lo).clamp_min(1e-12)).clamp(0.0, 1.0)
    inside = levels[upper - 1] + frac * (levels[upper] - levels[upper - 1])
    span = (grid[-1] - grid[Q_LOW]).clamp_min(1e-12)
    beyond = 1.0 + (flat - grid[-1]).clamp_min(0.0) / span * (1.0 - levels[Q_LOW])
    below = (flat - grid[0]).clamp_max(0.0) / span * (1.0 - levels[Q_LOW])
    out = torch.where(flat > grid[-1], beyond, torch.where(flat < grid[0], below, inside))
    return out.reshape(x.shape)


def combine(values: list[torch.Tensor], stats: list[torch.Tensor], norm: str, rule: str,
            weights: tuple[float, ...]) -> torch.Tensor:
    """Members' raw values (same shape each) -> the fused values, under `norm` and `rule`."""
    w = torch.tensor(weights, dtype=values[0].dtype, device=values[0].device)
    if rule == "rank":
        scaled = torch.stack([cdf(v, s.to(v.device)) for v, s in zip(values, stats)])
    else:
        scaled = torch.stack([normalise(v, s.to(v.device), norm) for v, s in zip(values, stats)])
    if rule == "max":
        active = (w > 0).nonzero().flatten()
        return scaled[active].amax(dim=0)
    shape = (-1,) + (1,) * (scaled.dim() - 1)
    return (scaled * w.reshape(shape)).sum(dim=0) / w.sum()
