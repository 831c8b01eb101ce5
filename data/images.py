"""Decoding images and masks: always RGB uint8 or 2-D uint8, with the path in every error."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import DatasetError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def is_image_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def _open(path: Path) -> Image.Image:
    try:
        image = Image.open(path)
        image.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DatasetError(f"{path}: unreadable or corrupt image ({exc.__class__.__name__}: {exc})") from None
    return image


def read_image_rgb(path: Path) -> np.ndarray:
    """H x W x 3 uint8; grayscale, palette and RGBA images are converted to RGB."""
    image = _open(Path(path))
    if image.mode == "I;16" or image.mode == "I":
        array = np.asarray(image, dtype=np.float64)
        array = (255.0 * array / max(array.max(), 1.0)).astype(np.uint8)
        return np.repeat(array[..., None], 3, axis=2)
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
    """Square `size` x `size` (area filter when shrinking, as detectors expect; else bilinear).
    The exported models' contract names this rule (`pipelines/export/images.RESIZE_RULE`)."""
    shrink = image.shape[0] > size or image.shape[1] > size
    return cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def read_mask(path: Path) -> np.ndarray:
    """H x W uint8 with the mask's raw values (defect pixel values, or 0/255)."""
    image = _open(Path(path))
    if image.mode not in ("L", "1", "P"):
        image = image.convert("L")
    return np.asarray(image, dtype=np.uint8)


def read_size(path: Path) -> tuple[int, int]:
    """(height, width) from the header alone."""
    try:
        with Image.open(path) as image:
            width, height = image.size
    except (UnidentifiedImageError, OSError) as exc:
        raise DatasetError(f"{path}: unreadable or corrupt image ({exc})") from None
    return height, width
