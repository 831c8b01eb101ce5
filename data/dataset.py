"""A torch Dataset over scanned samples: decoded and resized once, then served from memory."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Sequence

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from .errors import DatasetError
from .ground_truth import DefectType, Region, binary_regions, defect_values, loco_regions
from .images import read_image_rgb, read_mask, read_size, resize_image  # noqa: F401  (resize_image: public here too)
from .layouts import Sample
from .transforms import eval_transform

KIND_IDS = {"good": 0, "logical": 1, "structural": 2}


def combined_mask(sample: Sample, size: int) -> np.ndarray:
    """All of a sample's ground-truth masks in one size x size uint8 array (nearest resize)."""
    mask = np.zeros((size, size), np.uint8)
    for path in sample.mask_paths:
        small = cv2.resize(read_mask(path), (size, size), interpolation=cv2.INTER_NEAREST)
        mask = np.maximum(mask, small)
    return mask


class AnomalyDataset(Dataset):
    """Items: image (3 x S x S float), label, kind (str), kind_id, mask (S x S long, defect values),
    orig_size (H, W), path (str), index. Decoding happens once, in the constructor, so a
    corrupt image fails before training and epochs cost no I/O.
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        image_size: int,
        transform: Callable | None = None,
        threads: int = 4,
    ) -> None:
        self.samples = list(samples)
        self.image_size = image_size
        self.transform = transform or eval_transform()
        with ThreadPoolExecutor(max_workers=threads) as pool:
            decoded = list(pool.map(self._decode, self.samples))
        self.images = [d[0] for d in decoded]
        self.orig_sizes = [d[1] for d in decoded]
        self.masks = [d[2] for d in decoded]

    def _decode(self, sample: Sample) -> tuple[np.ndarray, tuple[int, int], np.ndarray | None]:
        image = read_image_rgb(sample.path)
        mask = combined_mask(sample, self.image_size) if sample.mask_paths else None
        return resize_image(image, self.image_size), image.shape[:2], mask

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict:
        sample = self.samples[index]
        mask = self.masks[index]
        if mask is None:
            mask = np.zeros((self.image_size, self.image_size), np.uint8)
        return make_item(self.transform, self.images[index], mask, sample, self.orig_sizes[index], index)


def make_item(transform: Callable, image: np.ndarray, mask: np.ndarray, sample: Sample,
              orig_size: tuple[int, int], index: int) -> dict:
    """The item dict every dataset of the project serves (see AnomalyDataset)."""
    out = transform(image=image, mask=mask)
    return {
        "image": out["image"],
        "mask": torch.as_tensor(np.asarray(out["mask"]), dtype=torch.long),
        "label": sample.label,
        "kind": sample.kind,
        "kind_id": KIND_IDS[sample.kind],
        "orig_size": torch.tensor(orig_size),
        "path": str(sample.path),
        "index": index,
    }


def sample_regions(sample: Sample, defects: dict[int, DefectType] | None) -> list[Region]:
    """Ground-truth regions of a sample at its original size (LOCO masks need `defects`)."""
    if not sample.mask_paths:
        return []
    if defects is None:
        return [r for path in sample.mask_paths for r in binary_regions(path)]
    return loco_regions(list(sample.mask_paths), defects)


def check_ground_truth(samples: Sequence[Sample], defects: dict[int, DefectType] | None) -> None:
    """Read every mask once: corrupt masks, masks of another size than their image, and
    pixel values absent from defects_config.json fail here, before training."""
    for sample in samples:
        size = read_size(sample.path) if sample.mask_paths else None
        for path in sample.mask_paths:
            mask = read_mask(Path(path))
            if mask.shape != size:
                raise DatasetError(f"{path}: mask is {mask.shape[1]}x{mask.shape[0]} but its image {sample.path} is "
                                   f"{size[1]}x{size[0]}; expected masks at the image's size")
            if defects is not None:
                defect_values(mask, Path(path), defects)
