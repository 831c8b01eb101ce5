"""Decoding and resizing images for an exported model, without torch (edge scoring path).

`contract.json` names the rule: the decode of `logicad.data.images.read_image_rgb` and the
resize of `logicad.data.images.resize_image`, which this path calls itself (`logicad.data`
loads torch only for its datasets, on first use).
"""

from __future__ import annotations

from pathlib import Path

from logicad.data.images import read_image_rgb as decode_rgb
from logicad.data.images import resize_image as resize_square
from logicad.data.layouts import images_below

__all__ = ["RESIZE_RULE", "decode_rgb", "images_below", "readable", "resize_square"]

#: the resize rule's name in contract.json; a contract naming another rule is refused
RESIZE_RULE = "opencv-area-when-shrinking-else-linear"


def readable(paths: list[Path]) -> tuple[list[Path], list[tuple[Path, str]]]:
    """(paths that decode, [(path, why) of those that do not])."""
    good, bad = [], []
    for path in paths:
        try:
            decode_rgb(path)
            good.append(path)
        except Exception as exc:  # PIL and cv2 raise many types for truncated or foreign files
            bad.append((path, f"{exc.__class__.__name__}: {str(exc)[:160]}"))
    return good, bad
