"""The category table: every category in CATEGORIES order (CATEGORIES[0] is the CLI's default;
new categories go last, since a category's index seeds its images)."""

from __future__ import annotations

from typing import Sequence

from . import bottle_label, parts_box, screw_bag, screw_kit
from .drawing import CATS, KIND_SHAPES, Scene

for _category in (parts_box.CATEGORY, bottle_label.CATEGORY, screw_kit.CATEGORY, screw_bag.CATEGORY):
    CATS[_category.name] = _category
    KIND_SHAPES.update(_category.shapes)

CATEGORIES: tuple[str, ...] = tuple(CATS)


def defects_config(category: str, size: int) -> list[dict]:
    """MVTec LOCO's defects_config.json entries of a category at a given image size."""
    return [d.config(size) for d in CATS[category].defects]


def rule_violations(scene: Scene) -> set[str]:
    """Names of the logical defect types whose rule the scene breaks (empty for a normal scene)."""
    return CATS[scene.category].violations(scene)


def check_categories(categories: Sequence[str] | str | None) -> list[str]:
    """Known category names, in the given order without repeats (None: all)."""
    if categories is None:
        return list(CATEGORIES)
    if isinstance(categories, str):
        categories = [c.strip() for c in categories.split(",") if c.strip()]
    unknown = [c for c in categories if c not in CATS]
    if unknown or not categories:
        raise ValueError(f"unknown synthetic categories {unknown or list(categories)}; valid: {', '.join(CATEGORIES)}")
    return list(dict.fromkeys(categories))
