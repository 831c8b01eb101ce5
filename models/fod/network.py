"""FOD's networks: the frozen, average-pooled backbone, the token and reference
projections with a fixed 2-D sin-cos encoding, and one I2Correlation transformer per
feature level (METHODS.md, FOD).

Shapes: B images, C backbone channels of a level, h x w its grid, N = h * w tokens,
D = d_model, H heads, Dh = D / H.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..backbones import FrozenFeatures
from ..base import ConfigError

#: sigma = SIGMA_BASE ** (sigmoid(SIGMA_SLOPE * s) + SIGMA_FLOOR) - 1: in (1.1e-5, 2] grid cells
SIGMA_BASE = 3.0
SIGMA_SLOPE = 5.0
SIGMA_FLOOR = 1e-5


def full(t: torch.Tensor) -> torch.Tensor:
    """`t` in at least float32 (autocast's bf16/fp16 outputs are promoted; float64 stays)."""
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


def sigma_bound() -> float:
    """The largest sigma the head can output (grid cells)."""
    return SIGMA_BASE ** (1.0 + SIGMA_FLOOR) - 1.0


class PooledBackbone(FrozenFeatures):
    """Frozen timm feature extractor at the given strides, each map through a k x k average
    pool (stride 1, padding k // 2). images B x 3 x S x S -> [B x C_l x S/r_l x S/r_l]."""

    def __init__(self, name: str, weights: str, strides: Sequence[int], pool_size: int = 3) -> None:
        super().__init__(name, weights, strides)
        self.pool_size = pool_size

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        k = self.pool_size
        feats = self.model(images)
        if k > 1:
            feats = [F.avg_pool2d(f, k, stride=1, padding=k // 2) for f in feats]
        return [full(f).contiguous() for f in feats]


def sincos_2d(h: int, w: int, dim: int) -> torch.Tensor:
    """Fixed N x dim encoding (N = h * w, row-major): channels [0, dim/2) encode the column x,
    [dim/2, dim) the row y; within each half, sin and cos at geometric frequencies."""
    if dim % 4:
        raise ConfigError(f"config key 'd_model' must be a multiple of 4 for the 2-D encoding, got {dim}")
    quarter = dim // 4
    freq = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64),
                            indexing="ij")

    def encode(pos: torch.Tensor) -> torch.Tensor:
        angle = pos.reshape(-1, 1) * freq[None]
        return torch.cat([angle.sin(), angle.cos()], dim=1)

    return torch.cat([encode(xs), encode(ys)], dim=1).float()


def squared_offsets(h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(dy^2, dx^2): N x h squared distance from each query position (row-major) to each key
    row, and N x w to each key column."""
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    ys, xs = ys.reshape(-1).float(), xs.reshape(-1).float()
    return (ys[:, None] - torch.arange(h).float()[None]).pow(2), (xs[:, None] - torch.arange(w).float()[None]).pow(2)


def target_correlation(sigma: torch.Tensor, dy2: torch.Tensor, dx2: torch.Tensor) -> torch.Tensor:
    """Row-normalised RBF target T, B x H x N x (h * w) over a key grid of h rows, w columns.

    sigma: B x H x N x 2 (sigma_y, sigma_x) per query; dy2: N x h, dx2: N x w squared offsets.
    T[q, k] ~ exp(-dy^2 / 2 sy^2 - dx^2 / 2 sx^2) / (2 pi sy sx). The normaliser is constant
    per row, and the kernel is a product over the two axes of a product grid, so the
    row-normalised T is the outer product of a softmax over key rows and one over key
    columns (stable for sigma near its floor, where the query's own position takes all
    the mass).
    """
    sy2 = full(sigma[..., 0:1]).pow(2)
    sx2 = full(sigma[..., 1:2]).pow(2)
    dy2, dx2 = dy2.to(sy2.dtype), dx2.to(sx2.dtype)
    ty = torch.softmax(dy2 / (-2 * sy2), dim=-1)  # B x H x N x h
    tx = torch.softmax(dx2 / (-2 * sx2), dim=-1)  # B x H x N x w
    return (ty[..., :, None] * tx[..., None, :]).flatten(-2)


@dataclass
class Correlation:
    """One branch of one layer: attention S (and its logits) and target T, B x H x N x M;
    sigma B x H x N x 2."""

    logits: torch.Tensor
    attn: torch.Tensor
    sigma: torch.Tensor
    target: torch.Tensor


class CorrelationBranch(nn.Module):
    """Multi-head attention whose maps are the correlations, with a sigma head; no output
    projection (the heads' S V are concatenated). x: B x N x D queries, memory: B x M x D
    or 1 x M x D (the reference, broadcast over the batch)."""

    def __init__(self, d_model: int, heads: int) -> None:
        super().__init__()
        if d_model % heads:
            raise ConfigError(f"config key 'd_model' ({d_model}) must be divisible by 'heads' ({heads})")
        self.heads = heads
        self.query = nn.Linear(d_model, d_model)
        self.key = nn.Linear(d_model, d_model)
        self.value = nn.Linear(d_model, d_model)
        self.sigma = nn.Linear(d_model, 2 * heads)

    def forward(self, x: torch.Tensor, memory: torch.Tensor, dy2: torch.Tensor,
                dx2: torch.Tensor) -> tuple[torch.Tensor, Correlation]:
        b, n, d = x.shape
        h = self.heads

        def split(t: torch.Tensor) -> torch.Tensor:  # B x L x D -> B x H x L x Dh (memory may have B = 1)
            return t.reshape(t.shape[0], -1, h, d // h).transpose(1, 2)

        q, k, v = split(self.query(x)), split(self.key(memory)), split(self.value(memory))
        logits = full(q @ k.transpose(-1, -2)) * (d // h) ** -0.5
        attn = torch.softmax(logits, dim=-1)
        out = (attn.to(v.dtype) @ v).transpose(1, 2).reshape(b, n, d)
        s = full(self.sigma(x)).reshape(b, n, h, 2).transpose(1, 2)  # B x H x N x 2
        sigma = SIGMA_BASE ** (torch.sigmoid(SIGMA_SLOPE * s) + SIGMA_FLOOR) - 1.0
        return out, Correlation(logits, attn, sigma, target_correlation(sigma, dy2, dx2))


class I2CorrelationLayer(nn.Module):
    """Z = LN(A_intra(x) - A_inter(x, ref) [+ x if residual]); x' = LN(Z + FFN(Z)).

    The authors' code adds x to each branch, so with both branches the residual cancels;
    with the intra branch alone (the ablation) it stays: Z = LN(x + A_intra(x)).
    x: B x N x D, ref: B x M x D (or 1 x M x D) -> (x', intra, inter or None).
    """

    def __init__(self, d_model: int, heads: int, ffn_ratio: int, residual: bool, intra_only: bool) -> None:
        super().__init__()
        self.intra = CorrelationBranch(d_model, heads)
        self.inter = None if intra_only else CorrelationBranch(d_model, heads)
        self.residual = residual
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.ffn = nn.Sequential(nn.Linear(d_model, ffn_ratio * d_model), nn.GELU(),
                                 nn.Linear(ffn_ratio * d_model, d_model))

    def forward(self, x: torch.Tensor, ref: torch.Tensor | None, dy2: torch.Tensor,
                dx2: torch.Tensor) -> tuple[torch.Tensor, Correlation, Correlation | None]:
        z, intra = self.intra(x, x, dy2, dx2)
        inter = None
        if self.inter is not None:
            z_inter, inter = self.inter(x, ref, dy2, dx2)
            z = z - z_inter
        if self.residual or self.inter is None:
            z = z + x
        z = self.norm1(z)
        return self.norm2(z + self.ffn(z)), intra, inter


@dataclass
class LevelOutput:
    """One level's forward: features X and reconstruction B x N x C, per-layer branches."""

    features: torch.Tensor
    recon: torch.Tensor
    intra: list[Correlation]
    inter: list[Correlation]
    grid: tuple[int, int]


def token_projection(channels: int, d_model: int) -> nn.Linear:
    """The 1x1 projection C -> D of features to tokens, its weight drawn as the authors' code
    draws it (Kaiming normal, fan-in, gain sqrt(2)): std sqrt(2 / C), about 2.4x that of the
    default Linear init, so features weigh more against the fixed encoding from the start."""
    layer = nn.Linear(channels, d_model)
    nn.init.kaiming_normal_(layer.weight, mode="fan_in", nonlinearity="leaky_relu")
    return layer


class LevelTransformer(nn.Module):
    """Token projection + fixed encoding, reference projection, `layers` I2Correlation
    layers, final LayerNorm and Linear D -> C. features B x C x h x w -> LevelOutput."""

    def __init__(self, channels: int, grid: tuple[int, int], d_model: int, heads: int, layers: int,
                 ffn_ratio: int, residual: bool, intra_only: bool) -> None:
        super().__init__()
        self.grid = grid
        self.intra_only = intra_only
        self.embed = token_projection(channels, d_model)
        self.ref_embed = None if intra_only else token_projection(channels, d_model)
        self.layers = nn.ModuleList(
            I2CorrelationLayer(d_model, heads, ffn_ratio, residual, intra_only) for _ in range(layers))
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, channels)
        h, w = grid
        self.register_buffer("pos", sincos_2d(h, w, d_model), persistent=False)
        dy2, dx2 = squared_offsets(h, w)
        self.register_buffer("dy2", dy2, persistent=False)
        self.register_buffer("dx2", dx2, persistent=False)

    def forward(self, features: torch.Tensor, reference: torch.Tensor | None) -> LevelOutput:
        """features: B x C x h x w; reference: C x h x w (the training mean) or None."""
        b, c, h, w = features.shape
        if (h, w) != self.grid:
            raise ValueError(f"FOD level built for a {self.grid} grid got features of {h}x{w}")
        tokens = features.flatten(2).transpose(1, 2)  # B x N x C
        x = self.embed(tokens) + self.pos
        ref = None
        if self.ref_embed is not None:
            ref = (self.ref_embed(reference.flatten(1).t()) + self.pos)[None]  # 1 x N x D, shared by all layers
        intra, inter = [], []
        for layer in self.layers:
            x, a, e = layer(x, ref, self.dy2, self.dx2)
            intra.append(a)
            if e is not None:
                inter.append(e)
        recon = full(self.head(self.norm(x)))
        return LevelOutput(full(tokens), recon, intra, inter, (h, w))
