"""Noise sources I_N for SLSG's simulation: structural (textures, the image's own permuted
patches) and logical-style (another normal image, rotated; the image grid-shuffled; flipped).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from ..anomaly_synthesis import _shuffle_patches, _square_rgb, _texture_view, texture_bank
from ..errors import DatasetError
from ..images import read_image_rgb

Rng = np.random.Generator
_IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
LOGICAL_SOURCES = ("other", "shuffle", "flip")


# ------------------------------------------------------------------------------- textures
@lru_cache(maxsize=4)
def _folder_textures(folder: str, size: int) -> tuple[np.ndarray, ...]:
    root = Path(folder)
    if not root.is_dir():
        raise DatasetError(f"{folder}: texture_dir not found; expected a folder of texture images (e.g. DTD)")
    paths = sorted(p for p in root.rglob("*") if p.suffix.lower() in _IMAGE_SUFFIXES)
    if not paths:
        raise DatasetError(f"{folder}: no images ({', '.join(sorted(_IMAGE_SUFFIXES))}) under texture_dir")
    textures = []
    for path in paths:
        texture = _square_rgb(read_image_rgb(path), size)
        texture.setflags(write=False)
        textures.append(texture)
    return tuple(textures)


def load_textures(folder: str, size: int) -> list[np.ndarray]:
    """Texture images as size x size RGB uint8: every image under `folder` (recursively), or
    scikit-image's bundled textures when `folder` is "" (cached per folder and size)."""
    if not folder:
        return texture_bank(size)
    return list(_folder_textures(str(folder), int(size)))


# ---------------------------------------------------------------------- photometric ops
def _gamma(image: np.ndarray, rng: Rng) -> np.ndarray:
    gamma = rng.uniform(0.5, 2.0)
    table = np.clip(255.0 * (np.arange(256) / 255.0) ** gamma, 0, 255).astype(np.uint8)
    return table[image]


def _brightness(image: np.ndarray, rng: Rng) -> np.ndarray:
    return np.clip(image.astype(np.float32) * rng.uniform(0.8, 1.2) + rng.uniform(-30, 30), 0, 255).astype(np.uint8)


def _sharpen(image: np.ndarray, rng: Rng) -> np.ndarray:
    blurred = cv2.GaussianBlur(image, (0, 0), 1.0)
    amount = rng.uniform(0.5, 2.0)
    return cv2.addWeighted(image, 1 + amount, blurred, -amount, 0)


def _hue_saturation(image: np.ndarray, rng: Rng) -> np.ndarray:
    hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV).astype(np.int16)
    hsv[..., 0] = (hsv[..., 0] + int(rng.integers(-25, 26))) % 180  # OpenCV hue is 0..179
    hsv[..., 1] = np.clip(hsv[..., 1] + int(rng.integers(-50, 51)), 0, 255)
    return cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB)


def _solarize(image: np.ndarray, rng: Rng) -> np.ndarray:
    threshold = int(rng.integers(32, 129))
    return np.where(image >= threshold, 255 - image, image).astype(np.uint8)


def _posterize(image: np.ndarray, rng: Rng) -> np.ndarray:
    bits = int(rng.integers(4, 9))
    return (image & np.uint8((0xFF << (8 - bits)) & 0xFF)).astype(np.uint8)


def _invert(image: np.ndarray, rng: Rng) -> np.ndarray:
    return (255 - image).astype(np.uint8)


def _autocontrast(image: np.ndarray, rng: Rng) -> np.ndarray:
    low, high = image.reshape(-1, 3).min(axis=0), image.reshape(-1, 3).max(axis=0)
    scale = 255.0 / np.maximum(high.astype(np.float32) - low, 1.0)
    return np.clip((image.astype(np.float32) - low) * scale, 0, 255).astype(np.uint8)


def _equalize(image: np.ndarray, rng: Rng) -> np.ndarray:
    return np.stack([cv2.equalizeHist(np.ascontiguousarray(image[..., c])) for c in range(3)], axis=2)


PHOTOMETRIC = (_gamma, _brightness, _sharpen, _hue_saturation, _solarize, _posterize, _invert, _autocontrast,
               _equalize)


def photometric(image: np.ndarray, rng: Rng, n_ops: int) -> np.ndarray:
    """`n_ops` distinct random photometric ops (gamma, brightness, sharpness, hue/saturation,
    solarize, posterize, invert, autocontrast, equalize) applied in a random order."""
    for index in rng.permutation(len(PHOTOMETRIC))[:n_ops]:
        image = PHOTOMETRIC[int(index)](np.ascontiguousarray(image), rng)
    return image


# ----------------------------------------------------------------------------- sources
def structural_source(image: np.ndarray, textures: Sequence[np.ndarray], rng: Rng, p_self: float,
                      n_ops: int) -> np.ndarray:
    """A texture (rotated, mirrored, rolled) or, with probability `p_self` (or without
    textures), the image's own patches permuted; then `n_ops` photometric ops. H x W x 3 uint8."""
    hw = image.shape[:2]
    if not textures or rng.random() < p_self:
        source = _shuffle_patches(image, rng)
    else:
        source = _texture_view(textures[int(rng.integers(len(textures)))], hw, rng)
    return photometric(source, rng, n_ops)


def _rotate(image: np.ndarray, angle: float) -> np.ndarray:
    H, W = image.shape[:2]
    matrix = cv2.getRotationMatrix2D(((W - 1) / 2, (H - 1) / 2), angle, 1.0)
    return cv2.warpAffine(image, matrix, (W, H), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)


def logical_source(image: np.ndarray, others: Sequence[np.ndarray], rng: Rng, kinds: Sequence[str],
                   rotation: float) -> np.ndarray:
    """A logical-style source, its kind drawn uniformly from `kinds` (LOGICAL_SOURCES):
    'other' another normal image rotated by up to `rotation` degrees (the image flipped
    when there is no other), 'shuffle' the image grid-shuffled, 'flip' the image flipped."""
    kind = kinds[int(rng.integers(len(kinds)))]
    if kind == "other" and others:
        other = others[int(rng.integers(len(others)))]
        return _rotate(other, float(rng.uniform(-rotation, rotation))) if rotation > 0 else other
    if kind == "shuffle":
        return _shuffle_patches(image, rng)
    flips = (image[::-1], image[:, ::-1], image[::-1, ::-1])
    return np.ascontiguousarray(flips[int(rng.integers(3))])
