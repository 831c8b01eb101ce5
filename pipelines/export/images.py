"""Decoding and resizing images for an exported model, without torch (edge scoring path).

These follow `contract.json`: the same decode as `logicad.data.images.read_image_rgb` and the
same resize as `logicad.data.dataset.resize_image` (tests/test_export.py pins both equal,
pixel for pixel). They live here because importing `logicad.data` loads torch.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import OnnxModelError

SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
#: the resize rule's name in contract.json; a contract naming another rule is refused
RESIZE_RULE = "opencv-area-when-shrinking-else-linear"


def decode_rgb(path: Path) -> np.ndarray:
    """H x W x 3 uint8 RGB (grayscale, palette and RGBA converted; 16-bit scaled to 0..255)."""
    try:
        image = Image.open(path)
        image.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise OnnxModelError(f"{path}: unreadable or corrupt image ({exc.__class__.__name__}: {exc})") from None
    if image.mode in ("I;16", "I"):
        array = np.asarray(image, dtype=np.float64)
        array = (255.0 * array / max(array.max(), 1.0)).astype(np.uint8)
        return np.repeat(array[..., None], 3, axis=2)
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


def resize_square(image: np.ndarray, size: int) -> np.ndarray:
    """`size` x `size`: cv2.INTER_AREA when either side shrinks, else cv2.INTER_LINEAR."""
    shrink = image.shape[0] > size or image.shape[1] > size
    return cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def images_below(root: Path) -> list[Path]:
    """Every image file below `root` (recursively, sorted, hidden files skipped)."""
    root = Path(root)
    if not root.is_dir():
        raise OnnxModelError(f"{root}: image folder not found; expected a folder of images (searched recursively)")
    found = sorted(p for p in root.rglob("*")
                   if p.is_file() and p.suffix.lower() in SUFFIXES and not p.name.startswith("."))
    if not found:
        raise OnnxModelError(f"{root}: no images found ({'/'.join(SUFFIXES)}), searched recursively")
    return found


def readable(paths: list[Path]) -> tuple[list[Path], list[tuple[Path, str]]]:
    """(paths that decode, [(path, why) of those that do not])."""
    good, bad = [], []
    for path in paths:
        try:
            decode_rgb(path)
            good.append(path)
        except OnnxModelError as exc:
            bad.append((path, str(exc).split(": ", 1)[-1][:200]))
    return good, bad
