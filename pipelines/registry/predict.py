"""`logicad predict`: score a folder (or s3:// prefix) of images with a saved or registered model.

Writes `scores.csv` (path, score, verdict at the threshold recorded with the model) and a
heatmap overlay PNG per image (with its score, verdict and the colour scale), and prints how many
images were anomalous. An unreadable image stops the run (the default) or, with `skip_unreadable`,
is listed in `skipped.csv` and the rest are scored. The files are written by
`export/predictions.py` (`overlay`, `overlay_name` and `summary_line` are re-exported here), which
the ONNX scoring path shares.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from logicad.data import AnomalyDataset, Sample
from logicad.data.images import read_image_rgb

from ..evaluate.scoring import score_batches
from ..export.images import readable
from ..export.predictions import images_to_score, overlay, overlay_name, summary_line, write_predictions
from ..train.checkpoints import method_from_payload
from ..train.progress import Progress

__all__ = ["overlay", "overlay_name", "predict", "readable", "summary_line"]


def predict(payload: dict[str, Any], images: Path, out: Path, threshold: float | None = None,
            batch_size: int = 16, device: torch.device | None = None, compile: bool | None = None,
            skip_unreadable: bool = False) -> Path:
    """Score every image below `images`; returns the path of scores.csv."""
    method = method_from_payload(payload)
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    threshold = threshold if threshold is not None else payload.get("threshold")
    paths, skipped = images_to_score(images, out, skip_unreadable)
    dataset = AnomalyDataset([Sample(p, 0, "good", "good") for p in paths], method.config.image_size)
    results = list(_score(method.to(device), dataset, device, batch_size, compile))
    return write_predictions(out, images, paths, results, threshold, read_image_rgb, skipped)


def _score(method, dataset: AnomalyDataset, device: torch.device, batch_size: int, compile: bool | None = None):
    progress = Progress("predict", len(dataset), unit="image")
    for done, item in enumerate(score_batches(method, dataset, device, batch_size, compile), start=1):
        progress.update(done, {}, every=max(batch_size, 1) * 4)
        yield item
