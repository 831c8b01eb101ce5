"""FOD scoring: per-token reconstruction error weighted by how unlike the target the
inter-correlation is, per image; levels resized and averaged; the image score is the
maximum after Gaussian smoothing (METHODS.md, FOD).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from . import loss as L
from .network import Correlation, LevelOutput


def token_kl(branches: Sequence[Correlation]) -> torch.Tensor:
    """Symmetric KL(T, S) per token: mean over heads, averaged over layers. B x N."""
    return torch.stack([L.symmetric_kl_rows(b.target, b.attn).mean(1) for b in branches]).mean(0)


def level_parts(out: LevelOutput) -> tuple[torch.Tensor, torch.Tensor]:
    """(rec error, correlation KL), each B x h x w: the inter branch's KL, or the intra
    branch's when the model has no inter branch (the intra-only ablation; see `weighted`)."""
    b = out.features.shape[0]
    rec = L.reconstruction_rows(out.recon, out.features)
    kl = token_kl(out.inter if out.inter else out.intra)
    return rec.reshape(b, *out.grid), kl.reshape(b, *out.grid)


def weighted(rec: torch.Tensor, kl: torch.Tensor, mode: str, inter: bool = True) -> torch.Tensor:
    """B x h x w token scores; softmax and max over each image's own tokens (right at any batch
    size). full: rec x (max - softmax(-KL)) for the inter KL (training pulls normal tokens'
    inter-correlation onto the target: a large KL is anomalous); for the intra KL of the
    intra-only ablation rec x softmax(-KL), as the authors' code scores it (training pushes
    normal tokens' intra-correlation away from the target: a small KL is anomalous).
    rec_only: rec."""
    if mode == "rec_only":
        return rec
    b = rec.shape[0]
    weights = torch.softmax(-kl.reshape(b, -1), dim=1)
    if inter:
        weights = weights.amax(dim=1, keepdim=True) - weights
    return rec * weights.reshape(rec.shape)


def combine(levels: Sequence[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
    """[B x h_l x w_l] token maps -> B x 1 x H x W: bilinear to `size`, averaged over levels."""
    maps = [F.interpolate(m[:, None].float(), size=size, mode="bilinear", align_corners=False) for m in levels]
    return torch.stack(maps).mean(0)


def gaussian_kernel(sigma: float, truncate: float = 4.0) -> torch.Tensor:
    """1-D normalised Gaussian of radius round(truncate * sigma) (scipy's default truncation)."""
    radius = max(int(truncate * sigma + 0.5), 1)
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    return (kernel / kernel.sum()).float()


def smooth(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of B x 1 x H x W maps (reflect padding); sigma <= 0: unchanged."""
    if sigma <= 0:
        return maps
    kernel = gaussian_kernel(sigma).to(maps.device)
    radius = min(kernel.numel() // 2, maps.shape[-1] - 1, maps.shape[-2] - 1)
    centre = kernel.numel() // 2
    kernel = kernel[centre - radius:centre + radius + 1]
    kernel = kernel / kernel.sum()
    x = F.pad(maps.float(), (radius, radius, radius, radius), mode="reflect")
    x = F.conv2d(x, kernel.reshape(1, 1, 1, -1))
    return F.conv2d(x, kernel.reshape(1, 1, -1, 1))


def image_scores(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """B x 1 x H x W -> B: the maximum of the smoothed map."""
    return smooth(maps, sigma).flatten(1).amax(dim=1)

