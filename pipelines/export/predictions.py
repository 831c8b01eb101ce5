"""What `logicad predict` writes, whichever model scored: `scores.csv` (path, score, verdict),
a heatmap overlay per image, `skipped.csv` and the summary line. Torch-free, so the torch path
(`registry/predict.py`) and the ONNX path (`onnx_scoring.py`) write the very same files."""

from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from pathlib import Path

import cv2
import numpy as np
from logicad.data.errors import DatasetError

from .images import images_below, readable

#: (index into the paths, map at the model's input size, image score)
Result = tuple[int, np.ndarray, float]


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


def summary_line(verdicts: list[str], threshold: float | None, skipped: int = 0) -> str:
    """'60 images scored: 7 anomalous, 53 good (threshold 0.512)'."""
    extra = f"; {skipped} skipped (unreadable)" if skipped else ""
    if threshold is None:
        return f"{len(verdicts)} images scored, no threshold recorded with the model (give --threshold){extra}"
    bad = verdicts.count("anomalous")
    good = len(verdicts) - bad
    return f"{len(verdicts)} images scored: {bad} anomalous, {good} good (threshold {threshold:.4g}){extra}"


def overlay_name(path: Path, images: Path) -> Path:
    """`overlays/<path relative to the images folder>.png`: the folder tree is mirrored."""
    relative = path.relative_to(images) if images.is_dir() else Path(path.name)
    return relative.with_name(relative.name + ".png") if relative.suffix.lower() != ".png" else relative


def verdict(score: float, threshold: float | None) -> str:
    return "n/a" if threshold is None else ("anomalous" if score > threshold else "good")


def write_skipped(out: Path, skipped: Sequence[tuple[Path, str]]) -> None:
    """`skipped.csv` (path, reason) and one line saying so; nothing when none was skipped."""
    if not skipped:
        return
    with open(out / "skipped.csv", "w", newline="") as handle:
        csv.writer(handle).writerows([("path", "reason"), *((str(p), why) for p, why in skipped)])
    print(f"skipped {len(skipped)} unreadable image(s), listed in {out / 'skipped.csv'}", flush=True)


def images_to_score(images: Path, out: Path, skip_unreadable: bool) -> tuple[list[Path], int]:
    """(the images below `images` to score, how many were skipped): with `skip_unreadable` those
    that do not decode are left out and listed in `out/skipped.csv`; a one-line DatasetError
    when none is left. Creates `out`."""
    paths, skipped = images_below(images), []
    if skip_unreadable:
        paths, skipped = readable(paths)
    out.mkdir(parents=True, exist_ok=True)
    write_skipped(out, skipped)
    if not paths:
        raise DatasetError(f"{images}: no readable images to score")
    return paths, len(skipped)


def write_predictions(out: Path, images: Path, paths: Sequence[Path], results: Sequence[Result],
                      threshold: float | None, read_rgb: Callable[[Path], np.ndarray], skipped: int = 0) -> Path:
    """scores.csv and one overlay per result (the image at its own size, the map resized onto
    it, one colour scale for all); prints the summary line; returns the path of scores.csv."""
    low = min(float(m.min()) for _, m, _ in results)
    high = max(float(m.max()) for _, m, _ in results)
    (out / "overlays").mkdir(parents=True, exist_ok=True)
    verdicts = []
    with open(out / "scores.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "score", "verdict"])
        for index, amap, score in results:
            verdicts.append(verdict(score, threshold))
            writer.writerow([str(paths[index]), f"{score:.6f}", verdicts[-1]])
            target = out / "overlays" / overlay_name(paths[index], images)
            target.parent.mkdir(parents=True, exist_ok=True)
            caption = f"score {score:.4g}" + ("" if threshold is None else f" > {threshold:.4g}: anomalous"
                                              if score > threshold else f" <= {threshold:.4g}: good")
            cv2.imwrite(str(target), overlay(read_rgb(paths[index]), amap, low, high, caption)[..., ::-1])
    print(summary_line(verdicts, threshold, skipped), flush=True)
    return out / "scores.csv"
