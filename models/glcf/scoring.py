"""GLCF scoring: per-branch, per-scale estimation errors standardised with statistics of
normal training images, fused W_L * A_L + W_G * A_G, upsampled to the input size,
weighted by K per scale, summed, Gaussian-smoothed; the image score is the map's
standard deviation (METHODS.md, GLCF "Statistics" and "Score").

Statistics buffer layout: `stats[branch, scale, (mean, std)]`, branch 0 = local (A_L),
1 = global (A_G), scales in ascending stride order.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

BRANCHES = ("local", "global")


def gaussian_kernel(sigma: float) -> torch.Tensor:
    """1-D normalised Gaussian, radius round(4 sigma) (scipy's default truncation)."""
    radius = max(1, int(4.0 * sigma + 0.5))
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    return (kernel / kernel.sum()).float()


def gaussian_blur(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """B x 1 x H x W -> same, separable Gaussian with reflected borders; sigma <= 0: unchanged.
    On maps smaller than the kernel the kernel is cut to the map and renormalised."""
    if sigma <= 0:
        return maps
    kernel = gaussian_kernel(sigma).to(maps.device, maps.dtype)
    x = maps
    for dim in (-1, -2):
        radius = min(kernel.numel() // 2, x.shape[dim] - 1)
        center = kernel.numel() // 2
        k = kernel[center - radius: center + radius + 1]
        k = (k / k.sum()).view(1, 1, 1, -1) if dim == -1 else (k / k.sum()).view(1, 1, -1, 1)
        pad = (radius, radius, 0, 0) if dim == -1 else (0, 0, radius, radius)
        x = F.conv2d(F.pad(x, pad, mode="reflect"), k)
    return x


def upsample(maps: torch.Tensor, size: int) -> torch.Tensor:
    """B x h x w -> B x 1 x size x size, bilinear (align_corners False)."""
    return F.interpolate(maps[:, None].float(), size=(size, size), mode="bilinear", align_corners=False)


def image_moments(maps: torch.Tensor, size: int, sigma: float) -> torch.Tensor:
    """B x h x w raw maps -> B x 2 (mean, std) of each upsampled, smoothed map."""
    smooth = gaussian_blur(upsample(maps, size), sigma).flatten(1).double()
    return torch.stack([smooth.mean(dim=1), smooth.std(dim=1, correction=0)], dim=1)


def part_key(branch: str, stride: int) -> str:
    return f"{branch}_s{stride}"


def standardise(raw: dict[tuple[str, int], torch.Tensor], stats: torch.Tensor,
                strides: tuple[int, ...]) -> dict[str, torch.Tensor]:
    """{(branch, stride): B x h x w} -> {"<branch>_s<stride>": (A - mu) / sigma}, native size."""
    parts = {}
    for b, branch in enumerate(BRANCHES):
        for i, stride in enumerate(strides):
            mean, std = stats[b, i, 0], stats[b, i, 1].clamp_min(1e-12)
            parts[part_key(branch, stride)] = (raw[branch, stride].float() - mean) / std
    return parts


def fuse(parts: dict[str, torch.Tensor], strides: tuple[int, ...], w_local: float, w_global: float,
         scale_weights: tuple[float, ...], size: int, sigma: float) -> torch.Tensor:
    """Standardised parts -> B x 1 x size x size: sum_i K_i * up(W_L A_L^i + W_G A_G^i), smoothed."""
    total = None
    for stride, k in zip(strides, scale_weights):
        fused = w_local * parts[part_key("local", stride)] + w_global * parts[part_key("global", stride)]
        term = k * upsample(fused, size)
        total = term if total is None else total + term
    return gaussian_blur(total, sigma)


def image_score(maps: torch.Tensor) -> torch.Tensor:
    """B x 1 x H x W -> B: the map's (population) standard deviation."""
    return maps.flatten(1).float().std(dim=1, correction=0)
