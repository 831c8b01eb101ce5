"""Anomalies synthesised from normal images: a tuning set that never touches the test split.

MVTec LOCO's validation split holds normal images only, so a hyperparameter search scores
AUROC on validation normals versus anomalies made from them (after SLSG's anomaly simulation,
see METHODS.md):

* structural: a Perlin-noise mask, kept on the foreground where one is found, blends in a
  texture: one of scikit-image's bundled images (offline) or the image's own patches shuffled,
  with brightness/contrast jitter;
* logical, on an image of separate objects (two or more found by `object_masks`): a whole
  object added or taken away, with nothing locally wrong: ``add_object`` places an object of
  another normal, turned, on free background (one part too many), ``drop_object`` paints one
  over with background (one too few). A count or arrangement broken without a cut edge is what
  a logical anomaly is; a cut edge would reward local detectors for a structural cue, and on a
  random layout (a bag of parts) a moved part is no anomaly at all.
* logical, on any other image: regions moved, duplicated, swapped or removed with content from
  other normal images: ``misplace`` copies a salient region of another normal to a new position
  (optionally rotated), ``swap`` replaces a salient region by the same region of another normal,
  shifted and rotated, ``remove`` fills a salient region with background copied from elsewhere
  in the image itself. These use nearest-neighbour warps, so every pasted pixel is a pixel of
  its source image.

`SyntheticAnomalySet` is fixed by its seed: each image draws from its own generator seeded by
(seed, kind, index), so the set is byte-identical for every trial of a sweep and does not depend
on iteration order.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Callable, Sequence

import cv2
import numpy as np
from torch.utils.data import Dataset

from .dataset import KIND_IDS, AnomalyDataset, make_item
from .layouts import Sample
from .transforms import eval_transform

Rng = np.random.Generator
Point = tuple[float, float]  # (x, y) pixels

#: scikit-image's bundled images (no download): textures first, then photographs for variety
TEXTURE_NAMES = ("brick", "grass", "gravel", "moon", "camera", "coffee", "chelsea", "immunohistochemistry")
MIN_MASK_FRACTION, MAX_MASK_FRACTION = 0.005, 0.3  # bounds on a Perlin mask's area
STRUCTURAL_THRESHOLD = 0.6  # Perlin threshold of structural masks: ~3-10% of the image
SELF_TEXTURE_P = 0.25  # chance that a structural anomaly uses the image's own shuffled patches
#: edits of regions (any image), and of whole objects (images of separate objects)
REGION_MODES, OBJECT_MODES = ("misplace", "swap", "remove"), ("add_object", "drop_object")
LOGICAL_MODES = REGION_MODES + OBJECT_MODES
CANDIDATES = 3  # region-edit candidates drawn per image; the most visible one is kept
REGION_SIZE = (0.12, 0.3)  # logical region extent, fraction of the shorter side


# ------------------------------------------------------------------------------------- Perlin noise
def _fade(t: np.ndarray) -> np.ndarray:
    return t * t * t * (t * (6 * t - 15) + 10)


def perlin_noise(shape: tuple[int, int], scale: int, rng: Rng) -> np.ndarray:
    """2-D gradient (Perlin) noise with `scale` lattice cells along each side: float32 H x W,
    divided by its largest magnitude so it spans [-1, 1] (a fixed threshold then gives areas
    of similar size at every scale). Smooth at the cell size: thresholds give blobs."""
    if scale < 1:
        raise ValueError(f"Perlin scale must be >= 1 lattice cell, got {scale}")
    angles = rng.uniform(0.0, 2 * np.pi, (scale + 1, scale + 1))
    gx, gy = np.cos(angles), np.sin(angles)
    y = (np.arange(shape[0]) + 0.5) * scale / shape[0]
    x = (np.arange(shape[1]) + 0.5) * scale / shape[1]
    iy, ix = y.astype(int), x.astype(int)
    fy, fx = (y - iy)[:, None].astype(np.float32), (x - ix)[None, :].astype(np.float32)
    gx, gy = gx.astype(np.float32), gy.astype(np.float32)

    def corner(dy: int, dx: int) -> np.ndarray:  # gathers rows, then columns: faster than 2-D
        return gx[iy + dy][:, ix + dx] * (fx - dx) + gy[iy + dy][:, ix + dx] * (fy - dy)

    u, v = _fade(fx), _fade(fy)
    top = corner(0, 0) * (1 - u) + corner(0, 1) * u
    bottom = corner(1, 0) * (1 - u) + corner(1, 1) * u
    noise = top * (1 - v) + bottom * v
    return (noise / max(float(np.abs(noise).max()), 1e-12)).astype(np.float32)


def perlin_mask(
    shape: tuple[int, int], rng: Rng, threshold: float = 0.5, min_scale: int = 1, max_scale: int = 6
) -> np.ndarray:
    """Perlin noise above `threshold` at a random scale in [min_scale, max_scale]: bool H x W,
    never empty and covering between MIN_MASK_FRACTION and MAX_MASK_FRACTION of the image (the
    threshold moves to the matching quantile when the noise would give less or more)."""
    noise = perlin_noise(shape, int(rng.integers(min_scale, max_scale + 1)), rng)
    mask = noise > threshold
    fraction = mask.mean()
    if fraction < MIN_MASK_FRACTION or fraction > MAX_MASK_FRACTION:
        target = float(np.clip(fraction, MIN_MASK_FRACTION, MAX_MASK_FRACTION))
        mask = noise >= np.quantile(noise, 1.0 - target)
    return mask


# -------------------------------------------------------------------------------------- textures
def _square_rgb(image: np.ndarray, size: int) -> np.ndarray:
    """The centre square of an image, RGB uint8, resized to size x size."""
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    image = image[..., :3].astype(np.uint8)
    h, w = image.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    square = image[top:top + side, left:left + side]
    interp = cv2.INTER_AREA if side > size else cv2.INTER_LINEAR
    return cv2.resize(square, (size, size), interpolation=interp)


@lru_cache(maxsize=4)
def _texture_tuple(size: int) -> tuple[np.ndarray, ...]:
    from skimage import data

    textures = []
    for name in TEXTURE_NAMES:
        try:
            texture = _square_rgb(getattr(data, name)(), size)
        except Exception:  # an image missing from this scikit-image install: use the others
            continue
        texture.setflags(write=False)  # shared by every caller through the cache
        textures.append(texture)
    return tuple(textures)


def texture_bank(size: int) -> list[np.ndarray]:
    """scikit-image's bundled textures and photographs as size x size RGB uint8 (read-only,
    cached per size); images this install lacks are left out."""
    return list(_texture_tuple(int(size)))


def _shuffle_patches(image: np.ndarray, rng: Rng) -> np.ndarray:
    """The image cut into a g x g grid (g in 4..8) with the cells permuted: its own colours and
    textures with the structure broken (SLSG's texture source when no texture folder is given)."""
    H, W = image.shape[:2]
    g = int(rng.integers(4, 9))
    by, bx = np.arange(H) * g // H, np.arange(W) * g // W
    start_y, start_x = -(-np.arange(g) * H // g), -(-np.arange(g) * W // g)
    perm = rng.permutation(g * g)[by[:, None] * g + bx[None, :]]
    rows = np.clip(start_y[perm // g] + (np.arange(H) - start_y[by])[:, None], 0, H - 1)
    cols = np.clip(start_x[perm % g] + (np.arange(W) - start_x[bx])[None, :], 0, W - 1)
    return image[rows, cols]


def _texture_view(texture: np.ndarray, hw: tuple[int, int], rng: Rng) -> np.ndarray:
    """A texture rotated by a multiple of 90 degrees, maybe mirrored, rolled, fitted to hw."""
    view = np.rot90(texture, int(rng.integers(4)))
    if rng.random() < 0.5:
        view = view[:, ::-1]
    view = np.roll(view, (int(rng.integers(view.shape[0])), int(rng.integers(view.shape[1]))), axis=(0, 1))
    if view.shape[0] < hw[0] or view.shape[1] < hw[1]:
        view = cv2.resize(np.ascontiguousarray(view), (max(hw[1], view.shape[1]), max(hw[0], view.shape[0])))
    return view[:hw[0], :hw[1]]


def _jitter(colors: np.ndarray, rng: Rng) -> np.ndarray:
    """Brightness, contrast and a per-channel tint on N x 3 colours, so the texture's look varies."""
    colors = colors.astype(np.float32)
    contrast, brightness = np.float32(rng.uniform(0.6, 1.4)), np.float32(rng.uniform(-40.0, 40.0))
    tint = rng.uniform(0.75, 1.25, 3).astype(np.float32)
    mean = colors.mean(axis=0)
    return np.clip(((colors - mean) * contrast + mean + brightness) * tint, 0, 255)


# ----------------------------------------------------------------------------------- structural
def foreground_mask(image: np.ndarray) -> np.ndarray | None:
    """Pixels unlike the border's median colour, dilated a little: where the product is.
    None when that covers under 10% or over 95% of the image (no clear foreground)."""
    H, W = image.shape[:2]
    border = np.concatenate([image[:4].reshape(-1, 3), image[-4:].reshape(-1, 3),
                             image[:, :4].reshape(-1, 3), image[:, -4:].reshape(-1, 3)])
    diff = cv2.absdiff(image, np.full_like(image, np.median(border, axis=0).astype(np.uint8)))
    distance = np.maximum(np.maximum(diff[..., 0], diff[..., 1]), diff[..., 2])
    radius = max(1, min(H, W) // 64)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    foreground = cv2.dilate((distance > 30).astype(np.uint8), kernel).astype(bool)
    return foreground if 0.1 <= foreground.mean() <= 0.95 else None


def _structural_mask(image: np.ndarray, rng: Rng) -> np.ndarray:
    """A Perlin mask, kept on the foreground when enough of it lands there."""
    mask = perlin_mask(image.shape[:2], rng, threshold=STRUCTURAL_THRESHOLD, min_scale=2, max_scale=6)
    foreground = foreground_mask(image)
    if foreground is not None and (mask & foreground).sum() >= MIN_MASK_FRACTION * mask.size:
        mask &= foreground
    return mask


def structural_anomaly(
    image: np.ndarray, rng: Rng, textures: Sequence[np.ndarray] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Blend a jittered texture into a Perlin-shaped region of `image` (uint8 H x W x 3):
    I' = (1 - M) I + M (d T + (1 - d) I), opacity d in [0.5, 1]. Returns (image', mask M);
    pixels outside M are untouched. `textures` default: `texture_bank`."""
    hw = image.shape[:2]
    textures = texture_bank(max(hw)) if textures is None else list(textures)
    mask = _structural_mask(image, rng)
    if not textures or rng.random() < SELF_TEXTURE_P:
        source = _shuffle_patches(image, rng)
    else:
        source = _texture_view(textures[int(rng.integers(len(textures)))], hw, rng)
    rows, cols = np.nonzero(mask)  # only the masked pixels are computed: ~10x less work
    colors = _jitter(source[rows, cols], rng)
    opacity = np.float32(rng.uniform(0.5, 1.0))
    out = image.copy()
    out[rows, cols] = np.rint(opacity * colors + (1 - opacity) * image[rows, cols]).astype(np.uint8)
    return out, mask


# -------------------------------------------------------------------------------------- logical
def saliency(image: np.ndarray) -> np.ndarray:
    """Local contrast (distance from a heavily blurred copy), smoothed: high on parts and
    objects, low on plain background. Computed at <= 64 px and resized back, for speed."""
    H, W = image.shape[:2]
    f = min(1.0, 64 / max(H, W))
    small = cv2.resize(image, (max(1, round(W * f)), max(1, round(H * f))), interpolation=cv2.INTER_AREA)
    small = small.astype(np.float32)
    s = min(small.shape[:2])
    contrast = np.abs(small - cv2.GaussianBlur(small, (0, 0), s / 8)).mean(axis=2)
    contrast = cv2.GaussianBlur(contrast, (0, 0), max(0.5, s / 32))
    return cv2.resize(contrast, (W, H), interpolation=cv2.INTER_LINEAR)


def pick_point(weights: np.ndarray, rng: Rng, margin: float) -> Point:
    """A pixel drawn with probability proportional to `weights`, at least `margin` from the edges."""
    H, W = weights.shape
    m_y, m_x = min(int(margin), (H - 1) // 2), min(int(margin), (W - 1) // 2)
    inner = weights[m_y:H - m_y, m_x:W - m_x].astype(np.float64) + 1e-6
    cumulative = np.cumsum(inner.ravel())
    index = min(int(np.searchsorted(cumulative, rng.random() * cumulative[-1], side="right")), inner.size - 1)
    return float(m_x + index % inner.shape[1]), float(m_y + index // inner.shape[1])


def _uniform_point(hw: tuple[int, int], rng: Rng, margin: float) -> Point:
    """A pixel anywhere at least `margin` from the edges."""
    m_y, m_x = min(int(margin), (hw[0] - 1) // 2), min(int(margin), (hw[1] - 1) // 2)
    return float(rng.integers(m_x, hw[1] - m_x)), float(rng.integers(m_y, hw[0] - m_y))


def _region(hw: tuple[int, int], centre: Point, rng: Rng) -> np.ndarray:
    """A compact region around `centre`: a rectangle, or a blob (an ellipse roughened by
    Perlin noise); 12-30% of the shorter side across. Bool H x W, never empty."""
    H, W = hw
    half_h, half_w = rng.uniform(*REGION_SIZE, 2) * min(H, W) / 2
    cx, cy = min(int(centre[0]), W - 1), min(int(centre[1]), H - 1)
    y0, y1 = max(0, int(cy - half_h)), min(H, int(cy + half_h) + 1)
    x0, x1 = max(0, int(cx - half_w)), min(W, int(cx + half_w) + 1)
    dy = ((np.arange(y0, y1, dtype=np.float32) - centre[1]) / half_h)[:, None]
    dx = ((np.arange(x0, x1, dtype=np.float32) - centre[0]) / half_w)[None, :]
    if rng.random() < 0.5:
        inside = (np.abs(dy) <= 1) & (np.abs(dx) <= 1)
    else:
        inside = dy * dy + dx * dx + 0.5 * perlin_noise((y1 - y0, x1 - x0), 3, rng) < 1
    region = np.zeros(hw, bool)
    region[y0:y1, x0:x1] = inside
    region[cy, cx] = True
    return region


def _warp(image: np.ndarray, src: Point, dst: Point, angle: float,
          border: int = cv2.BORDER_REFLECT_101) -> np.ndarray:
    """`image` moved so its point `src` lands on `dst`, rotated there by `angle` degrees.
    Nearest-neighbour with reflected borders: every output pixel is a pixel of `image`
    (`border` cv2.BORDER_CONSTANT: zeros outside it instead, for masks)."""
    rotation = cv2.getRotationMatrix2D((0.0, 0.0), angle, 1.0)[:, :2]
    offset = np.asarray(dst) - rotation @ np.asarray(src)
    matrix = np.hstack([rotation, offset[:, None]])
    H, W = image.shape[:2]
    return cv2.warpAffine(image, matrix, (W, H), flags=cv2.INTER_NEAREST, borderMode=border)


def _margin(hw: tuple[int, int]) -> float:
    return REGION_SIZE[1] * min(hw) / 2


Candidate = tuple[np.ndarray, np.ndarray]  # (source image, region mask)


def _misplace(image: np.ndarray, others: Sequence[np.ndarray], rng: Rng) -> Candidate:
    """A salient part of another normal image, copied to a random position (a duplicated or
    misplaced part), upright or rotated."""
    other = others[int(rng.integers(len(others)))]
    hw = image.shape[:2]
    src = pick_point(saliency(other) ** 2, rng, _margin(hw))
    dst = _uniform_point(hw, rng, _margin(hw))
    angle = 0.0 if rng.random() < 0.5 else float(rng.uniform(-180, 180))
    return _warp(other, src, dst, angle), _region(hw, dst, rng)


def _swap(image: np.ndarray, others: Sequence[np.ndarray], rng: Rng) -> Candidate:
    """A salient region replaced by the same region of another normal image, shifted by 3-12%
    of the side and rotated (a part of the wrong pose, or from the wrong pairing)."""
    other = others[int(rng.integers(len(others)))]
    hw = image.shape[:2]
    dst = pick_point(saliency(image) ** 2, rng, _margin(hw))
    step, direction = rng.uniform(0.03, 0.12) * min(hw), rng.uniform(0, 2 * np.pi)
    src = (dst[0] + step * np.cos(direction), dst[1] + step * np.sin(direction))
    return _warp(other, src, dst, float(rng.uniform(-90, 90))), _region(hw, dst, rng)


def _remove(image: np.ndarray, others: Sequence[np.ndarray], rng: Rng) -> Candidate:
    """A salient region filled with the least salient (background) patch of 16 random spots of
    the image itself: a missing part."""
    hw = image.shape[:2]
    contrast = saliency(image)
    dst = pick_point(contrast**2, rng, _margin(hw))
    spots = [_uniform_point(hw, rng, _margin(hw)) for _ in range(16)]
    src = min(spots, key=lambda p: float(contrast[int(p[1]), int(p[0])]))
    return _warp(image, src, dst, 0.0), _region(hw, dst, rng)


# --------------------------------------------------------------------------- whole objects
def object_masks(image: np.ndarray) -> list[np.ndarray]:
    """The separate objects of an image: connected regions unlike their local background (a
    median blur a sixth of the shorter side wide), thin lines (creases, edges) opened away,
    each 0.1-6% of the image, at most half its shorter side across and clear of the border.
    Bool H x W masks, largest first."""
    H, W = image.shape[:2]
    k = max(3, (min(H, W) // 6) | 1)
    background = cv2.medianBlur(image, min(k, 255))
    distance = cv2.absdiff(image, background).max(axis=2)
    threshold = max(25.0, cv2.threshold(distance, 0, 255, cv2.THRESH_BINARY | cv2.THRESH_OTSU)[0])
    radius = max(1, min(H, W) // 128)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    found = cv2.morphologyEx((distance > threshold).astype(np.uint8), cv2.MORPH_OPEN, kernel)
    found = cv2.dilate(found, kernel)
    _, labels, stats, _ = cv2.connectedComponentsWithStats(found, connectivity=8)
    masks = []
    for label in np.argsort(-stats[1:, cv2.CC_STAT_AREA]) + 1:
        x, y, w, h, area = stats[label]
        compact = max(w, h) <= 0.5 * min(H, W)
        if 0.001 * H * W <= area <= 0.06 * H * W and compact and x > 0 and y > 0 and x + w < W and y + h < H:
            masks.append(labels == label)
    return masks


def _free_background(image: np.ndarray, objects: list[np.ndarray]) -> np.ndarray:
    """Where a new object may go: the product's area (`foreground_mask`, or everything) with every
    one of the image's `objects` (its `object_masks`), widened, taken out."""
    hw = image.shape[:2]
    place = foreground_mask(image)
    place = np.ones(hw, bool) if place is None else place
    if objects:
        radius = max(1, min(hw) // 64)
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
        place &= ~cv2.dilate(np.any(objects, axis=0).astype(np.uint8), kernel).astype(bool)
    return place


def whole_objects(objects: list[np.ndarray]) -> list[np.ndarray]:
    """`object_masks` without fragments: those at least a third of the largest object's area."""
    return [m for m in objects if m.sum() >= objects[0].sum() / 3] if objects else []


class ObjectIndex:
    """Each image's objects and free background, found once: the object edits of one synthetic
    set look at every normal again and again (as the image edited and as another normal). Keyed
    by the array's identity; an entry holds its array, so a key is never reused by another."""

    def __init__(self) -> None:
        self._objects: dict[int, tuple[np.ndarray, list[np.ndarray]]] = {}
        self._free: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def objects(self, image: np.ndarray) -> list[np.ndarray]:
        """`object_masks(image)`."""
        entry = self._objects.get(id(image))
        if entry is None or entry[0] is not image:
            entry = self._objects[id(image)] = (image, object_masks(image))
        return entry[1]

    def whole(self, image: np.ndarray) -> list[np.ndarray]:
        """`whole_objects` of the image."""
        return whole_objects(self.objects(image))

    def free(self, image: np.ndarray) -> np.ndarray:
        """Where a new object may go in the image (bool H x W)."""
        entry = self._free.get(id(image))
        if entry is None or entry[0] is not image:
            entry = self._free[id(image)] = (image, _free_background(image, self.objects(image)))
        return entry[1]


def _paste(image: np.ndarray, source: np.ndarray, shape: np.ndarray, src: Point, dst: Point,
           angle: float) -> tuple[np.ndarray, np.ndarray]:
    """`source`'s object `shape` moved from `src` to `dst` and turned by `angle`, blended in with
    bilinear, antialiased edges (as a rendered or photographed part has them, not a cut-out's
    jagged ones). Returns (image', footprint)."""
    rotation = cv2.getRotationMatrix2D((0.0, 0.0), angle, 1.0)[:, :2]
    matrix = np.hstack([rotation, (np.asarray(dst) - rotation @ np.asarray(src))[:, None]])
    H, W = image.shape[:2]
    moved = cv2.warpAffine(source, matrix, (W, H), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    alpha = cv2.warpAffine(shape.astype(np.float32), matrix, (W, H), flags=cv2.INTER_LINEAR)
    alpha = cv2.GaussianBlur(alpha, (3, 3), 0.6)[..., None]
    out = np.rint(alpha * moved + (1 - alpha) * image).astype(np.uint8)
    return out, alpha[..., 0] > 0.05


def _add_object(image: np.ndarray, others: Sequence[np.ndarray], rng: Rng, index: ObjectIndex) -> Candidate:
    """A whole object of another normal image (its own pixels, no patch of background around
    it) placed, turned, where this image shows free background: one part too many, the count
    rule broken with nothing locally wrong. The best of 16 places."""
    other = others[int(rng.integers(len(others)))]
    objects = index.whole(other)
    if not objects:
        return _misplace(image, others, rng)
    shape = objects[int(rng.integers(len(objects)))]
    ys, xs = np.nonzero(shape)
    src = (float(xs.mean()), float(ys.mean()))
    free = index.free(image)
    angle = float(rng.uniform(-180, 180))
    best, best_outside = (0.0, 0.0), np.inf
    for _ in range(16):
        dst = pick_point(free.astype(np.float32), rng, 0)
        footprint = _warp(shape.astype(np.uint8), src, dst, angle, cv2.BORDER_CONSTANT).astype(bool)
        outside = (footprint & ~free).sum() / max(1, footprint.sum())
        if outside < best_outside:
            best, best_outside = dst, outside
        if outside == 0:
            break
    return _paste(image, other, shape, src, best, angle)


def _drop_object(image: np.ndarray, others: Sequence[np.ndarray], rng: Rng, index: ObjectIndex) -> Candidate:
    """A whole object painted over by background: one part too few, with no cut edge left
    behind. The background is the same place of another normal image (of four tried) where it
    is free there (real film, creases and grain: random layouts), its mean colour matched to the
    ring around the object; else OpenCV's Telea inpainting of the object's slightly widened mask
    (fixed layouts, where every normal has a part there)."""
    objects = index.whole(image)
    if not objects:
        return _remove(image, others, rng)
    mask = objects[int(rng.integers(len(objects)))]
    wide = cv2.dilate(mask.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
    for k in rng.permutation(len(others))[:4]:
        if index.free(others[k])[wide].mean() >= 0.98:
            ring = cv2.dilate(wide.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool) & ~wide
            fill = others[k].astype(np.float32) + (image[ring].mean(axis=0) - others[k][ring].mean(axis=0))
            alpha = np.maximum(cv2.GaussianBlur(wide.astype(np.float32), (5, 5), 1.0), mask)[..., None]
            return np.clip(np.rint(alpha * fill + (1 - alpha) * image), 0, 255).astype(np.uint8), wide
    radius = max(3, min(image.shape[:2]) // 32)
    return cv2.inpaint(image, wide.astype(np.uint8), radius, cv2.INPAINT_TELEA), wide


REGION_EDITS: dict[str, Callable[[np.ndarray, Sequence[np.ndarray], Rng], Candidate]] = {
    "misplace": _misplace, "swap": _swap, "remove": _remove}
OBJECT_EDITS: dict[str, Callable[[np.ndarray, Sequence[np.ndarray], Rng, ObjectIndex], Candidate]] = {
    "add_object": _add_object, "drop_object": _drop_object}


def _visible_change(image: np.ndarray, candidate: Candidate) -> float:
    source, mask = candidate
    return float(np.abs(source[mask].astype(np.int16) - image[mask]).mean())


def logical_modes_for(image: np.ndarray, index: ObjectIndex | None = None) -> tuple[str, ...]:
    """The modes a logical anomaly of `image` is drawn from: OBJECT_MODES when it shows two or
    more whole objects, else REGION_MODES."""
    return OBJECT_MODES if len((index or ObjectIndex()).whole(image)) >= 2 else REGION_MODES


def logical_anomaly(
    image: np.ndarray, others: Sequence[np.ndarray], rng: Rng, mode: str | None = None,
    index: ObjectIndex | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Add, remove, move or swap a part of `image` (uint8 H x W x 3) using other normal images
    of its category (`others`, same size; empty: the image mirrored). `mode`: one of
    LOGICAL_MODES; default a random one of OBJECT_MODES when the image shows two or more whole
    objects, else of REGION_MODES. Of CANDIDATES region edits the most visible is kept; a whole
    object is always visible, so an object edit is drawn once. `index`: objects already found
    (a set passes one for all its anomalies). Returns (image', mask); pixels outside the mask
    are untouched."""
    index = index or ObjectIndex()
    if mode is None:
        modes = logical_modes_for(image, index)
        mode = modes[int(rng.integers(len(modes)))]
    if mode not in LOGICAL_MODES:
        raise ValueError(f"unknown logical anomaly mode {mode!r}; expected one of {list(LOGICAL_MODES)}")
    others = list(others) or [np.ascontiguousarray(image[:, ::-1])]
    if mode in OBJECT_EDITS:
        candidates = [OBJECT_EDITS[mode](image, others, rng, index)]
    else:
        candidates = [REGION_EDITS[mode](image, others, rng) for _ in range(CANDIDATES)]
    source, mask = max(candidates, key=lambda c: _visible_change(image, c))
    return np.where(mask[..., None], source, image), mask


# ------------------------------------------------------------------------------------------ set
def _drawn_family(image: np.ndarray, rng: Rng) -> tuple[np.ndarray, np.ndarray]:
    from .drawn_defects import drawn_anomaly

    return drawn_anomaly(image, rng)


#: structural anomaly families: Perlin-masked texture blends (`structural_anomaly`, the family
#: SLSG's anomaly simulation trains on) and drawn scratches, stains and dents (`drawn_defects`)
STRUCTURAL_FAMILIES: dict[str, Callable[[np.ndarray, Rng], tuple[np.ndarray, np.ndarray]]] = {
    "texture": structural_anomaly, "drawn": _drawn_family}


class SyntheticAnomalySet(Dataset):
    """Validation normals + anomalies synthesised from them, fixed by seed.

    Items like AnomalyDataset's: image (3 x S x S normalised float), label, kind ('good' |
    'logical' | 'structural'), kind_id, mask (S x S long: 0, or 1 inside the synthetic defect),
    orig_size (S, S: the masks' size), path (str: '<source path>#synthetic-<kind>-<i>'), index.
    Order: the normals, then `n_per_kind` logical, then `n_per_kind` structural anomalies
    (anomaly i is made from normal i mod N; structural anomaly i is of the i mod F-th of the F
    `structural_families`, keys of STRUCTURAL_FAMILIES, default all). `images`, `masks` (bool),
    `labels`, `kinds`, `samples` and `orig_sizes` hold everything, made once in the constructor.
    """

    def __init__(
        self, normals: AnomalyDataset, seed: int = 0, n_per_kind: int | None = None, transform: Callable | None = None,
        structural_families: Sequence[str] | None = None,
    ) -> None:
        if len(normals) == 0:
            raise ValueError("SyntheticAnomalySet needs at least one normal image")
        if seed < 0 or (n_per_kind is not None and n_per_kind < 0):
            raise ValueError(f"seed and n_per_kind must be >= 0, got seed={seed}, n_per_kind={n_per_kind}")
        families = list(STRUCTURAL_FAMILIES) if structural_families is None else list(structural_families)
        if not families or not set(families) <= set(STRUCTURAL_FAMILIES):
            raise ValueError(f"structural_families must be one or more of {list(STRUCTURAL_FAMILIES)}, got {families}")
        self.structural_families = families
        self.seed = seed
        self.image_size = normals.image_size
        self.transform = transform or eval_transform()
        self.n_per_kind = len(normals) if n_per_kind is None else n_per_kind
        self.images: list[np.ndarray] = list(normals.images)
        self.masks: list[np.ndarray] = [np.zeros(im.shape[:2], bool) for im in normals.images]
        self.samples: list[Sample] = list(normals.samples)
        index = ObjectIndex()  # every normal's objects found once for all the set's object edits
        for kind in ("logical", "structural"):
            for i in range(self.n_per_kind):
                self._add(normals, kind, i, index)
        self.labels = [s.label for s in self.samples]
        self.kinds = [s.kind for s in self.samples]
        self.orig_sizes = [im.shape[:2] for im in self.images]

    def _add(self, normals: AnomalyDataset, kind: str, i: int, index: ObjectIndex) -> None:
        """Append anomaly i of a kind, made from normal i mod N."""
        k = i % len(normals)
        image, mask = self._make(normals.images, kind, i, index)
        self.images.append(image)
        self.masks.append(mask)
        path = Path(f"{normals.samples[k].path}#synthetic-{kind}-{i}")
        self.samples.append(Sample(path, 1, kind, f"synthetic_{kind}"))

    def _make(self, normals: Sequence[np.ndarray], kind: str, i: int,
              index: ObjectIndex) -> tuple[np.ndarray, np.ndarray]:
        """Anomaly i of a kind, from its own generator: independent of order and of other items."""
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, KIND_IDS[kind], i]))
        k = i % len(normals)
        if kind == "structural":
            family = self.structural_families[i % len(self.structural_families)]
            return STRUCTURAL_FAMILIES[family](normals[k], rng)
        return logical_anomaly(normals[k], [im for j, im in enumerate(normals) if j != k], rng, index=index)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict:
        return make_item(self.transform, self.images[index], self.masks[index].astype(np.uint8),
                         self.samples[index], self.orig_sizes[index], index)
