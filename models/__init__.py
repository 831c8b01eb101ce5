"""Anomaly detection methods behind one contract (see `base.Method`)."""

from . import torchvision_ops  # noqa: F401  (must run before anything imports timm)
