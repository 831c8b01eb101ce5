"""Make `import torchvision` (and so `import timm`) work with a torchvision wheel
whose compiled ops do not match the installed torch.

On CPU-only machines the only torchvision wheel that fits torch 2.13.0 is a CUDA
build: its C++ ops cannot load and torchvision's meta registrations then fail with
`operator torchvision::nms does not exist`. Declaring the two op schemas that the
meta registrations look up is enough for everything logicad uses (timm models;
logicad never calls torchvision's detection ops). Where the ops load (matching
builds on GPU clusters) this does nothing. Every process that may import timm
imports this module first: `logicad.models` does it on import.
"""

from __future__ import annotations

import torch

_SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
_LIBRARY: torch.library.Library | None = None


def _has_op(name: str) -> bool:
    try:
        torch._C._dispatch_find_schema_or_throw(f"torchvision::{name}", "")
    except RuntimeError:
        return False
    return True


def ensure_torchvision_ops() -> list[str]:
    """Declare the torchvision op schemas that are missing; returns their names."""
    global _LIBRARY
    missing = [name for name in _SCHEMAS if not _has_op(name)]
    if missing:
        if _LIBRARY is None:
            _LIBRARY = torch.library.Library("torchvision", "DEF")
        for name in missing:
            _LIBRARY.define(_SCHEMAS[name])
    return missing


ensure_torchvision_ops()
