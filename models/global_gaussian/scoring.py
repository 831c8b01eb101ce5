"""Whole-image descriptors of pooled features, and how their Mahalanobis distance splits over
patches (the map).

Shapes: B images; level l is B x C_l x h_l x w_l (N_l = h_l * w_l positions); the finest grid is
h x w; D = (1 or 2) x sum of C_l descriptor dimensions.

Decomposition: with g = P (x - mean), d^2 = sum_j (x_j - mean_j) g_j. A mean-pooled dimension
is an average over positions, so its term splits exactly into N_l shares (f_p - mean_j) g_j / N_l;
a max-pooled dimension's term belongs to its argmax position. The shares of every level, spread
evenly over the finest cells they cover, sum to d^2.
"""

from __future__ import annotations

import torch

#: descriptor parts per channel, in order
POOLINGS: dict[str, tuple[str, ...]] = {"mean_max": ("mean", "max"), "mean": ("mean",), "max": ("max",)}


def descriptors(levels: list[torch.Tensor], pooling: str = "mean_max") -> torch.Tensor:
    """[B x C_l x h_l x w_l] -> B x D float64: per level, the mean and/or max of every channel
    over positions."""
    parts = []
    for f in levels:
        flat = f.double().flatten(2)
        for kind in POOLINGS[pooling]:
            parts.append(flat.mean(dim=2) if kind == "mean" else flat.amax(dim=2))
    return torch.cat(parts, dim=1)


def patch_shares(levels: list[torch.Tensor], pooling: str, mean: torch.Tensor,
                 precision: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(squared Mahalanobis distance B, its shares B x 1 x h x w on the finest grid), float64;
    the shares of an image sum to its squared distance."""
    diff = descriptors(levels, pooling) - mean
    g = diff @ precision
    squared = (diff * g).sum(dim=1)
    b, _, h, w = levels[0].shape
    shares = torch.zeros(b, h, w, dtype=torch.float64, device=diff.device)
    offset = 0
    for f in levels:
        c, hl, wl = f.shape[1:]
        flat = f.double().flatten(2)
        level = torch.zeros(b, hl * wl, dtype=torch.float64, device=diff.device)
        for kind in POOLINGS[pooling]:
            mu, weight = mean[offset:offset + c], g[:, offset:offset + c]
            if kind == "mean":
                level += torch.einsum("bcn,bc->bn", flat - mu[None, :, None], weight) / (hl * wl)
            else:
                values, where = flat.max(dim=2)
                level.scatter_add_(1, where, (values - mu) * weight)
            offset += c
        ry, rx = h // hl, w // wl
        if ry * hl != h or rx * wl != w:
            raise ValueError(f"level grid {hl}x{wl} does not tile the finest grid {h}x{w}")
        spread = level.reshape(b, hl, wl).repeat_interleave(ry, dim=1).repeat_interleave(rx, dim=2)
        shares += spread / (ry * rx)
    return squared, shares[:, None]


def uniform_maps(distance: torch.Tensor, size: int) -> torch.Tensor:
    """B distances -> B x 1 x size x size maps holding the distance everywhere (float32)."""
    return distance.float()[:, None, None, None].expand(-1, 1, size, size).contiguous()


def share_maps(distance: torch.Tensor, shares: torch.Tensor, size: int) -> torch.Tensor:
    """B distances, B x 1 x h x w shares -> B x 1 x size x size maps (float32): the shares scaled
    so each map's maximum is exactly its image's distance, nearest-resized (cells kept whole)."""
    top = shares.flatten(1).amax(dim=1).clamp_min(torch.finfo(torch.float64).tiny)
    scaled = distance.float()[:, None, None, None] * (shares / top[:, None, None, None]).float()
    h, w = shares.shape[-2:]
    return scaled.repeat_interleave(size // h, dim=2).repeat_interleave(size // w, dim=3)
