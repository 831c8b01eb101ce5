"""Global Gaussian: Mahalanobis distance of pooled whole-image pretrained features (registered
as `global_gaussian`).

- `gaussian`: Ledoit-Wolf shrinkage, the fitted Gaussian, the Mahalanobis distance (float64)
- `scoring`: descriptors, the distance's patch-level shares, the maps
- `method`: `GlobalGaussianConfig` and `GlobalGaussian(Method)`
"""

from .gaussian import fit_gaussian, ledoit_wolf_shrinkage, mahalanobis
from .method import GlobalGaussian, GlobalGaussianConfig

__all__ = ["GlobalGaussian", "GlobalGaussianConfig", "fit_gaussian", "ledoit_wolf_shrinkage", "mahalanobis"]
