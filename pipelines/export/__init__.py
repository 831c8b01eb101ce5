"""`logicad export`: a trained model as an ONNX graph, checked against torch, and scoring with it.

- `graph.py`: the exportable module (uint8 RGB batch -> map, score; normalisation inside).
- `onnx_export.py`: the export (TorchScript exporter), the folder built aside and renamed.
- `parity.py`: onnxruntime against logicad's torch scoring path on validation and test images.
- `contract.py`: contract.json (resize outside the graph, names, shapes, threshold).
- `registry_record.py`: parity tags and artifacts on a registered model version.
- torch-free, for scoring on a machine without torch: `onnx_scoring.py` (onnxruntime),
  `images.py` (decode and resize as the contract says), `predictions.py` (scores.csv and
  overlays, shared with the torch `predict`), `errors.py`.
"""
