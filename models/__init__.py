"""Anomaly detection methods behind one contract (see `base.Method`).

Importing this package imports torchvision the safe way (see `torchvision_ops`), so
that a later `import torchvision` or `import timm` works with any torch/torchvision pair.
"""

from .torchvision_ops import ensure_torchvision

ensure_torchvision()
