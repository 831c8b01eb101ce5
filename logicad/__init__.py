"""logicad: logical + structural visual anomaly detection on Ray, MLflow and S3.

The code lives in the repository's top-level folders `pipelines/`, `models/` and
`data/` (the layout of DESIGN.md); they install as `logicad.pipelines`,
`logicad.models` and `logicad.data`.
"""

__version__ = "0.1.0"
