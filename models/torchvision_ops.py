"""Import torchvision (and so timm) safely with any torch/torchvision pair.

A matched pair (any CUDA build with its torchvision, or a CPU pair) imports as it is:
nothing here touches it. Only one mismatch is repaired: on CPU-only machines the
torchvision wheel that fits torch 2.13.0 is a CUDA build whose compiled ops cannot
load, and torchvision's meta registrations then fail with
`operator torchvision::nms does not exist`. In that case, and only after the real
import failed for that reason, the two op schemas that the meta registrations look
up are declared and the import is retried. logicad never calls torchvision's
detection ops, so that is enough for everything it uses (timm models).

Declaring the schemas *before* trying the real import would abort a process with a
working torchvision ("Tried to register an operator ... multiple times"), which is
why the order matters. `logicad.models` runs `ensure_torchvision()` on import, so
`import logicad.models` followed by `import torchvision` / `import timm` works in any
process, Ray workers included.
"""

from __future__ import annotations

import importlib
import re
import sys

import torch

_SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
_MISSING_OP = re.compile(r"operator torchvision::(\w+) does not exist")
_LIBRARY: torch.library.Library | None = None
#: what ensure_torchvision() did: "real" (imported as is), "repaired" (schemas declared), or None (not run)
STATUS: str | None = None


def _has_op(name: str) -> bool:
    try:
        torch._C._dispatch_find_schema_or_throw(f"torchvision::{name}", "")
    except RuntimeError:
        return False
    return True


def _forget_partial_import() -> None:
    """A failed `import torchvision` leaves half-initialised submodules behind: drop them."""
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]


def _declare_missing_schemas() -> list[str]:
    global _LIBRARY
    missing = [name for name in _SCHEMAS if not _has_op(name)]
    if missing:
        if _LIBRARY is None:
            _LIBRARY = torch.library.Library("torchvision", "DEF")
        for name in missing:
            _LIBRARY.define(_SCHEMAS[name])
    return missing


def ensure_torchvision() -> str:
    """Import torchvision; repair only the missing-ops mismatch. Returns "real" or "repaired".

    Any other import error (torchvision not installed, a different failure) is raised
    unchanged, so it is seen for what it is.
    """
    global STATUS
    if STATUS is not None:
        return STATUS
    try:
        importlib.import_module("torchvision")
        STATUS = "real"
        return STATUS
    except RuntimeError as exc:
        if not _MISSING_OP.search(str(exc)):
            raise
    _forget_partial_import()
    _declare_missing_schemas()
    importlib.import_module("torchvision")
    STATUS = "repaired"
    return STATUS


def import_timm():
    """`timm`, imported after `ensure_torchvision()`."""
    ensure_torchvision()
    return importlib.import_module("timm")
