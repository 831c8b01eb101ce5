"""The SG block: self-attention (dense) + a sparse top-K graph with max-relative graph
convolution, at SLSG's 16 x 16 bottleneck (METHODS.md, SLSG)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def conv_bn(cin: int, cout: int, kernel: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, padding=kernel // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(cout))


def sincos_position_encoding(h: int, w: int, dim: int = 64, device=None) -> torch.Tensor:
    """Fixed 2-D sine-cosine encoding: (h * w) x dim, half the channels for y, half for x
    (each half: sin and cos at dim / 4 frequencies 1 / 10000^(i / (dim / 4)))."""
    if dim % 4:
        raise ValueError(f"position encoding dim must be a multiple of 4, got {dim}")
    quarter = dim // 4
    freqs = 1.0 / (10000 ** (torch.arange(quarter, dtype=torch.float32, device=device) / quarter))
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32, device=device),
                            torch.arange(w, dtype=torch.float32, device=device), indexing="ij")
    parts = []
    for coord in (ys.reshape(-1), xs.reshape(-1)):
        angles = coord[:, None] * freqs[None, :]
        parts += [angles.sin(), angles.cos()]
    return torch.cat(parts, dim=1)


def sparse_neighbours(f: torch.Tensor, k: int, position: torch.Tensor | None = None) -> torch.Tensor:
    """B x N x k indices of the top-k nodes by W_s = cos(f_i, f_j) - cos(P_i, P_j) (Eq. 4-5),
    or by cos(f_i, f_j) alone when `position` (N x Cp) is None. f: B x N x C."""
    with torch.no_grad():
        fn = F.normalize(f.float(), dim=-1)
        similarity = fn @ fn.transpose(1, 2)
        if position is not None:
            pn = F.normalize(position.float(), dim=-1)
            similarity = similarity - pn @ pn.t()
        return similarity.topk(min(k, f.shape[1]), dim=-1).indices


def max_relative(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Max-relative graph convolution (Eq. 6): v_i' = max_j (x_j - x_i) over neighbours j.
    x: B x N x C, index: B x N x K -> B x N x C."""
    B, N, C = x.shape
    K = index.shape[-1]
    neighbours = torch.gather(x, 1, index.reshape(B, N * K, 1).expand(B, N * K, C)).reshape(B, N, K, C)
    return (neighbours - x[:, :, None, :]).amax(dim=2)


class SGBlock(nn.Module):
    """B x C x h x w -> B x C x h x w (C = 512 at the bottleneck).

    fc1 (1x1 + BN); dense branch: f = g (shared, 1x1 + BN, C -> C/2; separate g when
    `shared_qk` is off), h a 3x3 conv, Z = softmax(f^T g [/ sqrt(d)]) h, W (1x1) added to the
    fc1 output; sparse branch: top-K neighbours by W_s on f, max-relative graph conv on the
    fc1 output; [Z', V''] -> grouped 1x1 (groups 4) + BN + GELU -> 1x1 + BN, plus the input.
    """

    def __init__(self, channels: int = 512, k: int = 9, shared_qk: bool = True, attn_scale: bool = True,
                 pos_subtract: bool = True, pos_dim: int = 64) -> None:
        super().__init__()
        self.k, self.attn_scale, self.pos_subtract, self.pos_dim = k, attn_scale, pos_subtract, pos_dim
        inner = channels // 2
        self.fc1 = conv_bn(channels, channels)
        self.f = conv_bn(channels, inner)
        self.g = None if shared_qk else conv_bn(channels, inner)
        self.h = nn.Conv2d(channels, channels, 3, padding=1)
        self.w = nn.Conv2d(channels, channels, 1)
        self.update = nn.Sequential(conv_bn(2 * channels, 2 * channels, groups=4), nn.GELU(),
                                    conv_bn(2 * channels, channels))
        self._positions: dict[tuple, torch.Tensor] = {}

    def position(self, h: int, w: int, device) -> torch.Tensor:
        key = (h, w, str(device))
        if key not in self._positions:
            self._positions[key] = sincos_position_encoding(h, w, self.pos_dim, device)
        return self._positions[key]

    def neighbours(self, x: torch.Tensor) -> torch.Tensor:
        """B x N x K graph neighbours of the fc1 output's nodes (what the sparse branch uses)."""
        y = self.fc1(x)
        f = self.f(y).flatten(2).transpose(1, 2)
        return sparse_neighbours(f, self.k, self.position(*x.shape[-2:], x.device) if self.pos_subtract else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        y = self.fc1(x)
        f = self.f(y).flatten(2).transpose(1, 2)  # B x N x C/2
        g = f if self.g is None else self.g(y).flatten(2).transpose(1, 2)
        logits = f @ g.transpose(1, 2)
        if self.attn_scale:
            logits = logits / math.sqrt(f.shape[-1])
        attention = logits.softmax(dim=-1)  # B x N x N
        values = self.h(y).flatten(2).transpose(1, 2)  # B x N x C
        z = (attention @ values).transpose(1, 2).reshape(B, C, H, W)
        dense = self.w(z) + y
        position = self.position(H, W, x.device) if self.pos_subtract else None
        nodes = y.flatten(2).transpose(1, 2)  # B x N x C
        sparse = max_relative(nodes, sparse_neighbours(f, self.k, position))
        sparse = sparse.transpose(1, 2).reshape(B, C, H, W)
        return self.update(torch.cat([dense, sparse], dim=1)) + x
