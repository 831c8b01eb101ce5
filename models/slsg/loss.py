"""SLSG's losses: LSGAN generator/discriminator terms, L1/L2 reconstruction (GPT-Net), and
focal + L1 on softmax anomaly probabilities (SegNet)."""

from __future__ import annotations

import torch

EPS = 1e-6


def lsgan_generator(fake_logits: torch.Tensor) -> torch.Tensor:
    """Eq. 8: 1/2 (D(G(x_m)) - 1)^2, averaged over patches and images."""
    return 0.5 * (fake_logits.float() - 1).pow(2).mean()


def lsgan_discriminator(fake_logits: torch.Tensor, real_logits: torch.Tensor) -> torch.Tensor:
    """Eq. 9: 1/2 D(G(x_m))^2 + 1/2 (D(x) - 1)^2 (pass D of a *detached* reconstruction)."""
    return 0.5 * fake_logits.float().pow(2).mean() + 0.5 * (real_logits.float() - 1).pow(2).mean()


def focal_loss(probability: torch.Tensor, target: torch.Tensor, gamma: float) -> torch.Tensor:
    """Binary focal loss on softmax anomaly probabilities p (B x H x W) against a 0/1 target:
    -[t (1 - p)^gamma log p + (1 - t) p^gamma log(1 - p)], mean over pixels."""
    p = probability.float().clamp(EPS, 1 - EPS)
    t = target.float()
    return -(t * (1 - p).pow(gamma) * p.log() + (1 - t) * p.pow(gamma) * (1 - p).log()).mean()


def l1_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (prediction.float() - target.float()).abs().mean()


def l2_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (prediction.float() - target.float()).pow(2).mean()
