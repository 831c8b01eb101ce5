"""Datasets: MVTec LOCO AD, MVTec AD and plain folders, plus the synthetic LOCO generator.

`load_split` is the entry point: it scans and checks a split, then decodes and
resizes its images once into an in-memory `AnomalyDataset`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from .errors import DatasetError
from .ground_truth import DefectType, Region, load_defects_config
from .layouts import DATASETS, Sample, category_dir, list_categories, scan

if TYPE_CHECKING:
    from .dataset import AnomalyDataset, check_ground_truth, sample_regions

#: names served by `dataset.py`, which imports torch: loaded on first use, so the decoding and
#: layout modules (`images`, `layouts`) serve the torch-free ONNX scoring path
_TORCH_NAMES = ("AnomalyDataset", "check_ground_truth", "sample_regions")


def __getattr__(name: str) -> Any:
    if name in _TORCH_NAMES:
        from . import dataset

        return getattr(dataset, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "AnomalyDataset", "DATASETS", "DatasetError", "DefectType", "Region", "Sample",
    "check_ground_truth", "list_categories", "load_defects", "load_split", "sample_regions", "scan",
]


def load_defects(dataset: str, root: Path, category: str | None) -> dict[int, DefectType] | None:
    """MVTec LOCO's defect types (pixel value -> type); None for binary-mask datasets."""
    if dataset != "mvtec_loco":
        return None
    return load_defects_config(category_dir(Path(root), category or "", "MVTec LOCO"))


def load_split(
    dataset: str,
    root: Path,
    category: str | None,
    split: str,
    image_size: int,
    transform: Callable | None = None,
) -> AnomalyDataset:
    """Scan, check (ground truth included) and decode one split."""
    from .dataset import AnomalyDataset, check_ground_truth

    samples = scan(dataset, Path(root), category, split)
    if split == "test":
        check_ground_truth(samples, load_defects(dataset, root, category))
    return AnomalyDataset(samples, image_size, transform)
