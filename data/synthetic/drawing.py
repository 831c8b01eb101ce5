"""Shared drawing primitives of the synthetic categories: polygons in product units, the scene
model (items placed on a posed product), painting, and the category / defect records."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Callable, Sequence

import numpy as np
from PIL import Image, ImageDraw
from skimage.transform import resize

Color = tuple[float, float, float]
Rng = np.random.Generator


# --------------------------------------------------------------------------------------- geometry
def rotate(pts: np.ndarray, angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return pts @ np.array([[c, s], [-s, c]])


def ellipse(cx: float, cy: float, rx: float, ry: float, angle: float = 0.0, n: int = 40) -> np.ndarray:
    t = np.linspace(0.0, 2 * np.pi, n, endpoint=False)
    return rotate(np.stack([rx * np.cos(t), ry * np.sin(t)], 1), angle) + (cx, cy)


def rect(cx: float, cy: float, w: float, h: float, angle: float = 0.0) -> np.ndarray:
    pts = np.array([[-w, -h], [w, -h], [w, h], [-w, h]]) / 2
    return rotate(pts, angle) + (cx, cy)


def rounded_rect(cx: float, cy: float, w: float, h: float, r: float, n: int = 6) -> np.ndarray:
    corners = ((w / 2 - r, h / 2 - r, 0.0), (-w / 2 + r, h / 2 - r, 0.5), (-w / 2 + r, -h / 2 + r, 1.0),
               (w / 2 - r, -h / 2 + r, 1.5))
    pts = []
    for x, y, start in corners:
        t = np.pi * (start + np.linspace(0.0, 0.5, n))
        pts.append(np.stack([x + r * np.cos(t), y + r * np.sin(t)], 1))
    return np.concatenate(pts) + (cx, cy)


def segment(p0: np.ndarray, p1: np.ndarray, width: float) -> np.ndarray:
    """A thick line from p0 to p1 as a polygon."""
    d = np.asarray(p1, float) - np.asarray(p0, float)
    n = np.array([-d[1], d[0]]) / max(float(np.hypot(*d)), 1e-9) * width / 2
    return np.array([p0 + n, p1 + n, p1 - n, p0 - n])


Patch = tuple[tuple[slice, slice], np.ndarray]  # an image window and the bool mask inside it


def fill_polygon(pts: np.ndarray, hw: tuple[int, int]) -> Patch:
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


def polygon_mask(hw: tuple[int, int], *polygons: np.ndarray) -> np.ndarray:
    """Union of polygons (image points) as a bool image."""
    out = np.zeros(hw, bool)
    for pts in polygons:
        window, inside = fill_polygon(pts, hw)
        out[window] |= inside
    return out


def smooth_noise(rng: Rng, shape: tuple[int, int], cells: int) -> np.ndarray:
    """Low-frequency noise of about unit amplitude: a coarse random grid, upsampled."""
    aspect = shape[1] / max(shape[0], 1)
    coarse = rng.normal(size=(cells + 2, max(2, round(cells * aspect)) + 2))
    return resize(coarse, shape, order=1, mode="reflect", anti_aliasing=False).astype(np.float32)


# ------------------------------------------------------------------------------------ scene model
#: every category by name and every item kind's shapes; `categories` fills both (in CATEGORIES order)
CATS: dict[str, "Category"] = {}
KIND_SHAPES: dict[str, Callable[["Item"], list["Shape"]]] = {}


@dataclass(frozen=True)
class Shape:
    """A filled polygon in product units (multiples of the shorter image side); colour None
    cuts a hole that shows what lay beneath the item."""

    pts: np.ndarray
    color: Color | None
    alpha: float = 1.0


@dataclass
class Item:
    """One movable object, in product units; `slot` is its compartment, `variant` e.g. a fruit or a
    size; a long item may be `bend` radians bent at the fraction `bend_at` of its length."""

    kind: str
    x: float
    y: float
    angle: float = 0.0
    slot: int = -1
    variant: str = ""
    bend: float = 0.0
    bend_at: float = 0.5


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
        return rotate(np.asarray(pts, float) * self.size, angle) + centre + np.array([dx, dy]) * self.size

    def fill(self, pts: np.ndarray) -> Patch:
        return fill_polygon(self.to_image(pts), self.hw)

    def mask(self, *polygons: np.ndarray) -> np.ndarray:
        """Union of polygons (product units) as a bool image."""
        return polygon_mask(self.hw, *(self.to_image(pts) for pts in polygons))

    def footprint(self, item: Item) -> np.ndarray:
        return self.mask(*(shape.pts for shape in placed_shapes(item)))

    @cached_property
    def grid(self) -> tuple[np.ndarray, np.ndarray]:
        """Product coordinates (X, Y) of every pixel centre."""
        rows, cols = np.mgrid[0:self.hw[0], 0:self.hw[1]].astype(np.float64)
        dx, dy, angle = self.pose
        pts = np.stack([cols.ravel() - (self.hw[1] - 1) / 2 - dx * self.size,
                        rows.ravel() - (self.hw[0] - 1) / 2 - dy * self.size], 1)
        local = rotate(pts, -angle) / self.size
        return local[:, 0].reshape(self.hw), local[:, 1].reshape(self.hw)

    @cached_property
    def surface(self) -> np.ndarray:
        """Where structural defects may land: the product's outline."""
        return self.mask(*CATS[self.category].surface())

    def render(self, skip: int | None = None) -> np.ndarray:
        """H x W x 3 float32 in [0, 1]: background, the category's base, then the items."""
        canvas = self.background.copy()
        CATS[self.category].draw_base(canvas, self)
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
    return [replace(s, pts=rotate(s.pts, item.angle) + (item.x, item.y)) for s in KIND_SHAPES[item.kind](item)]


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
ShapeFn = Callable[[Item], list[Shape]]


@dataclass(frozen=True)
class Category:
    """Everything that makes a category: size, drawing, rules, defects and its item kinds' shapes."""

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
    shapes: dict[str, ShapeFn] = field(default_factory=dict)  # item kind -> its shapes (in item units)
    #: structural defects beyond the shared STRUCTURAL_DEFECTS, with their functions (see `structural`)
    extra_structural: tuple[Defect, ...] = ()
    extra_structural_fns: dict[str, Callable[[np.ndarray, Scene, Rng], np.ndarray]] = field(default_factory=dict)

    def image_hw(self, size: int) -> tuple[int, int]:
        """(height, width): `size` is the shorter side."""
        if self.aspect >= 1:
            return size, int(round(size * self.aspect))
        return int(round(size / self.aspect)), size

    @property
    def defects(self) -> tuple[Defect, ...]:
        return self.logical_defects + self.structural_defects

    @property
    def structural_defects(self) -> tuple[Defect, ...]:
        return STRUCTURAL_DEFECTS + self.extra_structural

