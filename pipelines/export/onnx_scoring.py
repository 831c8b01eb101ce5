"""Scoring with an exported model: onnxruntime, numpy, OpenCV and PIL; no torch.

    scorer = OnnxScorer("outputs/export/dfsc-x-20261205-120000")   # folder, or its model.onnx
    maps, scores = scorer(batch)        # N x S x S x 3 uint8 -> N x S x S float32, N float32
    predict_onnx(folder, images, out)   # scores.csv + overlays, as `logicad predict` writes them

Images are decoded and resized as `contract.json` says (`images.py`); the threshold is the
contract's unless one is given.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from .contract import input_size, model_files
from .errors import OnnxModelError
from .images import decode_rgb, resize_square
from .predictions import Result, images_to_score, write_predictions


class OnnxScorer:
    """Callable uint8 batch -> (maps N x S x S, scores N) with an onnxruntime session."""

    def __init__(self, model: str | Path, providers: Sequence[str] = ("CPUExecutionProvider",),
                 threads: int | None = None) -> None:
        import onnxruntime as ort

        self.path, self.contract = model_files(model)
        self.size = input_size(self.contract)
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=list(providers))
        except Exception as exc:  # noqa: BLE001  (onnxruntime raises its own exception types for a bad file)
            raise OnnxModelError(f"{self.path}: onnxruntime cannot load it ({str(exc).splitlines()[0][:200]})") \
                from None
        self.input = self.contract["input"]["name"]
        self.outputs = [o["name"] for o in self.contract["outputs"]]

    @property
    def threshold(self) -> float | None:
        return self.contract.get("threshold")

    def __call__(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if batch.dtype != np.uint8 or batch.ndim != 4 or batch.shape[1:] != (self.size, self.size, 3):
            raise OnnxModelError(f"{self.path}: expects N x {self.size} x {self.size} x 3 uint8 images, "
                                 f"got {batch.shape} {batch.dtype}")
        maps, scores = self.session.run(self.outputs, {self.input: np.ascontiguousarray(batch)})
        return maps.reshape(len(batch), self.size, self.size), scores.reshape(len(batch))

    def load(self, path: Path) -> np.ndarray:
        """One image decoded and resized as the contract says."""
        return resize_square(decode_rgb(path), self.size)

    def score_paths(self, paths: Sequence[Path], batch_size: int = 16) -> Iterator[Result]:
        """(index, map, score) for every path, scored `batch_size` at a time."""
        start, every = time.perf_counter(), max(batch_size, 1) * 4
        for first in range(0, len(paths), batch_size):
            chunk = paths[first:first + batch_size]
            maps, scores = self(np.stack([self.load(p) for p in chunk]))
            for offset in range(len(chunk)):
                yield first + offset, maps[offset], float(scores[offset])
            done = first + len(chunk)
            if done % every < len(chunk) or done == len(paths):
                print(f"predict: {done}/{len(paths)} images ({time.perf_counter() - start:.1f}s)", flush=True)


def predict_onnx(model: str | Path, images: Path, out: Path, threshold: float | None = None,
                 batch_size: int = 16, skip_unreadable: bool = False) -> Path:
    """`logicad predict` with an exported model: every image below `images` scored by
    onnxruntime; writes what the torch path writes; returns the path of scores.csv."""
    scorer = OnnxScorer(model)
    threshold = threshold if threshold is not None else scorer.threshold
    paths, skipped = images_to_score(images, out, skip_unreadable)
    results = list(scorer.score_paths(paths, batch_size))
    return write_predictions(out, images, paths, results, threshold, decode_rgb, skipped)
