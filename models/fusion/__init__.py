"""Fusion of trained models (any methods, one category) into one model.

- `scoring`: per-member normalisation fitted on validation normals (z-score, EfficientAD's
  two-quantile mapping, or the empirical CDF) and the combination rules (weighted sum, max,
  rank average);
- `method`: `Fusion`, a `Method` whose members are the trained methods themselves (their
  weights and statistics are in its state dict, so a saved fusion scores alone); `norm`,
  `rule` and `weights` are score-only keys, searched without retraining any member.
"""

from .method import Fusion, FusionConfig

__all__ = ["Fusion", "FusionConfig"]
