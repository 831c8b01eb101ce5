"""FOD's losses: reconstruction (MSE + cosine), symmetric KL between target and attention,
entropy, and the two minimax losses whose stop-gradients route each term (METHODS.md).

One backward of loss1 + loss2 gives exactly the gradients of the authors' two backward
calls: in loss1 the attention is detached (its KL terms move sigma, and through sigma's
input the earlier layers); in loss2 the target is detached (its KL and entropy terms
move the attention).

`minimax_losses` writes the two losses literally (the reference the tests pin);
`fused_minimax` gives the same value of loss1 + loss2 and the same gradients with one
pass over each B x H x N x N map instead of four (the KL values cancel in the sum, only
their routed gradients remain), which is what training uses.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .network import Correlation

#: added inside every log, as the authors' code does
EPS = 1e-4


def kl_rows(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """sum_k p (log(p + eps) - log(q + eps)) over the last dim: ... x N."""
    return (p * ((p + EPS).log() - (q + EPS).log())).sum(-1)


def symmetric_kl_rows(t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """KL(t, s) + KL(s, t) per row, B x H x N x M -> B x H x N."""
    return kl_rows(t, s) + kl_rows(s, t)


def entropy_rows(p: torch.Tensor) -> torch.Tensor:
    """-sum_k p log(p + eps) per row: B x H x N x M -> B x H x N."""
    return -(p * (p + EPS).log()).sum(-1)


def reconstruction_rows(recon: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """Per token: mean_c squared error + 1 - cosine over channels. B x N x C -> B x N."""
    return (recon - features).pow(2).mean(-1) + 1.0 - F.cosine_similarity(recon, features, dim=-1)


def reconstruction_loss(recon: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """MSE over all elements + mean(1 - cos) over tokens (equal to the mean of the rows)."""
    return reconstruction_rows(recon, features).mean()


def mean_kl(branches: Sequence[Correlation], detach_target: bool, detach_attn: bool) -> torch.Tensor:
    """Symmetric KL, mean over batch, heads and queries, averaged over layers."""
    values = [symmetric_kl_rows(b.target.detach() if detach_target else b.target,
                                b.attn.detach() if detach_attn else b.attn).mean() for b in branches]
    return torch.stack(values).mean()


def mean_entropy(branches: Sequence[Correlation]) -> torch.Tensor:
    """Entropy of the attention rows, mean over batch, heads and queries, averaged over layers."""
    return torch.stack([entropy_rows(b.attn).mean() for b in branches]).mean()


def minimax_losses(rec: torch.Tensor, intra: Sequence[Correlation], inter: Sequence[Correlation],
                   lambda1: float, lambda2: float, use_entropy: bool = True) -> dict[str, torch.Tensor]:
    """loss1 (moves sigma), loss2 (moves attention) and the terms (detached) for logging.

    loss1 = rec + l1 KL_intra(T, sg S) - l1 KL_inter(T, sg S)
    loss2 = rec - l1 KL_intra(sg T, S) - l2 H_intra + l1 KL_inter(sg T, S) + l2 H_inter
    (inter terms only when `inter` is non-empty; H terms only when `use_entropy`).
    """
    kl_intra_t = mean_kl(intra, detach_target=False, detach_attn=True)
    kl_intra_s = mean_kl(intra, detach_target=True, detach_attn=False)
    h_intra = mean_entropy(intra)
    loss1 = rec + lambda1 * kl_intra_t
    loss2 = rec - lambda1 * kl_intra_s
    if use_entropy:
        loss2 = loss2 - lambda2 * h_intra
    out = {"kl_intra": kl_intra_t.detach(), "entropy_intra": h_intra.detach()}
    if inter:
        kl_inter_t = mean_kl(inter, detach_target=False, detach_attn=True)
        kl_inter_s = mean_kl(inter, detach_target=True, detach_attn=False)
        h_inter = mean_entropy(inter)
        loss1 = loss1 - lambda1 * kl_inter_t
        loss2 = loss2 + lambda1 * kl_inter_s
        if use_entropy:
            loss2 = loss2 + lambda2 * h_inter
        out.update(kl_inter=kl_inter_t.detach(), entropy_inter=h_inter.detach())
    return {"loss1": loss1, "loss2": loss2, **out}


class _RoutedTerms(torch.autograd.Function):
    """Per row: value w_h * H(S); gradient w_t * dKL/dT + w_s * dKL/dS + w_h * dH/dS, with
    KL the symmetric KL(T, S). Also returns KL and H rows (no gradient) for logging."""

    @staticmethod
    def forward(ctx, t, s, w_t: float, w_s: float, w_h: float):
        log_t, log_s = (t + EPS).log(), (s + EPS).log()
        kl = ((t - s) * (log_t - log_s)).sum(-1)
        ent = -(s * log_s).sum(-1)
        ctx.save_for_backward(t, s)
        ctx.weights = (w_t, w_s, w_h)
        ctx.mark_non_differentiable(kl, ent)
        return w_h * ent, kl, ent

    @staticmethod
    def backward(ctx, grad, _kl, _ent):
        t, s = ctx.saved_tensors
        w_t, w_s, w_h = ctx.weights
        g = grad[..., None]
        log_t, log_s = (t + EPS).log(), (s + EPS).log()
        d, diff = log_t - log_s, t - s
        grad_t = (g * w_t) * (d + diff / (t + EPS)) if w_t and ctx.needs_input_grad[0] else None
        grad_s = None
        if ctx.needs_input_grad[1]:
            grad_s = (-w_s) * (d + diff / (s + EPS)) - w_h * (log_s + s / (s + EPS))
            grad_s = g * grad_s
        return grad_t, grad_s, None, None, None


def _routed(branches: Sequence[Correlation], w_t: float, w_s: float, w_h: float):
    """(objective, KL, H), each averaged over layers of the mean over batch, heads, queries."""
    terms = [_RoutedTerms.apply(b.target, b.attn, w_t, w_s, w_h) for b in branches]
    return tuple(torch.stack([term[i].mean() for term in terms]).mean() for i in range(3))


def fused_minimax(rec: torch.Tensor, intra: Sequence[Correlation], inter: Sequence[Correlation],
                  lambda1: float, lambda2: float, use_entropy: bool = True) -> dict[str, torch.Tensor]:
    """`loss` = loss1 + loss2 in value and gradient (see `minimax_losses`), plus the values
    of loss1, loss2 and the terms (detached) for logging."""
    l2 = lambda2 if use_entropy else 0.0
    obj, kl_intra, h_intra = _routed(intra, lambda1, -lambda1, -l2)
    loss = 2 * rec + obj
    loss1 = rec + lambda1 * kl_intra
    loss2 = rec - lambda1 * kl_intra - l2 * h_intra
    out = {"kl_intra": kl_intra, "entropy_intra": h_intra}
    if inter:
        obj, kl_inter, h_inter = _routed(inter, -lambda1, lambda1, l2)
        loss = loss + obj
        loss1 = loss1 - lambda1 * kl_inter
        loss2 = loss2 + lambda1 * kl_inter + l2 * h_inter
        out.update(kl_inter=kl_inter, entropy_inter=h_inter)
    return {"loss": loss, "loss1": loss1.detach(), "loss2": loss2.detach(), **out}
