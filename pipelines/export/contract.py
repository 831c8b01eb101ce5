"""`contract.json`: what an exported model expects and returns, written next to `model.onnx`.

Everything a consumer needs without logicad: the resize that stays outside the graph (the
function logicad uses and its interpolation), the input and output names, shapes and dtypes,
what the graph does inside, the verdict threshold recorded with the model, and where the model
came from. Torch-free: the ONNX scoring path reads it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .errors import OnnxModelError
from .images import RESIZE_RULE

FORMAT = "logicad-onnx/1"
MODEL_FILE = "model.onnx"
CONTRACT_FILE = "contract.json"
PARITY_FILE = "parity.json"


def build_contract(method: str, size: int, category: str | None, source: str, opset: int, exporter: str,
                   payload: dict[str, Any], mean: tuple[float, ...], std: tuple[float, ...]) -> dict[str, Any]:
    """The contract of a graph `image` (N x size x size x 3 uint8) -> `map`, `score`."""
    thresholds = {key: payload[key] for key in ("threshold", "threshold_fpr") if payload.get(key) is not None}
    return {
        "format": FORMAT, "method": method, "category": category, "source_model": source,
        "model_file": MODEL_FILE, "opset": opset, "exporter": exporter,
        "input": {"name": "image", "dtype": "uint8", "shape": ["N", size, size, 3], "layout": "NHWC, RGB"},
        "outputs": [
            {"name": "map", "dtype": "float32", "shape": ["N", 1, size, size],
             "meaning": "anomaly map at the input size, in the method's units (higher = more anomalous)"},
            {"name": "score", "dtype": "float32", "shape": ["N"], "meaning": "image anomaly score"}],
        "preprocessing": {
            "outside_graph": {
                "decode": "RGB uint8; grayscale, palette and RGBA converted to RGB, 16-bit scaled to 0..255 "
                          "(logicad.data.images.read_image_rgb)",
                "resize": {"rule": RESIZE_RULE, "function": "logicad.data.dataset.resize_image",
                           "size": [size, size], "library": "opencv (cv2.resize, dsize=(size, size))",
                           "interpolation": "cv2.INTER_AREA when the image's height or width is larger than "
                                            "size, else cv2.INTER_LINEAR", "keeps_aspect_ratio": False}},
            "inside_graph": {"steps": ["to float32", "divide by 255", "subtract mean, divide by std per channel",
                                       "the method's scoring"], "mean": list(mean), "std": list(std)}},
        **thresholds,
        "verdict": "anomalous when score > threshold, else good",
    }


def model_files(model: str | Path) -> tuple[Path, dict[str, Any]]:
    """(model.onnx, its contract) for an export folder or a .onnx file beside its contract.json."""
    path = Path(model)
    onnx_file = path / MODEL_FILE if path.is_dir() else path
    contract_file = onnx_file.parent / CONTRACT_FILE
    if not onnx_file.is_file():
        raise OnnxModelError(f"{model}: no {MODEL_FILE} there; expected a folder written by `logicad export` "
                             "or the .onnx file in it")
    if not contract_file.is_file():
        raise OnnxModelError(f"{onnx_file}: no {CONTRACT_FILE} beside it; expected the folder `logicad export` "
                             "wrote (the contract says how to resize and what threshold to use)")
    try:
        contract = json.loads(contract_file.read_text())
    except ValueError as exc:
        raise OnnxModelError(f"{contract_file}: not valid JSON ({exc})") from None
    if contract.get("format") != FORMAT:
        raise OnnxModelError(f"{contract_file}: format {contract.get('format')!r}, expected {FORMAT!r}")
    rule = contract["preprocessing"]["outside_graph"]["resize"]["rule"]
    if rule != RESIZE_RULE:
        raise OnnxModelError(f"{contract_file}: resize rule {rule!r} is not the one this scorer implements "
                             f"({RESIZE_RULE!r})")
    return onnx_file, contract


def is_exported_model(model: str) -> bool:
    """True for a .onnx path or a folder holding model.onnx (what `predict` routes to onnxruntime)."""
    path = Path(model)
    return model.lower().endswith(".onnx") or (path.is_dir() and (path / MODEL_FILE).is_file())


def input_size(contract: dict[str, Any]) -> int:
    return int(contract["input"]["shape"][1])
