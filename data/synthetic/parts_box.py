"""``parts_box`` (landscape, 1.25:1): a box with 3 x 4 compartments, exactly one pushpin (yellow head,
silver needle) in each. Logical: ``missing_part`` (a compartment is empty; region = the
compartment, saturation = the area of one pushpin, absolute), ``extra_part`` (a compartment holds
two pushpins; region = the extra one, relative 1.0).
"""

from __future__ import annotations

import numpy as np

from .drawing import Category, Defect, Item, Rng, Scene, Shape, ellipse, paint, rect, rounded_rect

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
    needle = rect((PIN_R / 2 + PIN_R + PIN_LEN) / 2, 0.0, PIN_R / 2 + PIN_LEN, PIN_W)
    return [Shape(needle, (0.86, 0.87, 0.9)),
            Shape(ellipse(0, 0, PIN_R, PIN_R), (0.93, 0.76, 0.12)),
            Shape(ellipse(0, 0, 0.62 * PIN_R, 0.62 * PIN_R), (0.98, 0.84, 0.25)),
            Shape(ellipse(-0.3 * PIN_R, -0.3 * PIN_R, 0.25 * PIN_R, 0.2 * PIN_R), (1.0, 0.97, 0.8))]


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
    shapes = [Shape(rounded_rect(0, 0, BOX_W, BOX_H, 0.04), (0.16, 0.17, 0.2))]
    shapes += [Shape(rect((x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0), (0.42, 0.45, 0.5))
               for x0, y0, x1, y1 in _compartments()]
    paint(canvas, scene, shapes)


def _missing_part(scene: Scene, rng: Rng) -> list[np.ndarray]:
    slot = int(rng.integers(len(scene.items)))
    scene.items = [it for it in scene.items if it.slot != slot]
    x0, y0, x1, y1 = _compartments()[slot]
    return [scene.mask(rect((x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0))]


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



CATEGORY = Category("parts_box", 1.25, (0.62, 0.56, 0.46), _box_layout, _box_base,
                    lambda: [rounded_rect(0, 0, BOX_W, BOX_H, 0.04)], ("pushpin",),
                    {"missing_part": _missing_part, "extra_part": _extra_part},
                    (Defect("missing_part", 255, PIN_AREA, False), Defect("extra_part", 254, 1.0, True)),
                    _box_violations, {"pushpin": _pushpin_shapes})
