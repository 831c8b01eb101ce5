"""SLSG's blend: I_A = I (1 - M) + (1 - beta) S M + beta I M, and its opacity draws."""

from __future__ import annotations

import numpy as np

Rng = np.random.Generator


def blend(image: np.ndarray, source: np.ndarray, mask: np.ndarray, beta: float) -> np.ndarray:
    """uint8 H x W x 3: `image` outside the bool `mask`, (1 - beta) source + beta image inside
    (beta is the opacity of the normal image: 0 pastes the source, 1 leaves the image)."""
    out = image.copy()
    rows, cols = np.nonzero(mask)  # only masked pixels are computed
    inside = (1.0 - beta) * source[rows, cols].astype(np.float32) + beta * image[rows, cols].astype(np.float32)
    out[rows, cols] = np.clip(np.rint(inside), 0, 255).astype(np.uint8)
    return out


def logical_beta(rng: Rng, beta_max: float) -> float:
    """Opacity of a logical-style anomaly: U(0, beta_max)."""
    return float(rng.uniform(0.0, beta_max))


def structural_beta(rng: Rng, fixed: float, p_fixed: float, beta_max: float) -> float:
    """Opacity of a structural anomaly: `fixed` with probability `p_fixed`, else U(0, beta_max)."""
    return fixed if rng.random() < p_fixed else float(rng.uniform(0.0, beta_max))
