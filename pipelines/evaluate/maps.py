"""Scoring anomaly maps from any tool, in the layout MVTec's own evaluation script reads:
`<maps>/<category>/test/<defect folder>/<image id>.tiff` (float, original resolution)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from logicad.data import DatasetError, Sample, load_defects, sample_regions, scan, check_ground_truth
from logicad.data.images import read_size

from .scoring import to_original_size
from .metrics import LocoEvaluator


def map_path(maps_root: Path, category: str, sample: Sample) -> Path:
    return Path(maps_root) / category / "test" / sample.defect / f"{sample.image_id}.tiff"


def write_map(maps_root: Path, category: str, sample: Sample, amap: np.ndarray) -> Path:
    """Write one float32 map where `evaluate-maps` (and MVTec's script) looks for it."""
    path = map_path(maps_root, category, sample)
    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, np.asarray(amap, dtype=np.float32))
    return path


def read_map(path: Path, size: tuple[int, int]) -> np.ndarray:
    """A 2-D float map at `size` (bilinear resize when a tool wrote another size)."""
    if not path.is_file():
        raise DatasetError(f"{path}: anomaly map missing; expected one float .tiff per test image")
    try:
        amap = np.asarray(tifffile.imread(path), dtype=np.float32)
    except Exception as exc:  # tifffile raises several types for a broken file
        raise DatasetError(f"{path}: unreadable anomaly map ({exc.__class__.__name__})") from None
    amap = np.squeeze(amap)
    if amap.ndim != 2:
        raise DatasetError(f"{path}: anomaly map has shape {amap.shape}; expected a 2-D float map")
    return to_original_size(amap, size)


def evaluate_maps(maps_root: Path, data_root: Path, category: str, dataset: str = "mvtec_loco") -> dict[str, Any]:
    """Results-contract metrics for the maps of one category; image score = the map's maximum."""
    samples = scan(dataset, data_root, category, "test")
    defects = load_defects(dataset, data_root, category)
    check_ground_truth(samples, defects)
    missing = [map_path(maps_root, category, s) for s in samples if not map_path(maps_root, category, s).is_file()]
    if missing:
        raise DatasetError(f"{missing[0]}: anomaly map missing ({len(missing)} of {len(samples)} missing); "
                           f"expected <maps>/{category}/test/<kind>/<id>.tiff")
    start = time.perf_counter()
    evaluator = LocoEvaluator()
    for sample in samples:
        amap = read_map(map_path(maps_root, category, sample), read_size(sample.path))
        evaluator.add(sample.kind, float(amap.max()), amap, sample_regions(sample, defects))
    metrics = evaluator.result()
    return {"dataset": dataset, "category": category, **metrics,
            "eval_seconds": round(time.perf_counter() - start, 2)}
