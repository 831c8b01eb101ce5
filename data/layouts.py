"""Finding the samples of a dataset split on disk: MVTec LOCO AD, MVTec AD, a plain folder.

Each scanner checks the layout and raises `DatasetError` with the path and the
expected layout before anything is decoded or trained.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .errors import DatasetError
from .images import is_image_file

DATASETS = ("mvtec_loco", "mvtec_ad", "folder")
SPLITS = ("train", "validation", "test")
LOCO_KINDS = {"good": "good", "logical_anomalies": "logical", "structural_anomalies": "structural"}
LOCO_LAYOUT = (
    "<root>/<category>/{train/good, validation/good, test/{good,logical_anomalies,structural_anomalies}, "
    "ground_truth/<kind>/<image_id>/NNN.png, defects_config.json}"
)
AD_LAYOUT = "<root>/<category>/{train/good, test/<defect>/, ground_truth/<defect>/<id>_mask.png}"
#: MVTec AD has no validation split: the last fraction of train/good is held out for it
AD_VALIDATION_FRACTION = 0.1


@dataclass(frozen=True)
class Sample:
    """One image of a split, with where its ground truth lives."""

    path: Path
    label: int  # 0 good, 1 anomalous
    kind: str  # good | logical | structural
    defect: str  # the test folder's name: good, logical_anomalies, scratch, ...
    mask_paths: tuple[Path, ...] = field(default_factory=tuple)

    @property
    def image_id(self) -> str:
        return self.path.stem


def _images_in(folder: Path, what: str) -> list[Path]:
    if not folder.is_dir():
        raise DatasetError(f"{folder}: missing {what} folder")
    images = sorted(p for p in folder.iterdir() if is_image_file(p))
    if not images:
        raise DatasetError(f"{folder}: empty {what} (no .png/.jpg/.bmp/.tif images)")
    return images


def images_below(root: Path) -> list[Path]:
    """Every image file below `root`, recursively, sorted; an error if there is none."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: image folder not found; expected a folder of images (searched recursively)")
    images = sorted(p for p in root.rglob("*") if is_image_file(p))
    if not images:
        raise DatasetError(f"{root}: no images found (.png/.jpg/.bmp/.tif), searched recursively")
    return images


def category_dir(root: Path, category: str, layout: str) -> Path:
    """`<root>/<category>`, or an error listing the categories that are there."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: dataset root not found; expected {layout}")
    path = root / category
    if not path.is_dir():
        found = sorted(p.name for p in root.iterdir() if p.is_dir() and (p / "train").is_dir())
        raise DatasetError(f"{path}: category {category!r} not found; categories under {root}: {found or 'none'}")
    return path


def list_categories(root: Path) -> list[str]:
    """Folders under `root` that have a train split (both MVTec layouts)."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: dataset root not found")
    return sorted(p.name for p in root.iterdir() if (p / "train" / "good").is_dir())


def _loco_masks(cat: Path, folder: str, image: Path) -> tuple[Path, ...]:
    gt_dir = cat / "ground_truth" / folder / image.stem
    masks = tuple(sorted(p for p in gt_dir.glob("*.png"))) if gt_dir.is_dir() else ()
    if not masks:
        raise DatasetError(f"{image}: anomalous test image without ground truth; expected masks in {gt_dir}/NNN.png")
    return masks


def _check_no_orphan_masks(gt_root: Path, image_ids: set[str], test_dir: Path) -> None:
    if not gt_root.is_dir():
        return
    for entry in sorted(gt_root.iterdir()):
        stem = entry.name if entry.is_dir() else entry.stem.removesuffix("_mask")
        if stem not in image_ids:
            raise DatasetError(f"{entry}: ground truth without an image; expected {test_dir}/{stem}.png")


def scan_mvtec_loco(root: Path, category: str, split: str) -> list[Sample]:
    """Samples of one MVTec LOCO split; the test split checks its ground truth folders."""
    cat = category_dir(root, category, LOCO_LAYOUT)
    if split in ("train", "validation"):
        return [Sample(p, 0, "good", "good") for p in _images_in(cat / split / "good", f"{split}/good split")]
    _check_split(split)
    samples: list[Sample] = []
    for folder, kind in LOCO_KINDS.items():
        images = _images_in(cat / "test" / folder, f"test/{folder} split")
        if kind != "good":
            _check_no_orphan_masks(cat / "ground_truth" / folder, {p.stem for p in images}, cat / "test" / folder)
        for image in images:
            masks = _loco_masks(cat, folder, image) if kind != "good" else ()
            samples.append(Sample(image, int(kind != "good"), kind, folder, masks))
    return samples


def scan_mvtec_ad(root: Path, category: str, split: str) -> list[Sample]:
    """Samples of one MVTec AD split; validation is the held-out tail of train/good."""
    cat = category_dir(root, category, AD_LAYOUT)
    if split in ("train", "validation"):
        images = _images_in(cat / "train" / "good", "train/good split")
        n_val = max(1, round(AD_VALIDATION_FRACTION * len(images)))
        if len(images) < 2:
            raise DatasetError(f"{cat / 'train' / 'good'}: needs at least 2 images (train + held-out validation)")
        chosen = images[:-n_val] if split == "train" else images[-n_val:]
        return [Sample(p, 0, "good", "good") for p in chosen]
    _check_split(split)
    test_dir = cat / "test"
    if not test_dir.is_dir():
        raise DatasetError(f"{test_dir}: missing test split; expected {AD_LAYOUT}")
    samples = []
    for defect_dir in sorted(p for p in test_dir.iterdir() if p.is_dir()):
        images = _images_in(defect_dir, f"test/{defect_dir.name} split")
        good = defect_dir.name == "good"
        if not good:
            _check_no_orphan_masks(cat / "ground_truth" / defect_dir.name, {p.stem for p in images}, defect_dir)
        for image in images:
            masks = () if good else (_ad_mask(cat, defect_dir.name, image),)
            samples.append(Sample(image, int(not good), "good" if good else "structural", defect_dir.name, masks))
    if not samples:
        raise DatasetError(f"{test_dir}: empty test split; expected {AD_LAYOUT}")
    return samples


def _ad_mask(cat: Path, defect: str, image: Path) -> Path:
    mask = cat / "ground_truth" / defect / f"{image.stem}_mask.png"
    if not mask.is_file():
        raise DatasetError(f"{image}: anomalous test image without ground truth; expected {mask}")
    return mask


def scan_folder(root: Path, split: str) -> list[Sample]:
    """A plain folder of normal images: training only; validation is its held-out tail."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: image folder not found; expected a folder of normal images")
    if split == "test":
        raise DatasetError(f"{root}: a plain image folder has no test split; use --dataset mvtec_loco or mvtec_ad")
    _check_split(split)
    images = _images_in(root, "image folder")
    if len(images) < 2:
        raise DatasetError(f"{root}: needs at least 2 images (train + held-out validation)")
    n_val = max(1, round(AD_VALIDATION_FRACTION * len(images)))
    chosen = images[:-n_val] if split == "train" else images[-n_val:]
    return [Sample(p, 0, "good", "good") for p in chosen]


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise DatasetError(f"unknown split {split!r}; expected one of {list(SPLITS)}")


def scan(dataset: str, root: Path, category: str | None, split: str) -> list[Sample]:
    """Samples of `split` for any supported dataset kind."""
    if dataset == "mvtec_loco":
        return scan_mvtec_loco(root, _need_category(category, dataset), split)
    if dataset == "mvtec_ad":
        return scan_mvtec_ad(root, _need_category(category, dataset), split)
    if dataset == "folder":
        return scan_folder(root, split)
    raise DatasetError(f"unknown dataset kind {dataset!r}; expected one of {list(DATASETS)}")


def _need_category(category: str | None, dataset: str) -> str:
    if not category:
        raise DatasetError(f"dataset {dataset} needs a category (--category)")
    return category
