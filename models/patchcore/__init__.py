"""PatchCore: a coreset memory bank of pretrained patch features (registered as `patchcore`).

- `network`: the frozen pretrained backbone (shared with `global_gaussian`), local aggregation
- `coreset`: seeded random projection and greedy k-center selection
- `search`: exact, batched nearest-neighbour search (faiss optional)
- `method`: `PatchCoreConfig` and `PatchCore(Method)`
"""

from .coreset import greedy_coreset, random_projection
from .method import PatchCore, PatchCoreConfig
from .search import nearest

__all__ = ["PatchCore", "PatchCoreConfig", "greedy_coreset", "nearest", "random_projection"]
