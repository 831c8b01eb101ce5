"""SLSG's anomaly simulation (METHODS.md, SLSG): reusable by the Tune objective and later methods.

- `masks`: rotated, binarised Perlin masks with a minimum area, foreground masks (`none`,
  `threshold`; extensible through `FOREGROUNDS`)
- `sources`: structural sources (texture folder or scikit-image's textures, the image's
  permuted patches; photometric ops) and logical-style sources (another normal image
  rotated, the image grid-shuffled or flipped)
- `blend`: I_A = I (1 - M) + (1 - beta) S M + beta I M and the opacity draws
- `view`: the `anomaly_simulation` training-set view (normal + simulated pairs), registered
  with `logicad.data.views`
"""

from .blend import blend, logical_beta, structural_beta
from .masks import FOREGROUNDS, foreground, perlin_anomaly_mask, rotated_perlin, scaled_min_area
from .sources import LOGICAL_SOURCES, load_textures, logical_source, photometric, structural_source
from .view import AnomalySimulationView, SimulationOptions, anomaly_simulation_view, color_jitter, simulate

__all__ = [
    "FOREGROUNDS", "LOGICAL_SOURCES", "AnomalySimulationView", "SimulationOptions", "anomaly_simulation_view",
    "blend", "color_jitter", "foreground", "load_textures", "logical_beta", "logical_source", "perlin_anomaly_mask",
    "photometric", "rotated_perlin", "scaled_min_area", "simulate", "structural_beta", "structural_source",
]
