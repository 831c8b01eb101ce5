"""Recording an export's parity with the registered model version it came from.

For `models:/NAME/V` (or `@ALIAS`): contract.json and parity.json become artifacts of the
version's run (under `onnx/`), and the version gets tags `onnx_parity` (pass/fail),
`onnx_max_rel_diff`, `onnx_max_abs_diff_map` and `onnx_max_abs_diff_score`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow.tracking

from ..registry.pyfunc import registered_version
from .contract import CONTRACT_FILE, PARITY_FILE

ARTIFACT_DIR = "onnx"


def parity_tags(report: dict[str, Any]) -> dict[str, str]:
    outputs = report["outputs"]
    return {"onnx_parity": "pass" if report["pass"] else "fail",
            "onnx_max_rel_diff": f"{report['max_rel_diff']:.3e}",
            "onnx_max_abs_diff_map": f"{outputs['map']['max_abs_diff']:.3e}",
            "onnx_max_abs_diff_score": f"{outputs['score']['max_abs_diff']:.3e}"}


def record_export(model: str, tracking_uri: str, report: dict[str, Any], folder: Path | None) -> str:
    """Tag the version (and, when the export was written, log its contract and parity files to the
    version's run); returns 'models:/NAME/V'."""
    client = mlflow.tracking.MlflowClient(tracking_uri)
    version = registered_version(model, tracking_uri)
    for key, value in parity_tags(report).items():
        client.set_model_version_tag(version.name, version.version, key, value)
    if folder is not None and version.run_id:
        for name in (CONTRACT_FILE, PARITY_FILE):
            client.log_artifact(version.run_id, str(folder / name), ARTIFACT_DIR)
    return f"models:/{version.name}/{version.version}"
