"""The export package's errors (torch-free: the ONNX scoring path imports them)."""

from __future__ import annotations


class ExportError(RuntimeError):
    """An export that cannot be made or does not match the torch model: one line naming why.
    A parity failure carries its report as `.report`."""

    report: dict | None = None


class OnnxModelError(ValueError):
    """An exported model (or the images given to it) that cannot be used: one line naming the path."""
