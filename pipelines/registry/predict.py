"""`logicad predict`: score a folder (or s3:// prefix) of images with a saved or registered model.

Writes `scores.csv` (path, score, verdict at the threshold recorded with the model) and a
heatmap overlay PNG per image.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from logicad.data import AnomalyDataset, Sample
from logicad.data.images import read_image_rgb
from logicad.data.layouts import images_below

from ..train.checkpoints import method_from_payload
from ..evaluate.scoring import score_batches
from ..train.progress import Progress


def overlay(rgb: np.ndarray, amap: np.ndarray, low: float, high: float) -> np.ndarray:
    """The image with its anomaly map as a jet heatmap on top (same colour scale for all)."""
    scaled = np.clip((amap - low) / max(high - low, 1e-8), 0, 1)
    heat = cv2.applyColorMap((255 * scaled).astype(np.uint8), cv2.COLORMAP_JET)[..., ::-1]
    heat = cv2.resize(heat, (rgb.shape[1], rgb.shape[0]), interpolation=cv2.INTER_LINEAR)
    return (0.55 * rgb + 0.45 * heat).astype(np.uint8)


def predict(payload: dict[str, Any], images: Path, out: Path, threshold: float | None = None,
            batch_size: int = 16, device: torch.device | None = None, compile: bool | None = None) -> Path:
    """Score every image below `images`; returns the path of scores.csv."""
    method = method_from_payload(payload)
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    threshold = threshold if threshold is not None else payload.get("threshold")
    paths = images_below(images)
    dataset = AnomalyDataset([Sample(p, 0, "good", "good") for p in paths], method.config.image_size)
    out.mkdir(parents=True, exist_ok=True)
    (out / "overlays").mkdir(exist_ok=True)
    results = list(_score(method.to(device), dataset, device, batch_size, compile))
    low = min(float(m.min()) for _, m, _ in results)
    high = max(float(m.max()) for _, m, _ in results)
    with open(out / "scores.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "score", "verdict"])
        for index, amap, score in results:
            verdict = "n/a" if threshold is None else ("anomalous" if score > threshold else "good")
            writer.writerow([str(paths[index]), f"{score:.6f}", verdict])
            target = out / "overlays" / overlay_name(paths[index], images)
            target.parent.mkdir(parents=True, exist_ok=True)
            # the image at its own size and aspect, the map resized onto it
            rgb = read_image_rgb(paths[index])
            cv2.imwrite(str(target), overlay(rgb, amap, low, high)[..., ::-1])
    return out / "scores.csv"


def overlay_name(path: Path, images: Path) -> Path:
    """`overlays/<path relative to the images folder>.png`: the folder tree is mirrored."""
    relative = path.relative_to(images) if images.is_dir() else Path(path.name)
    return relative.with_name(relative.name + ".png") if relative.suffix.lower() != ".png" else relative


def _score(method, dataset: AnomalyDataset, device: torch.device, batch_size: int, compile: bool | None = None):
    progress = Progress("predict", len(dataset))
    for done, item in enumerate(score_batches(method, dataset, device, batch_size, compile), start=1):
        progress.update(done, {}, every=max(batch_size, 1) * 4)
        yield item
