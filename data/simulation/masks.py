"""Anomaly masks for SLSG's simulation: rotated, binarised Perlin noise times a foreground mask.

The noise itself is `anomaly_synthesis.perlin_noise` (gradient noise scaled to [-1, 1]);
here it is drawn at a lattice scale of 2^k cells (k uniform in [min_exp, max_exp]),
rotated by up to `rotation` degrees, thresholded, and kept on the foreground. A mask
smaller than `min_area` pixels is redrawn; after `tries` draws the `min_area` highest
noise pixels on the foreground are taken, so a mask is never empty, always inside the
foreground and never below the minimum area.
"""

from __future__ import annotations

from typing import Callable

import cv2
import numpy as np

from ..anomaly_synthesis import foreground_mask as _border_foreground
from ..anomaly_synthesis import perlin_noise

Rng = np.random.Generator
TRIES = 10


def rotated_perlin(shape: tuple[int, int], rng: Rng, min_exp: int, max_exp: int, rotation: float) -> np.ndarray:
    """Perlin noise (float32 H x W in [-1, 1]) at 2^k lattice cells, k in [min_exp, max_exp],
    rotated about the centre by an angle in [-rotation, rotation] (reflected borders)."""
    scale = 2 ** int(rng.integers(min_exp, max_exp + 1))
    noise = perlin_noise(shape, scale, rng)
    if rotation > 0:
        angle = float(rng.uniform(-rotation, rotation))
        matrix = cv2.getRotationMatrix2D(((shape[1] - 1) / 2, (shape[0] - 1) / 2), angle, 1.0)
        noise = cv2.warpAffine(noise, matrix, (shape[1], shape[0]), flags=cv2.INTER_LINEAR,
                               borderMode=cv2.BORDER_REFLECT_101)
    return noise


def perlin_anomaly_mask(shape: tuple[int, int], rng: Rng, threshold: float, min_exp: int, max_exp: int,
                        rotation: float, min_area: int, foreground: np.ndarray | None = None) -> np.ndarray:
    """Bool H x W: rotated Perlin noise > `threshold`, times `foreground` (None: everywhere),
    with at least `min_area` pixels (see the module doc). A foreground with fewer than
    `min_area` pixels is ignored (the whole image is used)."""
    if foreground is None or int(foreground.sum()) < min_area:
        foreground = np.ones(shape, bool)
    min_area = min(int(min_area), foreground.size)
    noise = None
    for _ in range(TRIES):
        noise = rotated_perlin(shape, rng, min_exp, max_exp, rotation)
        mask = (noise > threshold) & foreground
        if mask.sum() >= max(min_area, 1):
            return mask
    # fallback: the min_area highest noise pixels on the foreground
    ranked = np.where(foreground, noise, -np.inf).ravel()
    top = np.argpartition(-ranked, max(min_area, 1) - 1)[:max(min_area, 1)]
    mask = np.zeros(foreground.size, bool)
    mask[top] = True
    return mask.reshape(shape)


def scaled_min_area(min_area_256: int, image_size: int) -> int:
    """The minimum mask area given at 256 px, scaled with the image's area (at least 1 pixel)."""
    return max(1, round(min_area_256 * (image_size / 256) ** 2))


# ------------------------------------------------------------------------------ foregrounds
def _no_foreground(image: np.ndarray) -> np.ndarray:
    return np.ones(image.shape[:2], bool)


def _threshold_foreground(image: np.ndarray) -> np.ndarray:
    """Pixels unlike the border's median colour (anomaly_synthesis.foreground_mask); the whole
    image when that finds no clear foreground."""
    found = _border_foreground(image)
    return found if found is not None else _no_foreground(image)


#: foreground modes by name (`foreground` option); add a per-category mode by adding an entry
FOREGROUNDS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "none": _no_foreground,
    "threshold": _threshold_foreground,
}


def foreground(image: np.ndarray, mode: str) -> np.ndarray:
    """Bool H x W foreground of a uint8 RGB image under `mode` (a key of FOREGROUNDS)."""
    if mode not in FOREGROUNDS:
        raise ValueError(f"unknown foreground mode {mode!r}; expected one of {sorted(FOREGROUNDS)}")
    return FOREGROUNDS[mode](image)
