"""``bottle_label`` (portrait, 1:1.5): a glass bottle filled with one of three juices (orange, cherry,
banana), a front label whose fruit icon must match the juice, a small tag below it, a cap. The
label sits centred at a fixed height and the fill level leaves a fixed headspace. Logical:
``wrong_icon`` (the icon names another fruit; region = the icon, relative 1.0), ``misplaced_label``
(shifted up or tilted; region = where it is and where it belongs, relative 0.5), ``wrong_fill_level``
(far too low or too high; region = the liquid band that changed, relative 1.0).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from .drawing import Category, Color, Defect, Item, Rng, Scene, Shape, ellipse, paint, rect, rotate, rounded_rect, segment

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
    neck = rect(NECK[0], NECK[1] + t, NECK[2] - 2 * t, NECK[3])
    return [rounded_rect(cx, cy, w - 2 * t, h - 2 * t, r - t), shoulder, neck]


def _icon_shapes(variant: str) -> list[Shape]:
    """The fruit icon of a label, in label coordinates."""
    cy = -0.035
    if variant == "orange":
        return [Shape(ellipse(0, cy, 0.085, 0.085), LIQUIDS["orange"]),
                Shape(ellipse(0.035, cy - 0.09, 0.035, 0.015, -0.5), (0.2, 0.55, 0.18)),
                Shape(ellipse(-0.03, cy - 0.03, 0.02, 0.015), (1.0, 0.75, 0.45))]
    if variant == "cherry":
        top = np.array([0.01, cy - 0.09])
        return [Shape(segment(np.array([-0.045, cy]), top, 0.012), (0.35, 0.4, 0.12)),
                Shape(segment(np.array([0.045, cy + 0.015]), top, 0.012), (0.35, 0.4, 0.12)),
                Shape(ellipse(-0.045, cy, 0.048, 0.048), (0.75, 0.05, 0.12)),
                Shape(ellipse(0.045, cy + 0.015, 0.048, 0.048), (0.75, 0.05, 0.12))]
    t = np.linspace(0.12 * np.pi, 0.88 * np.pi, 20)
    outer = np.stack([0.115 * np.cos(t), cy - 0.06 + 0.115 * np.sin(t)], 1)
    inner = np.stack([0.115 * np.cos(t[::-1]), cy - 0.115 + 0.115 * np.sin(t[::-1])], 1)
    return [Shape(np.concatenate([outer, inner]), (0.98, 0.82, 0.15))]


def _label_shapes(item: Item) -> list[Shape]:
    title = [Shape(rect(0, 0.095, 0.26, 0.022), (0.2, 0.2, 0.26)),
             Shape(rect(0, 0.125, 0.16, 0.014), (0.35, 0.35, 0.4))]
    return [Shape(rect(0, 0, 0.40, 0.30), (0.96, 0.94, 0.86)), *_icon_shapes(item.variant), *title]


def _tag_shapes(item: Item) -> list[Shape]:
    return [Shape(rect(0, 0, 0.40, 0.08), (0.98, 0.98, 0.97)), Shape(rect(-0.08, 0, 0.16, 0.016), (0.2, 0.22, 0.3)),
            Shape(rect(0.1, 0, 0.1, 0.016), (0.2, 0.22, 0.3))]


def _cap_shapes(item: Item) -> list[Shape]:
    ridges = [Shape(rect(x, 0.005, 0.012, 0.05), (0.4, 0.42, 0.45)) for x in np.linspace(-0.09, 0.09, 6)]
    return [Shape(rect(0, 0, 0.25, 0.07), (0.58, 0.6, 0.63)), *ridges]


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
    paint(canvas, scene, [Shape(rect(-0.18, 0.12, 0.03, 0.7), (1.0, 1.0, 1.0), 0.3)])


def _wrong_icon(scene: Scene, rng: Rng) -> list[np.ndarray]:
    label = next(it for it in scene.items if it.kind == "label")
    label.variant = str(rng.choice([v for v in LIQUIDS if v != label.variant]))
    moved = [replace(s, pts=rotate(s.pts, label.angle) + (label.x, label.y)) for s in _icon_shapes(label.variant)]
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



CATEGORY = Category("bottle_label", 1 / 1.5, (0.2, 0.22, 0.26), _bottle_layout, _bottle_base,
                    lambda: [*_bottle_outline(), rect(0, CAP_Y, 0.25, 0.07)], ("label", "tag", "cap"),
                    {"wrong_icon": _wrong_icon, "misplaced_label": _misplaced_label,
                     "wrong_fill_level": _wrong_fill_level},
                    (Defect("wrong_icon", 255, 1.0, True), Defect("misplaced_label", 254, 0.5, True),
                     Defect("wrong_fill_level", 253, 1.0, True)), _bottle_violations,
                    {"label": _label_shapes, "tag": _tag_shapes, "cap": _cap_shapes})
