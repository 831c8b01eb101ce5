"""A registered model must score alone: loaded by MLflow in a fresh process, it gives the
scores the trained model gives here (shared by every method's tests)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch


def assert_registered_model_scores_alike(model_uri: str, model_dir: Path, tracking_db: Path, data: Path,
                                         category: str, count: int = 4) -> None:
    from logicad.data import AnomalyDataset, scan
    from logicad.pipelines.evaluate.scoring import score_batches
    from logicad.pipelines.registry.pyfunc import load_method_any

    samples = scan("mvtec_loco", data, category, "test")[:count]
    method = load_method_any(str(model_dir))
    size = method.config.image_size
    expected = [s for _, _, s in score_batches(method, AnomalyDataset(samples, size), torch.device("cpu"))]
    code = (
        "import json, mlflow.pyfunc, pandas as pd\n"
        f"model = mlflow.pyfunc.load_model({model_uri!r})\n"
        f"frame = pd.DataFrame({{'path': {[str(s.path) for s in samples]!r}}})\n"
        "out = model.predict(frame, params={'return_map': True})\n"
        "shape = [len(out['map']), len(out['map'][0]), len(out['map'][0][0])]\n"
        "print(json.dumps({'scores': out['score'].tolist(), 'map_shape': shape}))\n"
    )
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tracking_db}"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["map_shape"] == [count, size, size]
    assert out["scores"] == pytest.approx(expected, rel=1e-5, abs=1e-6)
