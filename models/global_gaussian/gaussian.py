"""A multivariate Gaussian of image descriptors: Ledoit-Wolf shrinkage and the Mahalanobis
distance, in float64 torch (no scikit-learn in models/).

Ledoit & Wolf (2004): with S = X^T X / n the empirical covariance of the n centred rows
x_k of X (n x p), m = tr(S) / p, d^2 = |S - m I|_F^2 / p and
b^2 = min(d^2, (sum_k |x_k|^4 / n - |S|_F^2) / (n p)), the shrunk covariance is
(b^2 / d^2) m I + (1 - b^2 / d^2) S: few images and many dimensions need it (60 images,
~1000 dimensions: S alone is singular).
"""

from __future__ import annotations

import torch


def ledoit_wolf_shrinkage(centred: torch.Tensor) -> float:
    """The Ledoit-Wolf coefficient in [0, 1] for n x p centred rows (0 when S = m I)."""
    x = centred.double()
    n, p = x.shape
    cov = x.T @ x / n
    mu = torch.diagonal(cov).sum() / p
    cov_sq = (cov * cov).sum()
    delta = (cov_sq - p * mu * mu) / p
    beta = ((x * x).sum(dim=1).pow(2).sum() / n - cov_sq) / (n * p)
    beta = torch.minimum(beta, delta)
    return 0.0 if float(delta) <= 0 else float(beta / delta)


def fit_gaussian(rows: torch.Tensor, shrinkage: float = -1.0) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(mean p, precision p x p, shrinkage used) of n x p rows, float64. shrinkage < 0: the
    Ledoit-Wolf coefficient; in [0, 1]: that fixed coefficient. The precision is the
    pseudo-inverse of the (symmetric) shrunk covariance."""
    x = rows.double()
    n, p = x.shape
    mean = x.mean(dim=0)
    centred = x - mean
    cov = centred.T @ centred / n
    coefficient = ledoit_wolf_shrinkage(centred) if shrinkage < 0 else float(shrinkage)
    mu = torch.diagonal(cov).sum() / p
    shrunk = (1.0 - coefficient) * cov
    shrunk.diagonal().add_(coefficient * mu)
    precision = torch.linalg.pinv(shrunk, hermitian=True)
    return mean, (precision + precision.T) / 2, coefficient


def mahalanobis(rows: torch.Tensor, mean: torch.Tensor, precision: torch.Tensor) -> torch.Tensor:
    """B x p -> B distances sqrt((x - mean)^T P (x - mean)), float64."""
    diff = rows.double() - mean
    return ((diff @ precision) * diff).sum(dim=1).clamp_min(0.0).sqrt()
