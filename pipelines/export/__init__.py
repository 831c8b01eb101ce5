"""`logicad export`: a trained model as an ONNX graph, checked against torch, and scoring with it."""
