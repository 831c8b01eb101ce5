"""``screw_bag`` (landscape, 1.4:1): a clear plastic bag holding exactly 2 screws of one length, 2 nuts
and 2 brass washers at random positions and angles (no position rule: items never overlap, and that
is all). Only the counts and the screw length are rules, as in MVTec LOCO's screw bag.

Logical: ``missing_item`` (one item fewer; region = the bag's inside, where it could have been,
saturation = the area of the smallest item, absolute: MVTec LOCO's way of marking a missing item
without a place), ``extra_item`` (one more screw, nut or washer at a free place; region = the extra
item, relative 1.0), ``wrong_size`` (one screw is much shorter or longer; region = that screw,
relative 1.0; it keeps its place when it fits there).

Structural: the shared four (a broken item, a stain, a scratch, a hole in the bag) and ``bent_item``
(a screw bent by 25-45 degrees; region = the moved part of the screw, where it was and where it is,
relative 1.0).
"""

from __future__ import annotations

import numpy as np

from .drawing import Category, Defect, Item, Rng, Scene, Shape, ellipse, paint, placed_shapes, rect, rotate, rounded_rect
from .screw_kit import NUT_AREA, NUT_R, WASHER_R, nut_shapes, washer_shapes

BAG_W, BAG_H, BAG_SEAM = 1.26, 0.88, 0.05
#: items lie inside this (x0, y0, x1, y1) box, inside the bag and below its seam
INSIDE = (-BAG_W / 2 + 0.05, -BAG_H / 2 + BAG_SEAM + 0.04, BAG_W / 2 - 0.05, BAG_H / 2 - 0.05)
BAG_COUNTS = {"screw": 2, "nut": 2, "washer": 2}
SCREW_LEN, SHANK_W, HEAD_LEN, HEAD_W = 0.34, 0.036, 0.035, 0.076
#: screw length by variant: the rule's length, and the two wrong ones
SCREW_LENGTHS = {"": SCREW_LEN, "short": 0.6 * SCREW_LEN, "long": 1.4 * SCREW_LEN}
SCREW_AREA = HEAD_LEN * HEAD_W + (SCREW_LEN - HEAD_LEN) * SHANK_W
WASHER_AREA = np.pi * WASHER_R**2
#: the missing item's saturation: the smallest item's area (product units squared)
ITEM_AREA = min(SCREW_AREA, NUT_AREA, WASHER_AREA)
GAP = 0.02  # least clearance between two items


def _screw_shapes(item: Item) -> list[Shape]:
    """Side view along +x: pan head at the left end, shank, threads, pointed tip; `bend` bends the
    part beyond `bend_at` of the shank about that point."""
    length = SCREW_LENGTHS[item.variant]
    head_x, tip_x = -length / 2, length / 2
    shank_x0, point_x = head_x + HEAD_LEN, tip_x - 0.03
    bend_x = shank_x0 + item.bend_at * (point_x - shank_x0)
    steel, thread = (0.8, 0.82, 0.86), (0.6, 0.62, 0.67)
    shapes = [Shape(rect((shank_x0 + bend_x) / 2, 0, bend_x - shank_x0, SHANK_W), steel),
              Shape(rect((bend_x + point_x) / 2, 0, point_x - bend_x, SHANK_W), steel),
              Shape(np.array([[point_x, -SHANK_W / 2], [tip_x, 0.0], [point_x, SHANK_W / 2]]), steel)]
    shapes += [Shape(rect(x, 0, 0.006, SHANK_W), thread) for x in np.arange(shank_x0 + 0.03, point_x, 0.022)]
    shapes += [Shape(rounded_rect(head_x + HEAD_LEN / 2, 0, HEAD_LEN, HEAD_W, 0.012), (0.62, 0.64, 0.69)),
               Shape(rect(head_x + 0.25 * HEAD_LEN, 0, 0.006, 0.6 * HEAD_W), (0.88, 0.9, 0.92))]
    if item.bend:
        shapes = [_bent(s, bend_x, item.bend) for s in shapes]
        shapes.append(Shape(ellipse(bend_x, 0, SHANK_W / 2, SHANK_W / 2), steel))  # the joint
    return shapes


def _bent(shape: Shape, bend_x: float, bend: float) -> Shape:
    """Points beyond x = bend_x turned by `bend` about (bend_x, 0)."""
    pts = shape.pts.copy()
    tail = pts[:, 0] > bend_x + 1e-9
    pts[tail] = rotate(pts[tail] - (bend_x, 0.0), bend) + (bend_x, 0.0)
    return Shape(pts, shape.color, shape.alpha)


def _discs(kind: str, variant: str, x: float, y: float, angle: float) -> np.ndarray:
    """Circles (cx, cy, r) that cover an item: a screw is a row of them along its axis."""
    if kind != "screw":
        return np.array([[x, y, NUT_R if kind == "nut" else WASHER_R]])
    length = SCREW_LENGTHS[variant]
    along = np.linspace(-length / 2 + HEAD_W / 2, length / 2 - SHANK_W / 2, max(2, int(length / 0.035)))
    centres = rotate(np.stack([along, np.zeros_like(along)], 1), angle) + (x, y)
    radii = np.where(along < -length / 2 + HEAD_W, HEAD_W / 2, SHANK_W / 2)
    return np.column_stack([centres, radii])


def _clearance(discs: np.ndarray, others: list[np.ndarray]) -> float:
    """Least distance between the rims of `discs` and any of `others` (inf if none)."""
    if not others:
        return np.inf
    rest = np.concatenate(others)
    dist = np.hypot(discs[:, None, 0] - rest[None, :, 0], discs[:, None, 1] - rest[None, :, 1])
    return float((dist - discs[:, None, 2] - rest[None, :, 2]).min())


def _place(rng: Rng, kind: str, items: list[Item], variant: str = "", keep: tuple[float, float, float] | None = None,
           tries: int = 200) -> Item:
    """An item at a random place and angle inside the bag that clears every item in `items`
    (the best of `tries` candidates if none does); `keep` = (x, y, angle) is tried first."""
    x0, y0, x1, y1 = INSIDE
    others = [_discs(it.kind, it.variant, it.x, it.y, it.angle) for it in items]
    best, best_clear = None, -np.inf
    for attempt in range(tries):
        if attempt == 0 and keep is not None:
            x, y, angle = keep
        else:
            x, y, angle = rng.uniform(x0, x1), rng.uniform(y0, y1), rng.uniform(-np.pi, np.pi)
        discs = _discs(kind, variant, x, y, angle)
        inside = ((discs[:, 0] - discs[:, 2] >= x0) & (discs[:, 0] + discs[:, 2] <= x1)
                  & (discs[:, 1] - discs[:, 2] >= y0) & (discs[:, 1] + discs[:, 2] <= y1)).all()
        clear = _clearance(discs, others) if inside else -np.inf
        if clear > best_clear:
            best, best_clear = (x, y, angle), clear
        if clear >= GAP:
            break
    return Item(kind, *best, variant=variant)


def _bag_layout(rng: Rng) -> tuple[list[Item], dict]:
    items: list[Item] = []
    for kind, count in BAG_COUNTS.items():
        for _ in range(count):
            items.append(_place(rng, kind, items))
    order = rng.permutation(len(items))  # drawing order: no kind always on top
    creases = [(rng.uniform(-0.5, 0.5), rng.uniform(-0.3, 0.3), rng.uniform(-np.pi, np.pi), rng.uniform(0.2, 0.5))
               for _ in range(3)]
    return [items[i] for i in order], {"creases": creases}


def _bag_outline() -> np.ndarray:
    return rounded_rect(0, 0, BAG_W, BAG_H, 0.03)


def _bag_base(canvas: np.ndarray, scene: Scene) -> None:
    """A clear bag: a light film over the background, a seam at the top, soft creases."""
    shapes = [Shape(_bag_outline(), (0.7, 0.76, 0.84), 0.3),
              Shape(rect(0, -BAG_H / 2 + BAG_SEAM / 2, BAG_W, BAG_SEAM), (0.8, 0.84, 0.9), 0.6),
              Shape(rect(0, -BAG_H / 2 + BAG_SEAM, BAG_W, 0.006), (0.5, 0.54, 0.6), 0.6)]
    shapes += [Shape(rect(x, y, length, 0.012, angle), (1.0, 1.0, 1.0), 0.1)
               for x, y, angle, length in scene.facts["creases"]]
    paint(canvas, scene, shapes)


def _missing_item(scene: Scene, rng: Rng) -> list[np.ndarray]:
    scene.items.pop(int(rng.integers(len(scene.items))))
    x0, y0, x1, y1 = INSIDE
    return [scene.mask(rect((x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0))]


def _extra_item(scene: Scene, rng: Rng) -> list[np.ndarray]:
    extra = _place(rng, str(rng.choice(list(BAG_COUNTS))), scene.items)
    scene.items.insert(int(rng.integers(len(scene.items) + 1)), extra)
    return [scene.footprint(extra)]


def _wrong_size(scene: Scene, rng: Rng) -> list[np.ndarray]:
    screws = [i for i, it in enumerate(scene.items) if it.kind == "screw"]
    index = screws[int(rng.integers(len(screws)))]
    old = scene.items[index]
    others = scene.items[:index] + scene.items[index + 1:]
    variant = "short" if rng.random() < 0.5 else "long"
    scene.items[index] = _place(rng, "screw", others, variant, keep=(old.x, old.y, old.angle))
    return [scene.footprint(scene.items[index])]


def _bag_violations(scene: Scene) -> set[str]:
    counts = {k: sum(it.kind == k for it in scene.items) for k in BAG_COUNTS}
    out = set()
    if any(counts[k] < n for k, n in BAG_COUNTS.items()):
        out.add("missing_item")
    if any(counts[k] > n for k, n in BAG_COUNTS.items()):
        out.add("extra_item")
    if any(it.kind == "screw" and it.variant for it in scene.items):
        out.add("wrong_size")
    return out


def _bent_item(canvas: np.ndarray, scene: Scene, rng: Rng) -> np.ndarray:
    """One screw bent about a point along its shank; the mask covers its moved part, before and after
    (and any pixel the re-drawing changed)."""
    screws = [i for i, it in enumerate(scene.items) if it.kind == "screw"]
    index = screws[int(rng.integers(len(screws)))]
    item = scene.items[index]
    before, old = scene.footprint(item), canvas.copy()
    item.bend_at = rng.uniform(0.3, 0.6)
    item.bend = float(rng.choice([-1.0, 1.0]) * np.deg2rad(rng.uniform(25, 45)))
    canvas[before] = scene.render(skip=index)[before]
    paint(canvas, scene, placed_shapes(item))
    after, changed = scene.footprint(item), (canvas != old).any(axis=2)
    length = SCREW_LENGTHS[item.variant]
    shank_x0 = -length / 2 + HEAD_LEN
    bend_x = shank_x0 + item.bend_at * (length / 2 - 0.03 - shank_x0)
    X, Y = scene.grid
    local = rotate(np.stack([X.ravel() - item.x, Y.ravel() - item.y], 1), -item.angle)[:, 0].reshape(X.shape)
    return changed | ((before | after) & (local >= bend_x - SHANK_W))


CATEGORY = Category("screw_bag", 1.4, (0.1, 0.11, 0.14), _bag_layout, _bag_base, lambda: [_bag_outline()],
                    ("screw", "nut", "washer"),
                    {"missing_item": _missing_item, "extra_item": _extra_item, "wrong_size": _wrong_size},
                    (Defect("missing_item", 255, ITEM_AREA, False), Defect("extra_item", 254, 1.0, True),
                     Defect("wrong_size", 253, 1.0, True)), _bag_violations,
                    {"screw": _screw_shapes, "nut": nut_shapes, "washer": washer_shapes},
                    (Defect("bent_item", 105, 1.0, True),), {"bent_item": _bent_item})
