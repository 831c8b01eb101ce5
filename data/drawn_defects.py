"""Structural defects drawn into normal images: scratches, stains and dents.

A second family of synthetic structural anomalies, disjoint from the Perlin-masked texture blends
of `anomaly_synthesis.structural_anomaly` (the family SLSG's anomaly simulation trains on). A model
trained to find one family is scored fairly on the other: the leak-free objective draws from the
families its models did not train on.

* ``scratch``: a thin curved line (a quadratic Bezier curve, 15-45% of the shorter side long, 1-3
  px wide at 256 px), lighter or darker than the surface under it, with antialiased edges;
* ``stain``: a smooth blob (an ellipse with a blurred edge, 6-16% of the side across) of a darker
  or tinted colour at partial opacity: contamination, a drop, a burn mark;
* ``dent``: the image pushed in or pulled out about a point (a radial warp of its own pixels,
  radius 5-12% of the side, centred where the image has edges to bend): a dent, a bulge.

Every defect lands on the product's foreground where `foreground_mask` finds one. Each returns
(image', mask) with the pixels outside the mask untouched.
"""

from __future__ import annotations

from typing import Callable

import cv2
import numpy as np

from .anomaly_synthesis import foreground_mask, pick_point, saliency

Rng = np.random.Generator


def _centre(image: np.ndarray, rng: Rng, margin: float, on_edges: bool = False) -> tuple[float, float]:
    """A point (x, y) on the foreground (anywhere when none is found), `margin` from the edges;
    `on_edges`: drawn with probability rising with local contrast (where a warp shows)."""
    H, W = image.shape[:2]
    weights = saliency(image) ** 2 if on_edges else np.ones((H, W), np.float32)
    foreground = foreground_mask(image)
    if foreground is not None:
        weights = weights * foreground
    return pick_point(weights, rng, margin)


def _blend(image: np.ndarray, colour: np.ndarray, alpha: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """image' = alpha colour + (1 - alpha) image (colour: 3 or H x W x 3); mask = alpha > 0.05."""
    mask = alpha > 0.05
    a = alpha[..., None]
    out = np.where(mask[..., None], np.rint(a * colour + (1 - a) * image), image)
    return np.clip(out, 0, 255).astype(np.uint8), mask


def _contrast_colour(image: np.ndarray, alpha: np.ndarray, rng: Rng) -> np.ndarray:
    """A grey 60-120 levels lighter or darker than the mean under `alpha` (whichever fits)."""
    under = image[alpha > 0.05].mean(axis=0)
    step = rng.uniform(60, 120) * (1 if rng.random() < 0.5 else -1)
    if not 0 <= under.mean() + step <= 255:
        step = -step
    return np.clip(under + step, 0, 255).astype(np.float32)


def scratch(image: np.ndarray, rng: Rng) -> tuple[np.ndarray, np.ndarray]:
    """A thin curved line, lighter or darker than the surface, with antialiased edges."""
    H, W = image.shape[:2]
    side = min(H, W)
    length = rng.uniform(0.15, 0.45) * side
    x, y = _centre(image, rng, length / 2)
    angle = rng.uniform(0, np.pi)
    direction, normal = np.array([np.cos(angle), np.sin(angle)]), np.array([-np.sin(angle), np.cos(angle)])
    ends = np.array([x, y]) + np.outer([-0.5, 0.5], direction) * length
    control = np.array([x, y]) + normal * rng.uniform(-0.3, 0.3) * length
    t = np.linspace(0, 1, 48)[:, None]
    curve = (1 - t) ** 2 * ends[0] + 2 * (1 - t) * t * control + t ** 2 * ends[1]
    width = max(1, int(round(rng.uniform(1, 3) * side / 256)))
    canvas = np.zeros((H * 4, W * 4), np.uint8)  # drawn at 4x and shrunk: smooth edges
    cv2.polylines(canvas, [np.rint(curve * 4).astype(np.int32)], False, 255, 4 * width, cv2.LINE_AA)
    alpha = cv2.resize(canvas, (W, H), interpolation=cv2.INTER_AREA).astype(np.float32) / 255
    return _blend(image, _contrast_colour(image, alpha, rng), alpha * rng.uniform(0.7, 1.0))


def stain(image: np.ndarray, rng: Rng) -> tuple[np.ndarray, np.ndarray]:
    """A smooth blob of a darker or tinted colour at partial opacity."""
    H, W = image.shape[:2]
    side = min(H, W)
    radii = rng.uniform(0.03, 0.08, 2) * side
    x, y = _centre(image, rng, radii.max())
    canvas = np.zeros((H, W), np.float32)
    cv2.ellipse(canvas, (int(x), int(y)), (max(1, int(radii[0])), max(1, int(radii[1]))),
                float(rng.uniform(0, 180)), 0, 360, 1.0, -1)
    alpha = cv2.GaussianBlur(canvas, (0, 0), max(0.5, radii.min() / 3)) * rng.uniform(0.5, 0.9)
    tint = rng.uniform(0.2, 0.7, 3) * (1.0 if rng.random() < 0.5 else rng.uniform(0.5, 1.5, 3))
    colour = np.clip(image[alpha > 0.05].mean(axis=0) * tint, 0, 255).astype(np.float32)
    return _blend(image, colour, alpha)


def dent(image: np.ndarray, rng: Rng) -> tuple[np.ndarray, np.ndarray]:
    """The image pushed in or pulled out about a point: a radial warp of its own pixels."""
    H, W = image.shape[:2]
    radius = rng.uniform(0.05, 0.12) * min(H, W)
    x, y = _centre(image, rng, radius, on_edges=True)
    ys, xs = np.mgrid[0:H, 0:W].astype(np.float32)
    dx, dy = xs - x, ys - y
    r = np.sqrt(dx * dx + dy * dy) / radius
    bump = np.where(r < 1, (1 - r * r) ** 2, 0).astype(np.float32)
    strength = rng.uniform(0.35, 0.6) * (1 if rng.random() < 0.5 else -1)  # > 0 pinches in, < 0 bulges out
    map_x, map_y = xs + strength * bump * dx, ys + strength * bump * dy
    warped = cv2.remap(image, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    mask = np.abs(strength * bump) * np.sqrt(dx * dx + dy * dy) > 0.5  # moved by over half a pixel
    return np.where(mask[..., None], warped, image), mask


DRAWN: dict[str, Callable[[np.ndarray, Rng], tuple[np.ndarray, np.ndarray]]] = {
    "scratch": scratch, "stain": stain, "dent": dent}


def drawn_anomaly(image: np.ndarray, rng: Rng) -> tuple[np.ndarray, np.ndarray]:
    """One of DRAWN's defects, chosen at random, on `image` (uint8 H x W x 3): (image', mask).
    A defect that changes no pixel (a dent on a flat colour) gives way to a scratch."""
    kinds = list(DRAWN)
    out, mask = DRAWN[kinds[int(rng.integers(len(kinds)))]](image, rng)
    if not (out != image).any(axis=2)[mask].any():
        out, mask = scratch(image, rng)
    return out, mask
