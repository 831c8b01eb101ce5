"""Writing MVTec LOCO AD's layout: images, one ground-truth PNG per region, defects_config.json."""

from __future__ import annotations

import json
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import fields
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from .categories import CATS, check_categories, defects_config
from .render import Rendered, render_sample, tone_bank
from .spec import SPLITS, SyntheticSpec
from .structural import textures

WORKERS = 4

def check_spec(spec: SyntheticSpec) -> None:
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
    values = {d.name: d.pixel_value for d in CATS[rendered.scene.category].defects}
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
    textures(), tone_bank(category, spec.size, spec.seed)  # shared caches, filled before any thread starts

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
    names = check_categories(categories)
    check_spec(spec)
    Path(out).mkdir(parents=True, exist_ok=True)
    return [write_category(Path(out), name, spec) for name in names]
