"""A synthetic MVTec LOCO AD: the embedded default dataset and the test fixture of every LOCO code path.

`make_synthetic` writes MVTec LOCO AD's exact layout for each category::

    <out>/<category>/{train/good, validation/good}/000.png ...
    <out>/<category>/test/{good, logical_anomalies, structural_anomalies}/000.png ...
    <out>/<category>/ground_truth/{logical,structural}_anomalies/<image id>/000.png ...  (one PNG per region)
    <out>/<category>/defects_config.json

Images are RGB PNGs at the category's own, non-square size (`size` is the shorter side);
ground-truth PNGs are mode "L", 0 outside the region and the defect type's pixel value inside.

Categories (their rules hold in every normal image; a logical anomaly breaks exactly the rule it names)

* ``parts_box`` (landscape, 1.25:1): a box with 3 x 4 compartments, exactly one pushpin (yellow head,
  silver needle) in each. Logical: ``missing_part`` (a compartment is empty; region = the
  compartment, saturation = the area of one pushpin, absolute), ``extra_part`` (a compartment holds
  two pushpins; region = the extra one, relative 1.0).
* ``bottle_label`` (portrait, 1:1.5): a glass bottle filled with one of three juices (orange, cherry,
  banana), a front label whose fruit icon must match the juice, a small tag below it, a cap. The
  label sits centred at a fixed height and the fill level leaves a fixed headspace. Logical:
  ``wrong_icon`` (the icon names another fruit; region = the icon, relative 1.0), ``misplaced_label``
  (shifted up or tilted; region = where it is and where it belongs, relative 0.5), ``wrong_fill_level``
  (far too low or too high; region = the liquid band that changed, relative 1.0).
* ``screw_kit`` (landscape, 1.45:1): a tray holding exactly 2 bolts, 2 nuts and 1 brass washer, laid
  left to right in that order (bolts left of nuts, the washer rightmost). Logical: ``missing_item``
  (one item fewer; region = where it lay, saturation = the area of one nut, absolute),
  ``extra_item`` (one more bolt, nut or washer, order kept; region = the extra item, relative 1.0),
  ``swapped_order`` (two items of different kinds swap places; one region per moved item, relative 1.0).

Structural defects, in every category (relative saturation 1.0; masks cover the altered pixels):
``scratch`` (a thin bright or dark polyline), ``hole`` (a dark ellipse with a rim),
``contamination`` (a blotch textured from scikit-image's bundled coffee/brick/grass/gravel images),
``broken_part`` (a piece of a part cut away, sometimes displaced nearby; region = gap and piece).
About one structural image in seven carries two defects (two ground-truth PNGs).

Nuisances make normal images differ: pose jitter of the whole product (translation, rotation),
per-item jitter within the rules, lighting (gain, offset, a soft gradient), sensor noise and a
lightly textured background. Every image draws from its own generators seeded by (seed, category,
split, index), so output is byte-identical for a spec and independent of the other categories.
"""

from __future__ import annotations

import json
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields, replace
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage
from skimage.transform import resize

Color = tuple[float, float, float]
Rng = np.random.Generator

CATEGORIES: tuple[str, ...] = ("parts_box", "bottle_label", "screw_kit")

#: split key -> (image folder, seed code); ground truth lives under ground_truth/<folder name>
SPLITS: dict[str, tuple[str, int]] = {
    "train": ("train/good", 0),
    "validation": ("validation/good", 1),
    "good": ("test/good", 2),
    "logical": ("test/logical_anomalies", 3),
    "structural": ("test/structural_anomalies", 4),
}
TWO_DEFECTS_P = 0.15
WORKERS = 4


@dataclass
class SyntheticSpec:
    """How much to generate: image size (shorter side, pixels), images per split, seed."""

    size: int = 256
    n_train: int = 60
    n_validation: int = 16
    n_test_good: int = 20
    n_test_logical: int = 20
    n_test_structural: int = 20
    seed: int = 0

    def count(self, split: str) -> int:
        """Images of a split key of `SPLITS`."""
        key = {"good": "n_test_good", "logical": "n_test_logical", "structural": "n_test_structural"}
        return int(getattr(self, key.get(split, f"n_{split}")))


# --------------------------------------------------------------------------------------- geometry
def _rotate(pts: np.ndarray, angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return pts @ np.array([[c, s], [-s, c]])


def _ellipse(cx: float, cy: float, rx: float, ry: float, angle: float = 0.0, n: int = 40) -> np.ndarray:
    t = np.linspace(0.0, 2 * np.pi, n, endpoint=False)
    return _rotate(np.stack([rx * np.cos(t), ry * np.sin(t)], 1), angle) + (cx, cy)


def _rect(cx: float, cy: float, w: float, h: float, angle: float = 0.0) -> np.ndarray:
    pts = np.array([[-w, -h], [w, -h], [w, h], [-w, h]]) / 2
    return _rotate(pts, angle) + (cx, cy)


def _rounded_rect(cx: float, cy: float, w: float, h: float, r: float, n: int = 6) -> np.ndarray:
    corners = ((w / 2 - r, h / 2 - r, 0.0), (-w / 2 + r, h / 2 - r, 0.5), (-w / 2 + r, -h / 2 + r, 1.0),
               (w / 2 - r, -h / 2 + r, 1.5))
    pts = []
    for x, y, start in corners:
        t = np.pi * (start + np.linspace(0.0, 0.5, n))
        pts.append(np.stack([x + r * np.cos(t), y + r * np.sin(t)], 1))
    return np.concatenate(pts) + (cx, cy)


def _segment(p0: np.ndarray, p1: np.ndarray, width: float) -> np.ndarray:
    """A thick line from p0 to p1 as a polygon."""
    d = np.asarray(p1, float) - np.asarray(p0, float)
    n = np.array([-d[1], d[0]]) / max(float(np.hypot(*d)), 1e-9) * width / 2
    return np.array([p0 + n, p1 + n, p1 - n, p0 - n])


Patch = tuple[tuple[slice, slice], np.ndarray]  # an image window and the bool mask inside it


def _fill(pts: np.ndarray, hw: tuple[int, int]) -> Patch:
    """The pixels inside a polygon of image (x, y) points, as a bbox window and its mask
    (PIL's scanline fill: fast for large and small polygons alike)."""
    x0, y0 = np.maximum(np.floor(pts.min(0)).astype(int) - 1, 0)
    x1, y1 = np.maximum(np.minimum(np.ceil(pts.max(0)).astype(int) + 2, (hw[1], hw[0])), (x0, y0))
    window = (slice(int(y0), int(y1)), slice(int(x0), int(x1)))
    if x1 == x0 or y1 == y0:
        return window, np.zeros((int(y1 - y0), int(x1 - x0)), bool)
    canvas = Image.new("1", (int(x1 - x0), int(y1 - y0)), 0)
    ImageDraw.Draw(canvas).polygon((pts - (x0, y0)).ravel().tolist(), fill=1)
    return window, np.asarray(canvas, bool)


def _mask(hw: tuple[int, int], *polygons: np.ndarray) -> np.ndarray:
    """Union of polygons (image points) as a bool image."""
    out = np.zeros(hw, bool)
    for pts in polygons:
        window, inside = _fill(pts, hw)
        out[window] |= inside
    return out


def _smooth_noise(rng: Rng, shape: tuple[int, int], cells: int) -> np.ndarray:
    """Low-frequency noise of about unit amplitude: a coarse random grid, upsampled."""
    aspect = shape[1] / max(shape[0], 1)
    coarse = rng.normal(size=(cells + 2, max(2, round(cells * aspect)) + 2))
    return resize(coarse, shape, order=1, mode="reflect", anti_aliasing=False).astype(np.float32)


# ------------------------------------------------------------------------------------ scene model
@dataclass(frozen=True)
class Shape:
    """A filled polygon in product units (multiples of the shorter image side); colour None
    cuts a hole that shows what lay beneath the item."""

    pts: np.ndarray
    color: Color | None
    alpha: float = 1.0


@dataclass
class Item:
    """One movable object, in product units; `slot` is its compartment, `variant` e.g. a fruit."""

    kind: str
    x: float
    y: float
    angle: float = 0.0
    slot: int = -1
    variant: str = ""


@dataclass
class Scene:
    """A product instance: pose of the whole product, its items and category facts."""

    category: str
    size: int
    hw: tuple[int, int]
    pose: tuple[float, float, float]  # dx, dy (product units), rotation (radians)
    items: list[Item]
    facts: dict = field(default_factory=dict)
    background: np.ndarray | None = None

    def to_image(self, pts: np.ndarray) -> np.ndarray:
        """Product units -> image (x, y) pixels."""
        dx, dy, angle = self.pose
        centre = np.array([(self.hw[1] - 1) / 2, (self.hw[0] - 1) / 2])
        return _rotate(np.asarray(pts, float) * self.size, angle) + centre + np.array([dx, dy]) * self.size

    def fill(self, pts: np.ndarray) -> Patch:
        return _fill(self.to_image(pts), self.hw)

    def mask(self, *polygons: np.ndarray) -> np.ndarray:
        """Union of polygons (product units) as a bool image."""
        return _mask(self.hw, *(self.to_image(pts) for pts in polygons))

    def footprint(self, item: Item) -> np.ndarray:
        return self.mask(*(shape.pts for shape in placed_shapes(item)))

    @cached_property
    def grid(self) -> tuple[np.ndarray, np.ndarray]:
        """Product coordinates (X, Y) of every pixel centre."""
        rows, cols = np.mgrid[0:self.hw[0], 0:self.hw[1]].astype(np.float64)
        dx, dy, angle = self.pose
        pts = np.stack([cols.ravel() - (self.hw[1] - 1) / 2 - dx * self.size,
                        rows.ravel() - (self.hw[0] - 1) / 2 - dy * self.size], 1)
        local = _rotate(pts, -angle) / self.size
        return local[:, 0].reshape(self.hw), local[:, 1].reshape(self.hw)

    @cached_property
    def surface(self) -> np.ndarray:
        """Where structural defects may land: the product's outline."""
        return self.mask(*_CATS[self.category].surface())

    def render(self, skip: int | None = None) -> np.ndarray:
        """H x W x 3 float32 in [0, 1]: background, the category's base, then the items."""
        canvas = self.background.copy()
        _CATS[self.category].draw_base(canvas, self)
        for i, item in enumerate(self.items):
            if i != skip:
                paint(canvas, self, placed_shapes(item))
        return canvas


def paint(canvas: np.ndarray, scene: Scene, shapes: Sequence[Shape]) -> None:
    """Draw shapes in order; a hole restores the canvas as it was before these shapes."""
    under = canvas.copy() if any(s.color is None for s in shapes) else None
    for shape in shapes:
        window, inside = scene.fill(shape.pts)
        view = canvas[window]
        if shape.color is None:
            view[inside] = under[window][inside]
        elif shape.alpha >= 1:
            view[inside] = shape.color
        else:
            view[inside] = (1 - shape.alpha) * view[inside] + shape.alpha * np.asarray(shape.color, np.float32)


def placed_shapes(item: Item) -> list[Shape]:
    """An item's shapes moved to its position and rotation."""
    return [replace(s, pts=_rotate(s.pts, item.angle) + (item.x, item.y)) for s in KIND_SHAPES[item.kind](item)]


# ---------------------------------------------------------------------------- category: parts_box
BOX_W, BOX_H, BOX_FRAME, BOX_WALL = 1.12, 0.86, 0.03, 0.026
BOX_GRID = (3, 4)
PIN_R, PIN_LEN, PIN_W = 0.045, 0.045, 0.014
PIN_AREA = np.pi * PIN_R**2 + (PIN_LEN + PIN_R / 2) * PIN_W


def _compartments() -> list[tuple[float, float, float, float]]:
    """Inner (x0, y0, x1, y1) of every compartment, row by row."""
    rows, cols = BOX_GRID
    px, py = (BOX_W - 2 * BOX_FRAME) / cols, (BOX_H - 2 * BOX_FRAME) / rows
    x_left, y_top = -BOX_W / 2 + BOX_FRAME, -BOX_H / 2 + BOX_FRAME
    out = []
    for r in range(rows):
        for c in range(cols):
            x0, y0 = x_left + c * px + BOX_WALL / 2, y_top + r * py + BOX_WALL / 2
            out.append((x0, y0, x0 + px - BOX_WALL, y0 + py - BOX_WALL))
    return out


def _pushpin_shapes(item: Item) -> list[Shape]:
    needle = _rect((PIN_R / 2 + PIN_R + PIN_LEN) / 2, 0.0, PIN_R / 2 + PIN_LEN, PIN_W)
    return [Shape(needle, (0.86, 0.87, 0.9)),
            Shape(_ellipse(0, 0, PIN_R, PIN_R), (0.93, 0.76, 0.12)),
            Shape(_ellipse(0, 0, 0.62 * PIN_R, 0.62 * PIN_R), (0.98, 0.84, 0.25)),
            Shape(_ellipse(-0.3 * PIN_R, -0.3 * PIN_R, 0.25 * PIN_R, 0.2 * PIN_R), (1.0, 0.97, 0.8))]


def _pin_extent(angle: float) -> tuple[float, float, float, float]:
    """(xmin, xmax, ymin, ymax) of a pushpin around its head's centre."""
    tip = (PIN_R + PIN_LEN) * np.array([np.cos(angle), np.sin(angle)])
    pad = PIN_W / 2
    return (min(-PIN_R, tip[0] - pad), max(PIN_R, tip[0] + pad), min(-PIN_R, tip[1] - pad), max(PIN_R, tip[1] + pad))


def _place_pin(rng: Rng, bounds: tuple[float, float, float, float], slot: int, margin: float = 0.006) -> Item:
    """A pushpin entirely inside `bounds`, at a random angle and position."""
    x0, y0, x1, y1 = bounds
    for _ in range(100):
        angle = rng.uniform(-np.pi, np.pi)
        xmin, xmax, ymin, ymax = _pin_extent(angle)
        lo_x, hi_x, lo_y, hi_y = x0 - xmin + margin, x1 - xmax - margin, y0 - ymin + margin, y1 - ymax - margin
        if lo_x <= hi_x and lo_y <= hi_y:
            return Item("pushpin", rng.uniform(lo_x, hi_x), rng.uniform(lo_y, hi_y), angle, slot)
    return Item("pushpin", (x0 + x1) / 2, (y0 + y1) / 2 - PIN_LEN / 2, np.pi / 2, slot)


def _box_layout(rng: Rng) -> tuple[list[Item], dict]:
    return [_place_pin(rng, bounds, slot) for slot, bounds in enumerate(_compartments())], {}


def _box_base(canvas: np.ndarray, scene: Scene) -> None:
    shapes = [Shape(_rounded_rect(0, 0, BOX_W, BOX_H, 0.04), (0.16, 0.17, 0.2))]
    shapes += [Shape(_rect((x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0), (0.42, 0.45, 0.5))
               for x0, y0, x1, y1 in _compartments()]
    paint(canvas, scene, shapes)


def _missing_part(scene: Scene, rng: Rng) -> list[np.ndarray]:
    slot = int(rng.integers(len(scene.items)))
    scene.items = [it for it in scene.items if it.slot != slot]
    x0, y0, x1, y1 = _compartments()[slot]
    return [scene.mask(_rect((x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0))]


def _extra_part(scene: Scene, rng: Rng) -> list[np.ndarray]:
    slot = int(rng.integers(len(scene.items)))
    x0, y0, x1, y1 = _compartments()[slot]
    if rng.random() < 0.5:  # side by side
        mid, gap = (x0 + x1) / 2, 0.012
        halves = [(x0, y0, mid + gap, y1), (mid - gap, y0, x1, y1)]
    else:  # one above the other
        mid, gap = (y0 + y1) / 2, 0.012
        halves = [(x0, y0, x1, mid + gap), (x0, mid - gap, x1, y1)]
    order = rng.permutation(2)
    original, extra = (_place_pin(rng, halves[k], slot) for k in order)
    scene.items = [original if it.slot == slot else it for it in scene.items] + [extra]
    return [scene.footprint(extra)]


def _box_violations(scene: Scene) -> set[str]:
    counts = np.bincount([it.slot for it in scene.items], minlength=len(_compartments()))
    return {name for name, bad in (("missing_part", (counts == 0).any()), ("extra_part", (counts > 1).any())) if bad}


# ------------------------------------------------------------------------- category: bottle_label
GLASS_T = 0.022
BODY = (0.0, 0.12, 0.52, 0.86, 0.08)  # cx, cy, w, h, corner radius: y from -0.31 to 0.55
NECK = (0.0, -0.485, 0.2, 0.17)
LEVEL, LABEL_Y, TAG_Y, CAP_Y = -0.22, 0.10, 0.38, -0.60
LIQUIDS: dict[str, Color] = {"orange": (0.97, 0.52, 0.08), "cherry": (0.55, 0.04, 0.12), "banana": (0.93, 0.86, 0.42)}


def _bottle_outline(t: float = 0.0) -> list[np.ndarray]:
    """Body, shoulder and neck polygons, shrunk by `t` (the glass wall) for the interior."""
    cx, cy, w, h, r = BODY
    top = cy - h / 2
    shoulder = np.array([[-w / 2 + t, top + r], [w / 2 - t, top + r],
                         [NECK[2] / 2 - t, top - 0.1], [-NECK[2] / 2 + t, top - 0.1]])
    neck = _rect(NECK[0], NECK[1] + t, NECK[2] - 2 * t, NECK[3])
    return [_rounded_rect(cx, cy, w - 2 * t, h - 2 * t, r - t), shoulder, neck]


def _icon_shapes(variant: str) -> list[Shape]:
    """The fruit icon of a label, in label coordinates."""
    cy = -0.035
    if variant == "orange":
        return [Shape(_ellipse(0, cy, 0.085, 0.085), LIQUIDS["orange"]),
                Shape(_ellipse(0.035, cy - 0.09, 0.035, 0.015, -0.5), (0.2, 0.55, 0.18)),
                Shape(_ellipse(-0.03, cy - 0.03, 0.02, 0.015), (1.0, 0.75, 0.45))]
    if variant == "cherry":
        top = np.array([0.01, cy - 0.09])
        return [Shape(_segment(np.array([-0.045, cy]), top, 0.012), (0.35, 0.4, 0.12)),
                Shape(_segment(np.array([0.045, cy + 0.015]), top, 0.012), (0.35, 0.4, 0.12)),
                Shape(_ellipse(-0.045, cy, 0.048, 0.048), (0.75, 0.05, 0.12)),
                Shape(_ellipse(0.045, cy + 0.015, 0.048, 0.048), (0.75, 0.05, 0.12))]
    t = np.linspace(0.12 * np.pi, 0.88 * np.pi, 20)
    outer = np.stack([0.115 * np.cos(t), cy - 0.06 + 0.115 * np.sin(t)], 1)
    inner = np.stack([0.115 * np.cos(t[::-1]), cy - 0.115 + 0.115 * np.sin(t[::-1])], 1)
    return [Shape(np.concatenate([outer, inner]), (0.98, 0.82, 0.15))]


def _label_shapes(item: Item) -> list[Shape]:
    title = [Shape(_rect(0, 0.095, 0.26, 0.022), (0.2, 0.2, 0.26)),
             Shape(_rect(0, 0.125, 0.16, 0.014), (0.35, 0.35, 0.4))]
    return [Shape(_rect(0, 0, 0.40, 0.30), (0.96, 0.94, 0.86)), *_icon_shapes(item.variant), *title]


def _tag_shapes(item: Item) -> list[Shape]:
    return [Shape(_rect(0, 0, 0.40, 0.08), (0.98, 0.98, 0.97)), Shape(_rect(-0.08, 0, 0.16, 0.016), (0.2, 0.22, 0.3)),
            Shape(_rect(0.1, 0, 0.1, 0.016), (0.2, 0.22, 0.3))]


def _cap_shapes(item: Item) -> list[Shape]:
    ridges = [Shape(_rect(x, 0.005, 0.012, 0.05), (0.4, 0.42, 0.45)) for x in np.linspace(-0.09, 0.09, 6)]
    return [Shape(_rect(0, 0, 0.25, 0.07), (0.58, 0.6, 0.63)), *ridges]


def _bottle_layout(rng: Rng) -> tuple[list[Item], dict]:
    liquid = str(rng.choice(list(LIQUIDS)))
    label = Item("label", rng.uniform(-0.012, 0.012), LABEL_Y + rng.uniform(-0.015, 0.015),
                 rng.uniform(-0.025, 0.025), variant=liquid)
    tag = Item("tag", rng.uniform(-0.012, 0.012), TAG_Y + rng.uniform(-0.01, 0.01), rng.uniform(-0.02, 0.02))
    cap = Item("cap", 0.0, CAP_Y, rng.uniform(-0.02, 0.02))
    return [cap, label, tag], {"liquid": liquid, "level": LEVEL + rng.uniform(-0.012, 0.012)}


def _liquid_band(scene: Scene, lo: float, hi: float) -> np.ndarray:
    """Bottle interior between product heights lo and hi."""
    y = scene.grid[1]
    return scene.mask(*_bottle_outline(GLASS_T)) & (y >= lo) & (y < hi)


def _bottle_base(canvas: np.ndarray, scene: Scene) -> None:
    paint(canvas, scene, [Shape(pts, (0.74, 0.8, 0.83)) for pts in _bottle_outline()])
    canvas[_liquid_band(scene, scene.facts["level"], 1.0)] = LIQUIDS[scene.facts["liquid"]]
    paint(canvas, scene, [Shape(_rect(-0.18, 0.12, 0.03, 0.7), (1.0, 1.0, 1.0), 0.3)])


def _wrong_icon(scene: Scene, rng: Rng) -> list[np.ndarray]:
    label = next(it for it in scene.items if it.kind == "label")
    label.variant = str(rng.choice([v for v in LIQUIDS if v != label.variant]))
    moved = [replace(s, pts=_rotate(s.pts, label.angle) + (label.x, label.y)) for s in _icon_shapes(label.variant)]
    return [scene.mask(*(s.pts for s in moved))]


def _misplaced_label(scene: Scene, rng: Rng) -> list[np.ndarray]:
    label = next(it for it in scene.items if it.kind == "label")
    before = scene.footprint(label)
    if rng.random() < 0.7:
        label.y -= rng.uniform(0.12, 0.2)
    else:
        label.angle += rng.choice([-1, 1]) * np.deg2rad(rng.uniform(12, 20))
    return [before | scene.footprint(label)]


def _wrong_fill_level(scene: Scene, rng: Rng) -> list[np.ndarray]:
    old = scene.facts["level"]
    new = rng.uniform(0.0, 0.08) if rng.random() < 0.5 else rng.uniform(-0.5, -0.43)
    scene.facts["level"] = new
    band = _liquid_band(scene, min(old, new), max(old, new))
    for item in scene.items:
        band &= ~scene.footprint(item)
    return [band]


def _bottle_violations(scene: Scene) -> set[str]:
    label = next((it for it in scene.items if it.kind == "label"), None)
    out = set()
    if label is None or label.variant != scene.facts["liquid"]:
        out.add("wrong_icon")
    if label is None or abs(label.x) > 0.03 or abs(label.y - LABEL_Y) > 0.04 or abs(label.angle) > np.deg2rad(4):
        out.add("misplaced_label")
    if abs(scene.facts["level"] - LEVEL) > 0.04:
        out.add("wrong_fill_level")
    return out


# ---------------------------------------------------------------------------- category: screw_kit
TRAY_W, TRAY_H, TRAY_RIM = 1.36, 0.90, 0.04
KIT_ORDER = ("bolt", "bolt", "nut", "nut", "washer")
KIT_RANK = {"bolt": 0, "nut": 1, "washer": 2}
NUT_R, WASHER_R = 0.075, 0.072
NUT_AREA = 1.5 * np.sqrt(3) * NUT_R**2


def _bolt_shapes(item: Item) -> list[Shape]:
    head = np.array([[-0.06, -0.245], [0.06, -0.245], [0.066, -0.21], [0.06, -0.175], [-0.06, -0.175], [-0.066, -0.21]])
    threads = [Shape(_rect(0, y, 0.062, 0.007), (0.5, 0.52, 0.56)) for y in np.arange(-0.12, 0.235, 0.028)]
    return [Shape(_rect(0, 0.035, 0.062, 0.42), (0.74, 0.76, 0.8)), *threads, Shape(head, (0.66, 0.68, 0.72)),
            Shape(_rect(0, -0.222, 0.1, 0.012), (0.86, 0.88, 0.9))]


def _nut_shapes(item: Item) -> list[Shape]:
    return [Shape(_ellipse(0, 0, NUT_R, NUT_R, 0.0, 6), (0.62, 0.64, 0.68)),
            Shape(_ellipse(0, 0, 0.052, 0.052), (0.52, 0.54, 0.58)), Shape(_ellipse(0, 0, 0.033, 0.033), None)]


def _washer_shapes(item: Item) -> list[Shape]:
    return [Shape(_ellipse(0, 0, WASHER_R, WASHER_R), (0.84, 0.66, 0.28)),
            Shape(_ellipse(-0.02, -0.035, 0.03, 0.012, 0.4), (0.95, 0.82, 0.5)),
            Shape(_ellipse(0, 0, 0.032, 0.032), None)]


def _kit_item(rng: Rng, kind: str, x: float) -> Item:
    if kind == "bolt":
        return Item(kind, x + rng.uniform(-0.02, 0.02), rng.uniform(-0.06, 0.06), np.deg2rad(rng.uniform(-10, 10)))
    return Item(kind, x + rng.uniform(-0.03, 0.03), rng.uniform(-0.24, 0.24), rng.uniform(-np.pi, np.pi))


def _kit_items(rng: Rng, kinds: Sequence[str]) -> list[Item]:
    """Items evenly spaced left to right across the tray, each jittered."""
    pitch = (TRAY_W - 2 * TRAY_RIM) / len(kinds)
    return [_kit_item(rng, k, -TRAY_W / 2 + TRAY_RIM + (i + 0.5) * pitch) for i, k in enumerate(kinds)]


def _kit_layout(rng: Rng) -> tuple[list[Item], dict]:
    return _kit_items(rng, KIT_ORDER), {}


def _kit_base(canvas: np.ndarray, scene: Scene) -> None:
    mat = _rounded_rect(0, 0, TRAY_W - 2 * TRAY_RIM, TRAY_H - 2 * TRAY_RIM, 0.03)
    tray = _rounded_rect(0, 0, TRAY_W, TRAY_H, 0.06)
    paint(canvas, scene, [Shape(tray, (0.2, 0.22, 0.26)), Shape(mat, (0.24, 0.34, 0.45))])


def _missing_item(scene: Scene, rng: Rng) -> list[np.ndarray]:
    removed = scene.items.pop(int(rng.integers(len(scene.items))))
    return [scene.footprint(removed)]


def _extra_item(scene: Scene, rng: Rng) -> list[np.ndarray]:
    kinds = list(KIT_ORDER)
    kind = str(rng.choice(list(KIT_RANK)))
    at = max(i for i, k in enumerate(kinds) if k == kind) + 1
    kinds.insert(at, kind)
    scene.items = _kit_items(rng, kinds)
    return [scene.footprint(scene.items[at])]


def _swapped_order(scene: Scene, rng: Rng) -> list[np.ndarray]:
    pairs = [(i, j) for i in range(len(scene.items)) for j in range(i + 1, len(scene.items))
             if scene.items[i].kind != scene.items[j].kind]
    i, j = pairs[int(rng.integers(len(pairs)))]
    a, b = scene.items[i], scene.items[j]
    a.x, b.x = b.x, a.x
    if "bolt" in (a.kind, b.kind):  # a bolt needs the middle of the tray's height
        for it in (a, b):
            it.y = rng.uniform(-0.06, 0.06) if it.kind == "bolt" else it.y
    return [scene.footprint(a), scene.footprint(b)]


def _kit_violations(scene: Scene) -> set[str]:
    kinds = [it.kind for it in sorted(scene.items, key=lambda it: it.x)]
    counts = {k: kinds.count(k) for k in KIT_RANK}
    expected = {k: KIT_ORDER.count(k) for k in KIT_RANK}
    out = set()
    if any(counts[k] < expected[k] for k in KIT_RANK):
        out.add("missing_item")
    if any(counts[k] > expected[k] for k in KIT_RANK):
        out.add("extra_item")
    if [KIT_RANK[k] for k in kinds] != sorted(KIT_RANK[k] for k in kinds):
        out.add("swapped_order")
    return out


KIND_SHAPES: dict[str, Callable[[Item], list[Shape]]] = {
    "pushpin": _pushpin_shapes, "label": _label_shapes, "tag": _tag_shapes, "cap": _cap_shapes,
    "bolt": _bolt_shapes, "nut": _nut_shapes, "washer": _washer_shapes,
}


# ------------------------------------------------------------------------------ structural defects
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
        mask = _mask(scene.hw, *(_segment(p0, p1, width) for p0, p1 in zip(pts[:-1], pts[1:]))) & scene.surface
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
    mask = _mask(scene.hw, _ellipse(col, row, rx, ry, rng.uniform(0, np.pi)))
    mask[row, col] = True  # never empty, even at tiny sizes
    rim = mask & ~ndimage.binary_erosion(mask, iterations=max(1, round(0.2 * ry)))
    dark = canvas[mask].mean() >= 0.3  # dark on most surfaces; lit from behind on dark ones
    canvas[mask] = rng.uniform(0.03, 0.1) if dark else rng.uniform(0.7, 0.8)
    canvas[rim] = 0.5 * canvas[rim] + 0.25
    return mask


@lru_cache(maxsize=1)
def _textures() -> tuple[np.ndarray, ...]:
    """scikit-image's bundled textures (offline), float in [0, 1]."""
    from skimage import data

    return tuple(np.asarray(getattr(data, n)(), np.float32) / 255 for n in ("coffee", "brick", "grass", "gravel"))


STAIN_TINTS: tuple[Color, ...] = ((0.35, 0.22, 0.1), (0.1, 0.1, 0.09), (0.3, 0.42, 0.14), (0.62, 0.3, 0.1))


def _stain_colors(rng: Rng, shape: tuple[int, int]) -> np.ndarray:
    """A textured h x w x 3 patch: a random crop of a bundled texture, tinted."""
    tex = _textures()[int(rng.integers(4))]
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
        blob = (1 - dist + 0.45 * _smooth_noise(rng, dist.shape, 3) > 0.35) & scene.surface[y0:y1, x0:x1]
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
    breakable = [i for i, it in enumerate(scene.items) if it.kind in _CATS[scene.category].breakable]
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


# -------------------------------------------------------------------------------- category table
@dataclass(frozen=True)
class Defect:
    """A defects_config.json entry; an absolute threshold is given in squared product units."""

    name: str
    pixel_value: int
    saturation: float
    relative: bool

    def config(self, size: int) -> dict:
        threshold = self.saturation if self.relative else int(round(self.saturation * size * size))
        return {"defect_name": self.name, "pixel_value": self.pixel_value,
                "saturation_threshold": threshold, "relative_saturation": self.relative}


STRUCTURAL_DEFECTS = (Defect("scratch", 101, 1.0, True), Defect("hole", 102, 1.0, True),
                      Defect("contamination", 103, 1.0, True), Defect("broken_part", 104, 1.0, True))
LogicalFn = Callable[[Scene, Rng], list[np.ndarray]]


@dataclass(frozen=True)
class Category:
    """Everything that makes a category: size, drawing, rules and defects."""

    name: str
    aspect: float  # width / height
    background: Color
    layout: Callable[[Rng], tuple[list[Item], dict]]
    draw_base: Callable[[np.ndarray, Scene], None]
    surface: Callable[[], list[np.ndarray]]
    breakable: tuple[str, ...]
    logical: dict[str, LogicalFn]
    logical_defects: tuple[Defect, ...]
    violations: Callable[[Scene], set[str]]

    def image_hw(self, size: int) -> tuple[int, int]:
        """(height, width): `size` is the shorter side."""
        if self.aspect >= 1:
            return size, int(round(size * self.aspect))
        return int(round(size / self.aspect)), size

    @property
    def defects(self) -> tuple[Defect, ...]:
        return self.logical_defects + STRUCTURAL_DEFECTS


_CATS: dict[str, Category] = {c.name: c for c in (
    Category("parts_box", 1.25, (0.62, 0.56, 0.46), _box_layout, _box_base,
             lambda: [_rounded_rect(0, 0, BOX_W, BOX_H, 0.04)], ("pushpin",),
             {"missing_part": _missing_part, "extra_part": _extra_part},
             (Defect("missing_part", 255, PIN_AREA, False), Defect("extra_part", 254, 1.0, True)), _box_violations),
    Category("bottle_label", 1 / 1.5, (0.2, 0.22, 0.26), _bottle_layout, _bottle_base,
             lambda: [*_bottle_outline(), _rect(0, CAP_Y, 0.25, 0.07)], ("label", "tag", "cap"),
             {"wrong_icon": _wrong_icon, "misplaced_label": _misplaced_label, "wrong_fill_level": _wrong_fill_level},
             (Defect("wrong_icon", 255, 1.0, True), Defect("misplaced_label", 254, 0.5, True),
              Defect("wrong_fill_level", 253, 1.0, True)), _bottle_violations),
    Category("screw_kit", 1.45, (0.66, 0.66, 0.63), _kit_layout, _kit_base,
             lambda: [_rounded_rect(0, 0, TRAY_W, TRAY_H, 0.06)], ("bolt", "nut", "washer"),
             {"missing_item": _missing_item, "extra_item": _extra_item, "swapped_order": _swapped_order},
             (Defect("missing_item", 255, NUT_AREA, False), Defect("extra_item", 254, 1.0, True),
              Defect("swapped_order", 253, 1.0, True)), _kit_violations),
)}
assert tuple(_CATS) == CATEGORIES


def defects_config(category: str, size: int) -> list[dict]:
    """MVTec LOCO's defects_config.json entries of a category at a given image size."""
    return [d.config(size) for d in _CATS[category].defects]


def rule_violations(scene: Scene) -> set[str]:
    """Names of the logical defect types whose rule the scene breaks (empty for a normal scene)."""
    return _CATS[scene.category].violations(scene)


# ------------------------------------------------------------------------------------- rendering
@lru_cache(maxsize=len(CATEGORIES))
def _tone_bank(category: str, size: int, seed: int) -> np.ndarray:
    """A background tone field twice the image size (soft blotches and fine grain), made once per
    category, size and seed; each image crops it at its own offset."""
    H, W = _CATS[category].image_hw(size)
    rng = np.random.default_rng([seed, CATEGORIES.index(category), 99])
    low = 0.05 * _smooth_noise(rng, (2 * H, 2 * W), 8)
    grain = ndimage.gaussian_filter(rng.standard_normal((2 * H, 2 * W), np.float32), max(0.7, size / 256), truncate=2.0)
    return 1 + low + 0.06 * grain


def _background(rng: Rng, scene: Scene, seed: int) -> np.ndarray:
    """The category's background colour on a random crop of its tone field."""
    H, W = scene.hw
    bank = _tone_bank(scene.category, scene.size, seed)
    y, x = int(rng.integers(H + 1)), int(rng.integers(W + 1))
    color = np.asarray(_CATS[scene.category].background, np.float32) * np.float32(rng.uniform(0.96, 1.04))
    return bank[y:y + H, x:x + W, None] * color


def _finish(canvas: np.ndarray, rng: Rng) -> np.ndarray:
    """Lighting (gain, offset, soft gradient), a little optical blur and sensor noise -> uint8."""
    H, W = canvas.shape[:2]
    gain, offset = rng.uniform(0.9, 1.1), rng.uniform(-0.03, 0.03)
    angle, amplitude = rng.uniform(-np.pi, np.pi), rng.uniform(0.0, 0.08)
    x, y = np.linspace(-1, 1, W, dtype=np.float32), np.linspace(-1, 1, H, dtype=np.float32)
    light = (255 * gain) * (1 + amplitude * (np.cos(angle) * x[None, :] + np.sin(angle) * y[:, None]))
    image = canvas * light[..., None]
    image = ndimage.gaussian_filter(image, (0.6, 0.6, 0), truncate=2.0)
    noise = rng.random(image.shape, np.float32) - rng.random(image.shape, np.float32)  # triangular, sd 0.41
    image += (0.012 * 255 / 0.41) * noise + (255 * offset + 0.5)
    return np.clip(image, 0, 255, out=image).astype(np.uint8)


@dataclass
class Rendered:
    """One generated image with its ground-truth regions (defect name, bool mask) and scene."""

    image: np.ndarray
    regions: list[tuple[str, np.ndarray]]
    scene: Scene


def _new_scene(category: str, size: int, rng: Rng) -> Scene:
    cat = _CATS[category]
    pose = (rng.uniform(-0.02, 0.02), rng.uniform(-0.02, 0.02), np.deg2rad(rng.uniform(-2.5, 2.5)))
    items, facts = cat.layout(rng)
    return Scene(category, size, cat.image_hw(size), pose, items, facts)


def _structural_names(rng: Rng, index: int) -> list[str]:
    names = [d.name for d in STRUCTURAL_DEFECTS]
    chosen = [names[index % len(names)]]
    if rng.random() < TWO_DEFECTS_P:
        chosen.append(str(rng.choice([n for n in names if n != chosen[0]])))
    return sorted(chosen, key=lambda n: n != "broken_part")  # a break re-renders: it goes first


def render_sample(category: str, spec: SyntheticSpec, split: str, index: int, with_defects: bool = True) -> Rendered:
    """Image `index` of a split key of `SPLITS`; `with_defects=False` gives its defect-free twin
    (same product, pose, lighting and noise)."""
    cat = _CATS[_check_categories([category])[0]]
    seq = np.random.SeedSequence([spec.seed, CATEGORIES.index(category), SPLITS[split][1], index])
    layout_rng, defect_rng, look_rng = (np.random.default_rng(s) for s in seq.spawn(3))
    scene = _new_scene(category, spec.size, layout_rng)
    scene.background = _background(look_rng, scene, spec.seed)
    regions: list[tuple[str, np.ndarray]] = []
    if with_defects and split == "logical":
        name = cat.logical_defects[index % len(cat.logical_defects)].name
        regions = [(name, m) for m in cat.logical[name](scene, defect_rng)]
    canvas = scene.render()
    if with_defects and split == "structural":
        regions = [(name, STRUCTURAL[name](canvas, scene, defect_rng)) for name in _structural_names(defect_rng, index)]
    return Rendered(_finish(canvas, look_rng), regions, scene)


# --------------------------------------------------------------------------------------- writing
def _check_categories(categories: Sequence[str] | str | None) -> list[str]:
    if categories is None:
        return list(CATEGORIES)
    if isinstance(categories, str):
        categories = [c.strip() for c in categories.split(",") if c.strip()]
    unknown = [c for c in categories if c not in _CATS]
    if unknown or not categories:
        raise ValueError(f"unknown synthetic categories {unknown or list(categories)}; valid: {', '.join(CATEGORIES)}")
    return list(dict.fromkeys(categories))


def _check_spec(spec: SyntheticSpec) -> None:
    if spec.size < 32:
        raise ValueError(f"synthetic size must be at least 32 pixels (the shorter side), got {spec.size}")
    if spec.seed < 0:
        raise ValueError(f"synthetic seed must be >= 0, got {spec.seed}")
    for f in fields(spec):
        if f.name.startswith("n_") and getattr(spec, f.name) < 1:
            raise ValueError(f"{f.name} must be >= 1 (MVTec LOCO has no empty split), got {getattr(spec, f.name)}")


def _write_sample(cat_dir: Path, split: str, index: int, rendered: Rendered) -> None:
    folder = SPLITS[split][0]
    Image.fromarray(rendered.image, "RGB").save(cat_dir / folder / f"{index:03d}.png", compress_level=1)
    if not rendered.regions:
        return
    gt_dir = cat_dir / "ground_truth" / Path(folder).name / f"{index:03d}"
    gt_dir.mkdir(parents=True, exist_ok=True)
    values = {d.name: d.pixel_value for d in _CATS[rendered.scene.category].defects}
    for k, (name, region) in enumerate(rendered.regions):
        mask = np.where(region, np.uint8(values[name]), np.uint8(0))
        Image.fromarray(mask, "L").save(gt_dir / f"{k:03d}.png", compress_level=1)


def _workers() -> int:
    """Threads for writing: the CPUs this process may use, at most WORKERS."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    return max(1, min(WORKERS, cpus))


def write_category(out: Path, category: str, spec: SyntheticSpec) -> Path:
    """Write one category afresh (an existing category folder is removed first)."""
    cat_dir = Path(out) / category
    if cat_dir.exists():
        shutil.rmtree(cat_dir)
    for folder, _ in SPLITS.values():
        (cat_dir / folder).mkdir(parents=True)
    _textures(), _tone_bank(category, spec.size, spec.seed)  # shared caches, filled before any thread starts

    def job(split: str, index: int) -> None:
        _write_sample(cat_dir, split, index, render_sample(category, spec, split, index))

    jobs = [(split, index) for split in SPLITS for index in range(spec.count(split))]
    if _workers() == 1:
        for split, index in jobs:
            job(split, index)
    else:
        with ThreadPoolExecutor(_workers()) as pool:  # PNG coding and large numpy ops run without the GIL
            list(pool.map(lambda j: job(*j), jobs))
    config = defects_config(category, spec.size)
    (cat_dir / "defects_config.json").write_text(json.dumps(config, indent=4) + "\n")
    return cat_dir


def make_synthetic(
    out: str | Path, spec: SyntheticSpec = SyntheticSpec(), categories: Sequence[str] | None = None
) -> list[Path]:
    """Write the categories (default: all) under `out`; return the category directories."""
    names = _check_categories(categories)
    _check_spec(spec)
    Path(out).mkdir(parents=True, exist_ok=True)
    return [write_category(Path(out), name, spec) for name in names]
