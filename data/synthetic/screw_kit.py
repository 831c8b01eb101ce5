"""``screw_kit`` (landscape, 1.45:1): a tray holding exactly 2 bolts, 2 nuts and 1 brass washer, laid
left to right in that order (bolts left of nuts, the washer rightmost). Logical: ``missing_item``
(one item fewer; region = where it lay, saturation = the area of one nut, absolute),
``extra_item`` (one more bolt, nut or washer, order kept; region = the extra item, relative 1.0),
``swapped_order`` (two items of different kinds swap places; one region per moved item, relative 1.0).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .drawing import Category, Defect, Item, Rng, Scene, Shape, ellipse, paint, rect, rounded_rect

TRAY_W, TRAY_H, TRAY_RIM = 1.36, 0.90, 0.04
KIT_ORDER = ("bolt", "bolt", "nut", "nut", "washer")
KIT_RANK = {"bolt": 0, "nut": 1, "washer": 2}
NUT_R, WASHER_R = 0.075, 0.072
NUT_AREA = 1.5 * np.sqrt(3) * NUT_R**2


def _bolt_shapes(item: Item) -> list[Shape]:
    head = np.array([[-0.06, -0.245], [0.06, -0.245], [0.066, -0.21], [0.06, -0.175], [-0.06, -0.175], [-0.066, -0.21]])
    threads = [Shape(rect(0, y, 0.062, 0.007), (0.5, 0.52, 0.56)) for y in np.arange(-0.12, 0.235, 0.028)]
    return [Shape(rect(0, 0.035, 0.062, 0.42), (0.74, 0.76, 0.8)), *threads, Shape(head, (0.66, 0.68, 0.72)),
            Shape(rect(0, -0.222, 0.1, 0.012), (0.86, 0.88, 0.9))]


def nut_shapes(item: Item) -> list[Shape]:
    return [Shape(ellipse(0, 0, NUT_R, NUT_R, 0.0, 6), (0.62, 0.64, 0.68)),
            Shape(ellipse(0, 0, 0.052, 0.052), (0.52, 0.54, 0.58)), Shape(ellipse(0, 0, 0.033, 0.033), None)]


def washer_shapes(item: Item) -> list[Shape]:
    return [Shape(ellipse(0, 0, WASHER_R, WASHER_R), (0.84, 0.66, 0.28)),
            Shape(ellipse(-0.02, -0.035, 0.03, 0.012, 0.4), (0.95, 0.82, 0.5)),
            Shape(ellipse(0, 0, 0.032, 0.032), None)]


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
    mat = rounded_rect(0, 0, TRAY_W - 2 * TRAY_RIM, TRAY_H - 2 * TRAY_RIM, 0.03)
    tray = rounded_rect(0, 0, TRAY_W, TRAY_H, 0.06)
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


CATEGORY = Category("screw_kit", 1.45, (0.66, 0.66, 0.63), _kit_layout, _kit_base,
                    lambda: [rounded_rect(0, 0, TRAY_W, TRAY_H, 0.06)], ("bolt", "nut", "washer"),
                    {"missing_item": _missing_item, "extra_item": _extra_item, "swapped_order": _swapped_order},
                    (Defect("missing_item", 255, NUT_AREA, False), Defect("extra_item", 254, 1.0, True),
                     Defect("swapped_order", 253, 1.0, True)), _kit_violations,
                    {"bolt": _bolt_shapes, "nut": nut_shapes, "washer": washer_shapes})
