"""Structural defects, shared by every category (relative saturation 1.0; masks cover the altered
pixels): ``scratch`` (a thin bright or dark polyline), ``hole`` (a dark ellipse with a rim),
``contamination`` (a blotch textured from scikit-image's bundled coffee/brick/grass/gravel images),
``broken_part`` (a piece of a part cut away, sometimes displaced nearby; region = gap and piece).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Callable

import numpy as np
from scipy import ndimage

from .drawing import CATS, Color, Item, Rng, Scene, ellipse, polygon_mask, segment, smooth_noise

def _pick(rng: Rng, allowed: np.ndarray, min_dist: float) -> tuple[int, int]:
    """A random (row, col) of `allowed` at least `min_dist` pixels from its border (if any is)."""
    inner = ndimage.distance_transform_edt(allowed) >= min_dist
    cand = np.flatnonzero(inner if inner.any() else allowed)
    row, col = divmod(int(rng.choice(cand)), allowed.shape[1])
    return row, col


def _scratch(canvas: np.ndarray, scene: Scene, rng: Rng) -> np.ndarray:
    """A thin bent line on the product, bright across dark surfaces and dark across bright ones."""
    s, width = scene.size, max(1.0, 0.008 * scene.size)
    for _ in range(20):
        row, col = _pick(rng, scene.surface, 0.05 * s)
        length, angle = rng.uniform(0.15, 0.3) * s, rng.uniform(-np.pi, np.pi)
        pts = [np.array([col, row], float)]
        for _ in range(3):
            angle += rng.normal(0.0, 0.25)
            pts.append(pts[-1] + length / 3 * np.array([np.cos(angle), np.sin(angle)]))
        mask = polygon_mask(scene.hw, *(segment(p0, p1, width) for p0, p1 in zip(pts[:-1], pts[1:]))) & scene.surface
        if mask.sum() >= 0.6 * length * width:
            break
    mask[row, col] = True  # never empty
    bright, dark = rng.uniform(0.88, 1.0), rng.uniform(0.03, 0.15)
    under = canvas[mask]
    value = np.where(under.mean(axis=1, keepdims=True) < 0.5, bright, dark)  # contrast with the surface
    canvas[mask] = 0.15 * under + 0.85 * value
    return ndimage.binary_dilation(mask)


def _hole(canvas: np.ndarray, scene: Scene, rng: Rng) -> np.ndarray:
    """An elliptic hole with a rim: dark, or bright where the surface itself is dark."""
    rx = rng.uniform(0.022, 0.04) * scene.size
    ry = rx * rng.uniform(0.6, 1.0)
    row, col = _pick(rng, scene.surface, rx + 1)
    mask = polygon_mask(scene.hw, ellipse(col, row, rx, ry, rng.uniform(0, np.pi)))
    mask[row, col] = True  # never empty, even at tiny sizes
    rim = mask & ~ndimage.binary_erosion(mask, iterations=max(1, round(0.2 * ry)))
    dark = canvas[mask].mean() >= 0.3  # dark on most surfaces; lit from behind on dark ones
    canvas[mask] = rng.uniform(0.03, 0.1) if dark else rng.uniform(0.7, 0.8)
    canvas[rim] = 0.5 * canvas[rim] + 0.25
    return mask


@lru_cache(maxsize=1)
def textures() -> tuple[np.ndarray, ...]:
    """scikit-image's bundled textures (offline), float in [0, 1]."""
    from skimage import data

    return tuple(np.asarray(getattr(data, n)(), np.float32) / 255 for n in ("coffee", "brick", "grass", "gravel"))


STAIN_TINTS: tuple[Color, ...] = ((0.35, 0.22, 0.1), (0.1, 0.1, 0.09), (0.3, 0.42, 0.14), (0.62, 0.3, 0.1))


def _stain_colors(rng: Rng, shape: tuple[int, int]) -> np.ndarray:
    """A textured h x w x 3 patch: a random crop of a bundled texture, tinted."""
    tex = textures()[int(rng.integers(4))]
    rows = (int(rng.integers(tex.shape[0])) + np.arange(shape[0])) % tex.shape[0]
    cols = (int(rng.integers(tex.shape[1])) + np.arange(shape[1])) % tex.shape[1]
    crop = tex[np.ix_(rows, cols)]
    if crop.ndim == 3:
        return crop * rng.uniform(0.6, 0.9)
    tint = np.asarray(STAIN_TINTS[int(rng.integers(len(STAIN_TINTS)))], np.float32)
    return tint * (0.35 + 0.9 * crop)[..., None]


def _contrasting_stain(rng: Rng, under: np.ndarray, shape: tuple[int, int], blob: np.ndarray) -> np.ndarray:
    """Stain colours for the blob's pixels, redrawn (a few times) until they stand out from `under`."""
    best, best_contrast = None, -1.0
    for _ in range(6):
        colors = _stain_colors(rng, shape)[blob]
        contrast = float(np.abs(colors - under).mean())
        if contrast > best_contrast:
            best, best_contrast = colors, contrast
        if contrast >= 0.15:
            break
    return best


def _contamination(canvas: np.ndarray, scene: Scene, rng: Rng) -> np.ndarray:
    """A blotchy, textured stain."""
    H, W = scene.hw
    for _ in range(20):
        radius = rng.uniform(0.04, 0.075) * scene.size
        row, col = _pick(rng, scene.surface, 0.5 * radius)
        r = int(np.ceil(radius))
        y0, y1, x0, x1 = max(0, row - r), min(H, row + r + 1), max(0, col - r), min(W, col + r + 1)
        yy, xx = np.mgrid[y0:y1, x0:x1]
        dist = np.hypot(yy - row, xx - col) / radius
        blob = (1 - dist + 0.45 * smooth_noise(rng, dist.shape, 3) > 0.35) & scene.surface[y0:y1, x0:x1]
        if blob.sum() >= 0.3 * np.pi * radius**2:
            break
    blob[row - y0, col - x0] = True  # never empty
    patch = canvas[y0:y1, x0:x1]
    alpha = rng.uniform(0.75, 0.9)
    patch[blob] = (1 - alpha) * patch[blob] + alpha * _contrasting_stain(rng, patch[blob], dist.shape, blob)
    mask = np.zeros(scene.hw, bool)
    mask[y0:y1, x0:x1] = blob
    return mask


def _cut(scene: Scene, rng: Rng, item: Item) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Footprint pixels (rows, cols) beyond a jagged line across the item, and the cut direction."""
    rows, cols = np.nonzero(scene.footprint(item))
    angle = rng.uniform(-np.pi, np.pi)
    d = np.array([np.cos(angle), np.sin(angle)])
    u, v = cols - cols.mean(), rows - rows.mean()
    along, across = u * d[0] + v * d[1], -u * d[1] + v * d[0]
    s = scene.size
    jag = 0.01 * s * np.sin(across / (0.015 * s) + rng.uniform(0, 6.3)) + 0.005 * s * np.sin(across / (0.006 * s))
    sel = (along > np.quantile(along, rng.uniform(0.62, 0.8)) + jag) | (along == along.max())
    return rows[sel], cols[sel], d


def _broken_part(canvas: np.ndarray, scene: Scene, rng: Rng) -> np.ndarray:
    """A piece of one part cut away; half the time the piece lies displaced nearby."""
    breakable = [i for i, it in enumerate(scene.items) if it.kind in CATS[scene.category].breakable]
    for _ in range(20):
        index = breakable[int(rng.integers(len(breakable)))]
        rows, cols, d = _cut(scene, rng, scene.items[index])
        if len(rows) >= max(6, 0.12 * scene.footprint(scene.items[index]).sum()):
            break
    under, piece = scene.render(skip=index), canvas[rows, cols].copy()
    canvas[rows, cols] = under[rows, cols]
    mask = np.zeros(scene.hw, bool)
    mask[rows, cols] = True
    if rng.random() < 0.5:
        shift = d * rng.uniform(0.04, 0.07) * scene.size + rng.normal(0, 0.01 * scene.size, 2)
        r2, c2 = rows + int(round(shift[1])), cols + int(round(shift[0]))
        ok = (r2 >= 0) & (r2 < scene.hw[0]) & (c2 >= 0) & (c2 < scene.hw[1])
        canvas[r2[ok], c2[ok]] = piece[ok]
        mask[r2[ok], c2[ok]] = True
    return mask


StructuralFn = Callable[[np.ndarray, Scene, Rng], np.ndarray]
STRUCTURAL: dict[str, StructuralFn] = {
    "broken_part": _broken_part, "scratch": _scratch, "hole": _hole, "contamination": _contamination,
}
