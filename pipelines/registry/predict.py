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
from logicad.data.errors import DatasetError
from logicad.data.images import read_image_rgb
from logicad.data.layouts import images_below

from ..evaluate.scoring import score_batches
from ..export.predictions import (
    overlay,
    overlay_name,
    summary_line,
    write_predictions,
    write_skipped,
)
from ..train.checkpoints import method_from_payload
from ..train.progress import Progress

__all__ = ["overlay", "overlay_name", "predict", "readable", "summary_line"]


def readable(paths: list[Path]) -> tuple[list[Path], list[tuple[Path, str]]]:
    """(paths that decode, [(path, why) of those that do not])."""
    good, bad = [], []
    for path in paths:
        try:
            read_image_rgb(path)
            good.append(path)
        except Exception as exc:  # PIL and cv2 raise many types for truncated or foreign files
            bad.append((path, f"{exc.__class__.__name__}: {str(exc)[:160]}"))
    return good, bad


def predict(payload: dict[str, Any], images: Path, out: Path, threshold: float | None = None,
            batch_size: int = 16, device: torch.device | None = None, compile: bool | None = None,
            skip_unreadable: bool = False) -> Path:
    """Score every image below `images`; returns the path of scores.csv."""
    method = method_from_payload(payload)
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    threshold = threshold if threshold is not None else payload.get("threshold")
    paths = images_below(images)
    skipped: list[tuple[Path, str]] = []
    if skip_unreadable:
        paths, skipped = readable(paths)
    out.mkdir(parents=True, exist_ok=True)
    write_skipped(out, skipped)
    if not paths:
        raise DatasetError(f"{images}: no readable images to score")
    dataset = AnomalyDataset([Sample(p, 0, "good", "good") for p in paths], method.config.image_size)
    results = list(_score(method.to(device), dataset, device, batch_size, compile))
    return write_predictions(out, images, paths, results, threshold, read_image_rgb, len(skipped))


def _score(method, dataset: AnomalyDataset, device: torch.device, batch_size: int, compile: bool | None = None):
    progress = Progress("predict", len(dataset), unit="image")
    for done, item in enumerate(score_batches(method, dataset, device, batch_size, compile), start=1):
        progress.update(done, {}, every=max(batch_size, 1) * 4)
        yield item
