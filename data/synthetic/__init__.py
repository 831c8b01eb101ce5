"""A synthetic MVTec LOCO AD: the embedded default dataset and the test fixture of every LOCO code path.

`make_synthetic` writes MVTec LOCO AD's exact layout for each category::

    <out>/<category>/{train/good, validation/good}/000.png ...
    <out>/<category>/test/{good, logical_anomalies, structural_anomalies}/000.png ...
    <out>/<category>/ground_truth/{logical,structural}_anomalies/<image id>/000.png ...  (one PNG per region)
    <out>/<category>/defects_config.json

Images are RGB PNGs at the category's own, non-square size (`size` is the shorter side);
ground-truth PNGs are mode "L", 0 outside the region and the defect type's pixel value inside.

Categories (their rules hold in every normal image; a logical anomaly breaks exactly the rule it
names), one module each: `parts_box`, `bottle_label`, `screw_kit` (fixed layouts) and `screw_bag`
(a random layout: only counts and sizes are rules). Each module's docstring gives its rules and
defects; `structural` the structural defects shared by all.

Structural defects (scratch, hole, contamination, broken_part) land on every category.
About one structural image in seven carries two defects (two ground-truth PNGs).

Nuisances make normal images differ: pose jitter of the whole product (translation, rotation),
per-item jitter within the rules, lighting (gain, offset, a soft gradient), sensor noise and a
lightly textured background. Every image draws from its own generators seeded by (seed, category,
split, index), so output is byte-identical for a spec and independent of the other categories.

Modules: `spec` (SyntheticSpec, SPLITS), `drawing` (polygons, scene model, category and defect
records), one module per category, `structural`, `categories` (the table; CATEGORIES order seeds
the images: new categories go last), `render` (one image), `writer` (the LOCO tree).
"""

from __future__ import annotations

from .categories import CATEGORIES, check_categories, defects_config, rule_violations
from .drawing import Category, Defect, Item, Scene, Shape
from .render import Rendered, render_sample
from .spec import SPLITS, SyntheticSpec
from .writer import make_synthetic, write_category

__all__ = ["CATEGORIES", "SPLITS", "Category", "Defect", "Item", "Rendered", "Scene", "Shape", "SyntheticSpec",
           "check_categories", "defects_config", "make_synthetic", "render_sample", "rule_violations",
           "write_category"]
