"""FOD: focus the discrepancy, intra- and inter-correlation learning (registered as `fod`).

- `network`: frozen average-pooled backbone, token/reference projections with the fixed
  2-D sin-cos encoding, one I2Correlation transformer per level, learnable sigma targets
- `loss`: reconstruction, symmetric KL, entropy, the two minimax losses
- `scoring`: per-image weighted token scores, level fusion, Gaussian-smoothed image score
- `method`: `FODConfig` and `FOD(Method)`
"""

from .method import FOD, FODConfig
from .network import LevelTransformer, PooledBackbone, sigma_bound, target_correlation

__all__ = ["FOD", "FODConfig", "LevelTransformer", "PooledBackbone", "sigma_bound", "target_correlation"]
