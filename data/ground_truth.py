"""Ground truth of MVTec LOCO-style datasets: defect configs and per-defect regions.

MVTec LOCO stores one PNG per defect region under
`ground_truth/<kind>/<image_id>/NNN.png`; the PNG's non-zero pixel value names the
defect type in `defects_config.json`, which also gives the saturation threshold used
by sPRO. MVTec AD stores one binary `<id>_mask.png` per image (one region, no
saturation: the whole region must be covered).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import DatasetError
from .images import read_mask


@dataclass(frozen=True)
class DefectType:
    """One entry of defects_config.json."""

    name: str
    pixel_value: int
    saturation_threshold: float
    relative_saturation: bool

    def saturation_area(self, region_area: int) -> float:
        """Area of the region that counts as fully found (sPRO saturates there)."""
        if self.relative_saturation:
            return self.saturation_threshold * region_area
        return float(min(self.saturation_threshold, region_area))


@dataclass
class Region:
    """One ground-truth defect region at the image's original size."""

    mask: np.ndarray  # bool, H x W
    defect_name: str
    saturation_area: float


def load_defects_config(category_dir: Path) -> dict[int, DefectType]:
    """Read `<category>/defects_config.json` into pixel value -> defect type."""
    path = Path(category_dir) / "defects_config.json"
    if not path.is_file():
        raise DatasetError(f"{path}: missing; expected MVTec LOCO's defects_config.json (a list of defect types)")
    try:
        entries = json.loads(path.read_text())
        defects = [
            DefectType(
                name=str(e["defect_name"]),
                pixel_value=int(e["pixel_value"]),
                saturation_threshold=float(e["saturation_threshold"]),
                relative_saturation=bool(e["relative_saturation"]),
            )
            for e in entries
        ]
    except (ValueError, KeyError, TypeError) as exc:
        raise DatasetError(
            f"{path}: not a valid defects config ({exc}); expected a JSON list of objects with "
            "defect_name, pixel_value, saturation_threshold, relative_saturation"
        ) from None
    return {d.pixel_value: d for d in defects}


def defect_values(mask: np.ndarray, path: Path, defects: dict[int, DefectType]) -> list[int]:
    """The mask's non-zero values; each must name a defect type of defects_config.json."""
    values = [int(v) for v in np.unique(mask) if v != 0]
    unknown = [v for v in values if v not in defects]
    if unknown:
        raise DatasetError(
            f"{path}: pixel values {unknown} are not in defects_config.json (known pixel values: {sorted(defects)})"
        )
    return values


def loco_regions(mask_paths: list[Path], defects: dict[int, DefectType]) -> list[Region]:
    """One region per ground-truth PNG (an empty PNG marks none)."""
    regions = []
    for path in mask_paths:
        mask = read_mask(path)
        for value in defect_values(mask, path, defects):
            region = mask == value
            defect = defects[int(value)]
            regions.append(Region(region, defect.name, defect.saturation_area(int(region.sum()))))
    return regions


def binary_regions(mask_path: Path) -> list[Region]:
    """MVTec AD: the whole mask is one region that must be covered completely."""
    mask = read_mask(mask_path) > 0
    if not mask.any():
        return []
    return [Region(mask, "defect", float(mask.sum()))]
