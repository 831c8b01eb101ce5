"""`logicad predict`: score a folder (or s3:// prefix) of images with a saved or registered model.

Writes `scores.csv` (path, score, verdict at the threshold recorded with the model) and a
heatmap overlay PNG per image (with its score, verdict and the colour scale), and prints how many
images were anomalous. An unreadable image stops the run (the default) or, with `skip_unreadable`,
is listed in `skipped.csv` and the rest are scored.
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
from logicad.data.errors import DatasetError
from logicad.data.layouts import images_below

from ..train.checkpoints import method_from_payload
from ..evaluate.scoring import score_batches
from ..train.progress import Progress


def overlay(rgb: np.ndarray, amap: np.ndarray, low: float, high: float, caption: str = "") -> np.ndarray:
    """The image with its anomaly map as a jet heatmap on top (same colour scale for all), a
    caption strip above (score and verdict) and the colour bar with its range on the right."""
    scaled = np.clip((amap - low) / max(high - low, 1e-8), 0, 1)
    heat = cv2.applyColorMap((255 * scaled).astype(np.uint8), cv2.COLORMAP_JET)[..., ::-1]
    heat = cv2.resize(heat, (rgb.shape[1], rgb.shape[0]), interpolation=cv2.INTER_LINEAR)
    blended = (0.55 * rgb + 0.45 * heat).astype(np.uint8)
    return _with_caption(_with_colour_bar(blended, low, high), caption) if caption else blended


def _text_scale(height: int) -> float:
    return max(0.35, height / 700)


def _with_colour_bar(image: np.ndarray, low: float, high: float) -> np.ndarray:
    """`image` with a vertical jet bar (high at the top) and its two end values to the right."""
    h = image.shape[0]
    width = max(60, h // 5)
    ramp = np.linspace(255, 0, h).astype(np.uint8)[:, None].repeat(max(8, width // 5), axis=1)
    bar = cv2.applyColorMap(ramp, cv2.COLORMAP_JET)[..., ::-1]
    panel = np.full((h, width, 3), 255, np.uint8)
    panel[:, :bar.shape[1]] = bar
    scale = _text_scale(h)
    for text, y in ((f"{high:.3g}", int(14 * scale / 0.35) + 2), (f"{low:.3g}", h - 4)):
        cv2.putText(panel, text, (bar.shape[1] + 3, y), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([image, panel], axis=1)


def _with_caption(image: np.ndarray, caption: str) -> np.ndarray:
    scale = _text_scale(image.shape[0])
    strip = np.full((int(30 * scale / 0.35) + 6, image.shape[1], 3), 255, np.uint8)
    colour = (200, 0, 0) if "anomalous" in caption else (0, 0, 0)
    cv2.putText(strip, caption, (4, strip.shape[0] - 8), cv2.FONT_HERSHEY_SIMPLEX, scale, colour, 1, cv2.LINE_AA)
    return np.concatenate([strip, image], axis=0)


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
    (out / "overlays").mkdir(exist_ok=True)
    if skipped:
        with open(out / "skipped.csv", "w", newline="") as handle:
            csv.writer(handle).writerows([("path", "reason"), *((str(p), why) for p, why in skipped)])
        print(f"skipped {len(skipped)} unreadable image(s), listed in {out / 'skipped.csv'}", flush=True)
    if not paths:
        raise DatasetError(f"{images}: no readable images to score")
    dataset = AnomalyDataset([Sample(p, 0, "good", "good") for p in paths], method.config.image_size)
    results = list(_score(method.to(device), dataset, device, batch_size, compile))
    low = min(float(m.min()) for _, m, _ in results)
    high = max(float(m.max()) for _, m, _ in results)
    verdicts = []
    with open(out / "scores.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "score", "verdict"])
        for index, amap, score in results:
            verdict = "n/a" if threshold is None else ("anomalous" if score > threshold else "good")
            verdicts.append(verdict)
            writer.writerow([str(paths[index]), f"{score:.6f}", verdict])
            target = out / "overlays" / overlay_name(paths[index], images)
            target.parent.mkdir(parents=True, exist_ok=True)
            # the image at its own size and aspect, the map resized onto it
            caption = f"score {score:.4g}" + ("" if threshold is None else f" > {threshold:.4g}: anomalous"
                                              if score > threshold else f" <= {threshold:.4g}: good")
            rgb = read_image_rgb(paths[index])
            cv2.imwrite(str(target), overlay(rgb, amap, low, high, caption)[..., ::-1])
    print(summary_line(verdicts, threshold, len(skipped)), flush=True)
    return out / "scores.csv"


def summary_line(verdicts: list[str], threshold: float | None, skipped: int = 0) -> str:
    """'60 images scored: 7 anomalous, 53 good (threshold 0.512)'."""
    extra = f"; {skipped} skipped (unreadable)" if skipped else ""
    if threshold is None:
        return f"{len(verdicts)} images scored, no threshold recorded with the model (give --threshold){extra}"
    bad = verdicts.count("anomalous")
    return f"{len(verdicts)} images scored: {bad} anomalous, {len(verdicts) - bad} good (threshold {threshold:.4g}){extra}"


def overlay_name(path: Path, images: Path) -> Path:
    """`overlays/<path relative to the images folder>.png`: the folder tree is mirrored."""
    relative = path.relative_to(images) if images.is_dir() else Path(path.name)
    return relative.with_name(relative.name + ".png") if relative.suffix.lower() != ".png" else relative


def _score(method, dataset: AnomalyDataset, device: torch.device, batch_size: int, compile: bool | None = None):
    progress = Progress("predict", len(dataset), unit="image")
    for done, item in enumerate(score_batches(method, dataset, device, batch_size, compile), start=1):
        progress.update(done, {}, every=max(batch_size, 1) * 4)
        yield item
