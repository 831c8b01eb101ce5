"""Parity of an exported model with the torch model it came from.

The torch side is logicad's own scoring path (`evaluate.scoring.score_batches`, eager, on the
CPU: images resized by `resize_image` and normalised by `eval_transform`); the ONNX side is
onnxruntime on the same resized uint8 images. Per output: the max abs difference and that
difference relative to the torch output's range (max - min); for the scores also whether
both rank the images alike (pairs closer than the tolerance count as ties). Pass: both
relative differences <= tolerance, same ranking, nothing NaN.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from logicad.data import AnomalyDataset
from logicad.models.base import Method

from ..evaluate.scoring import score_batches
from .onnx_scoring import OnnxScorer

TOLERANCE = 1e-4
#: the second batching parity runs the graph with (see check_parity)
LARGE_BATCH = 32


def torch_outputs(method: Method, dataset: AnomalyDataset, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(maps N x S x S, scores N) of the torch path, in dataset order."""
    maps, scores = [], []
    for _, amap, score in score_batches(method, dataset, torch.device("cpu"), batch_size, compile=False):
        maps.append(amap)
        scores.append(score)
    return np.stack(maps).astype(np.float32), np.asarray(scores, dtype=np.float32)


def onnx_outputs(scorer: OnnxScorer, dataset: AnomalyDataset, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(maps, scores) of the exported graph on the dataset's cached resized uint8 images."""
    maps, scores = [], []
    for first in range(0, len(dataset), batch_size):
        batch_maps, batch_scores = scorer(np.stack(dataset.images[first:first + batch_size]))
        maps.append(batch_maps)
        scores.append(batch_scores)
    return np.concatenate(maps), np.concatenate(scores)


def difference(reference: np.ndarray, other: np.ndarray) -> dict[str, float]:
    """Max abs difference, the reference's range and their ratio (inf when the range is 0 and
    they differ; NaN anywhere counts as an infinite difference)."""
    spread = float(reference.max() - reference.min()) if reference.size else 0.0
    diff = np.abs(reference.astype(np.float64) - other.astype(np.float64))
    worst = float("inf") if np.isnan(diff).any() or diff.shape != reference.shape else float(diff.max(initial=0.0))
    relative = worst / spread if spread > 0 else (0.0 if worst == 0 else float("inf"))
    return {"max_abs_diff": worst, "range": spread, "max_rel_diff": relative}


def ranking_equal(reference: np.ndarray, other: np.ndarray, tie: float) -> bool:
    """No pair of images that the reference orders (by more than `tie`) comes out reversed or tied."""
    ref = reference.astype(np.float64)[:, None] - reference.astype(np.float64)[None, :]
    got = other.astype(np.float64)[:, None] - other.astype(np.float64)[None, :]
    return bool(not np.any((ref > tie) & (got <= 0)))


def compare(reference: tuple[np.ndarray, np.ndarray], exported: tuple[np.ndarray, np.ndarray],
            tolerance: float = TOLERANCE) -> dict[str, Any]:
    """The parity report of (maps, scores) from ONNX against those from torch."""
    n = int(reference[1].shape[0])
    maps = {**difference(reference[0], exported[0]), "n_images": n}
    scores = {**difference(reference[1], exported[1]), "n_images": n}
    scores["ranking_equal"] = ranking_equal(reference[1], exported[1], tolerance * scores["range"])
    maps["pass"] = maps["max_rel_diff"] <= tolerance
    scores["pass"] = scores["max_rel_diff"] <= tolerance and scores["ranking_equal"]
    return {"tolerance": tolerance, "n_images": n, "outputs": {"map": maps, "score": scores},
            "max_rel_diff": max(maps["max_rel_diff"], scores["max_rel_diff"]),
            "pass": bool(maps["pass"] and scores["pass"])}


def check_parity(method: Method, scorer: OnnxScorer, splits: dict[str, AnomalyDataset], batch_size: int = 8,
                 tolerance: float = TOLERANCE) -> dict[str, Any]:
    """The report over every image of `splits` (e.g. validation and test), pooled. The graph is
    run twice, in batches of `batch_size` and of `LARGE_BATCH` (the export traced a batch of 2:
    larger batches must hold too); the report is the worse of the two."""
    method = method.cpu().eval()
    reference = _pooled([torch_outputs(method, data, batch_size) for data in splits.values()])
    sizes = sorted({batch_size, LARGE_BATCH})
    reports = [compare(reference, _pooled([onnx_outputs(scorer, data, size) for data in splits.values()]),
                       tolerance) for size in sizes]
    report = max(reports, key=lambda r: (not r["pass"], r["max_rel_diff"]))
    import onnxruntime

    return {**report, "splits": {name: len(data) for name, data in splits.items()}, "batch_sizes": sizes,
            "onnxruntime": onnxruntime.__version__, "provider": "CPUExecutionProvider", "torch": torch.__version__}


def _pooled(outputs: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    return np.concatenate([o[0] for o in outputs]), np.concatenate([o[1] for o in outputs])
