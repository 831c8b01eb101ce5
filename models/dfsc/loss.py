"""DFSC's training losses (EfficientAD's L_hard, L_ae, L_stae, penalty, and DFSC's constraint).

All functions take float32 tensors (callers cast outputs of a bf16 autocast region) and
compute quantiles with `quantile`, which has no input-size limit (torch.quantile refuses
inputs above 16M elements).

Notation (METHODS.md): T teacher features normalised per channel, S student, A
autoencoder, all B x C x H x W with C = 384.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def quantile(x: torch.Tensor, q: float, dim: int | None = None) -> torch.Tensor:
    """`torch.quantile(x, q, dim)` (linear interpolation) for inputs of any size.

    `dim=None`: over all elements (a 0-d tensor); else along `dim` (that dim removed).
    Exact, with no size limit (torch.quantile refuses more than 16M elements): the two
    order statistics around q * (n - 1) come from `topk` when they lie in the top or
    bottom eighth (L_hard's 0.999 quantile: a partial selection, ~6x faster than a full
    one), else from `kthvalue`.
    """
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile q must be in [0, 1], got {q}")
    if dim is None:
        x, dim = x.reshape(-1), 0
    dim = dim % x.dim()
    n = x.shape[dim]
    if n == 0:
        raise ValueError("quantile of an empty tensor")
    pos = q * (n - 1)
    lo = min(math.floor(pos), n - 1)
    hi = min(lo + 1, n - 1) if pos > lo else lo
    if n - lo <= max(n // 8, 1):  # both order statistics among the largest n - lo values
        top = x.topk(n - lo, dim=dim, largest=True, sorted=True).values  # descending
        low, high = top.select(dim, n - lo - 1), top.select(dim, n - hi - 1)
    elif hi + 1 <= max(n // 8, 1):  # among the smallest hi + 1 values
        bottom = x.topk(hi + 1, dim=dim, largest=False, sorted=True).values  # ascending
        low, high = bottom.select(dim, lo), bottom.select(dim, hi)
    else:
        low = x.kthvalue(lo + 1, dim=dim).values
        high = low if hi == lo else x.kthvalue(hi + 1, dim=dim).values
    if hi == lo:
        return low
    return torch.lerp(low, high, torch.as_tensor(pos - lo, dtype=low.dtype, device=low.device))


def top_quantile_mask(d: torch.Tensor, q: float) -> torch.Tensor:
    """Per image (dim 0), True where `d` >= that image's q-quantile over its other dims."""
    flat = d.detach().reshape(d.shape[0], -1)
    threshold = quantile(flat, q, dim=1)
    return (flat >= threshold[:, None]).reshape(d.shape)


def hard_loss(d_st: torch.Tensor, q: float) -> torch.Tensor:
    """L_hard: mean of the elements of D = (T - S_st)^2 at or above each image's q-quantile.

    The quantile is per image, which equals EfficientAD's per-batch quantile at batch 1
    (the paper's setting) and keeps its meaning at larger batches.
    """
    mask = top_quantile_mask(d_st, q)  # a masked mean, not d_st[mask]: static shapes for torch.compile
    return (d_st * mask).sum() / mask.sum()


def dfsc_loss(teacher: torch.Tensor, ae: torch.Tensor, d_ta: torch.Tensor, q: float, margin: float,
              reduction: str = "channel") -> torch.Tensor:
    """Distinctive feature separation constraint (METHODS.md's reconstruction of eq. 3-6).

    teacher, ae: B x C x H x W; d_ta = (teacher - ae)^2, B x C x H x W.
    reduction "channel": D_TA = mean over channels per location; the mask M keeps the
    locations at or above each image's q-quantile of D_TA. "element": the quantile and
    the mask are per element of d_ta. Then T^, A^ = L2-normalised (over channels) M * T,
    M * A; d = ||T^ - A^||_2 per location (in [0, 2]); loss = mean over the locations M
    touches of max(0, margin - d). The teacher is detached, so the gradient reaches only
    the autoencoder. ("element" follows the paper's text literally: mask the features,
    then normalise; where the mask keeps a single channel of a location, the normalised
    vectors are +-e_c and that location passes no gradient.)
    """
    teacher = teacher.detach()
    if reduction == "channel":
        mask = top_quantile_mask(d_ta.mean(dim=1, keepdim=True), q)  # B x 1 x H x W
        t, a = teacher, ae
    elif reduction == "element":
        mask = top_quantile_mask(d_ta, q)  # B x C x H x W
        t, a = teacher * mask, ae * mask
    else:
        raise ValueError(f"dfsc reduction must be 'channel' or 'element', got {reduction!r}")
    where = mask.any(dim=1)  # B x H x W: locations the mask touches
    d = (F.normalize(t, dim=1) - F.normalize(a, dim=1)).norm(dim=1)  # B x H x W, in [0, 2]
    return (F.relu(margin - d) * where).sum() / where.sum()  # mean over `where`, static shapes


def separation(teacher: torch.Tensor, ae: torch.Tensor) -> torch.Tensor:
    """d = ||T^ - A^||_2 per location (B x H x W), the distance the DFSC hinge acts on."""
    return (F.normalize(teacher, dim=1) - F.normalize(ae, dim=1)).norm(dim=1)


def penalty_loss(student_st: torch.Tensor) -> torch.Tensor:
    """EfficientAD's ImageNet penalty: mean(S_st(I_penalty)^2) (DFSC drops it; optional)."""
    return student_st.pow(2).mean()
