"""What to generate: the spec (size, images per split, seed) and MVTec LOCO's splits."""

from __future__ import annotations

from dataclasses import dataclass

SPLITS: dict[str, tuple[str, int]] = {
    "train": ("train/good", 0),
    "validation": ("validation/good", 1),
    "good": ("test/good", 2),
    "logical": ("test/logical_anomalies", 3),
    "structural": ("test/structural_anomalies", 4),
}


@dataclass
class SyntheticSpec:
    """How much to generate: image size (shorter side, pixels), images per split, seed."""

    size: int = 256
    n_train: int = 60
    n_validation: int = 16
    n_test_good: int = 20
    n_test_logical: int = 20
    n_test_structural: int = 20
    seed: int = 0

    def count(self, split: str) -> int:
        """Images of a split key of `SPLITS`."""
        key = {"good": "n_test_good", "logical": "n_test_logical", "structural": "n_test_structural"}
        return int(getattr(self, key.get(split, f"n_{split}")))

