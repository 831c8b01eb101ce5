"""Scoring a trained method on a test split: LOCO metrics at original size, timing, plots, and the
pass/fail decision (its threshold and the confusion counts at it, `thresholds.py`)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from logicad.data import AnomalyDataset, load_defects, load_split, sample_regions
from logicad.models.base import Method

from .compiled import make_scorer
from .metrics import LocoEvaluator, roc_curve
from .plots import heatmap_grid, roc_plot
from .thresholds import DEFAULT_FPR, Threshold, check_fpr, confusion, fpr_threshold

HEATMAP_FILE = "heatmaps.png"
ROC_FILE = "roc_curves.png"


def score_batches(method: Method, dataset: AnomalyDataset, device: torch.device, batch_size: int = 16,
                  compile: bool | None = None):
    """Yield (dataset index, map at input size as numpy, image score) for every item.

    `compile`: the compiled scoring path (static batch buckets, checked against eager on
    first use; see `compiled.py`); None = on for CUDA, off elsewhere."""
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    method.eval()
    scorer = make_scorer(method, device, compile)
    for batch in loader:
        maps, scores = scorer(batch["image"].to(device))
        for i, index in enumerate(batch["index"].tolist()):
            yield index, maps[i, 0].float().cpu().numpy(), float(scores[i])


def to_original_size(amap: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of an H x W map to (height, width) of the original image."""
    if amap.shape == tuple(size):
        return amap
    tensor = torch.from_numpy(amap)[None, None]
    return F.interpolate(tensor, size=tuple(size), mode="bilinear", align_corners=False)[0, 0].numpy()


def infer_ms_per_image(method: Method, dataset: AnomalyDataset, device: torch.device, repeats: int = 10,
                       compile: bool | None = None) -> float:
    """Mean latency at batch 1 (map + score) of the scoring path in use, after its warm-up."""
    image = dataset[0]["image"][None].to(device)
    scorer = make_scorer(method, device, compile)
    scorer.warmup((1,))
    with torch.inference_mode():
        for _ in range(2):
            scorer(image)
        _sync(device)
        start = time.perf_counter()
        for _ in range(repeats):
            scorer(image)
        _sync(device)
    return 1000.0 * (time.perf_counter() - start) / repeats


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def validation_threshold(method: Method, dataset: str, root: str | Path, category: str | None,
                         device: torch.device, batch_size: int = 16, compile: bool | None = None,
                         fpr: float = DEFAULT_FPR) -> Threshold:
    """The verdict threshold recorded with a model: chosen on the normal validation images so
    that at most `fpr` of them score above it (`thresholds.fpr_threshold`)."""
    check_fpr(fpr)
    val_set = load_split(dataset, root, category, "validation", method.config.image_size)
    return fpr_threshold((score for _, _, score in score_batches(method, val_set, device, batch_size, compile)), fpr)


def decision_metrics(method: Method, dataset: str, root: str | Path, category: str | None, device: torch.device,
                     scores: list[float], kinds: list[str], batch_size: int = 16, compile: bool | None = None,
                     fpr: float = DEFAULT_FPR, threshold: float | None = None,
                     threshold_fpr: float | None = None) -> dict[str, Any]:
    """The threshold (`threshold` as recorded with a model, else fitted on validation normals
    for `fpr`) and the test split's confusion counts at it."""
    if threshold is None:
        fitted = {**validation_threshold(method, dataset, root, category, device, batch_size, compile, fpr).metrics(),
                  "threshold_source": "validation"}
    else:
        fitted = {"threshold": float(threshold), "threshold_fpr": threshold_fpr, "threshold_source": "recorded"}
    return {**fitted, **confusion(scores, kinds, fitted["threshold"])}


def evaluate_method(
    method: Method,
    dataset: str,
    root: str | Path,
    category: str | None,
    device: torch.device,
    batch_size: int = 16,
    compile: bool | None = None,
    fpr: float = DEFAULT_FPR,
    threshold: float | None = None,
    threshold_fpr: float | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Metrics of the results contract (without identity fields) and what plots need, with the
    decision's threshold and its confusion counts on the test split (`decision_metrics`:
    `threshold` is the one recorded with a model, if any, else one is fitted for `fpr`)."""
    check_fpr(fpr)
    test_set = load_split(dataset, root, category, "test", method.config.image_size)
    defects = load_defects(dataset, root, category)
    evaluator = LocoEvaluator()
    small_maps: dict[int, np.ndarray] = {}
    for index, amap, score in score_batches(method, test_set, device, batch_size, compile):
        sample = test_set.samples[index]
        regions = sample_regions(sample, defects)
        evaluator.add(sample.kind, score, to_original_size(amap, test_set.orig_sizes[index]), regions)
        small_maps[index] = amap
    metrics = evaluator.result()
    metrics["infer_ms_per_image"] = infer_ms_per_image(method, test_set, device, compile=compile)
    metrics.update(decision_metrics(method, dataset, root, category, device, evaluator.scores, evaluator.kinds,
                                    batch_size, compile, fpr, threshold, threshold_fpr))
    return metrics, {"test_set": test_set, "maps": small_maps, "scores": evaluator.scores, "kinds": evaluator.kinds,
                     "title": f"{method.name} on {category or dataset}"}


def write_plots(out_dir: Path, details: dict[str, Any], metrics: dict[str, Any], rows_per_kind: int = 3) -> list[Path]:
    """Heatmap grid (a few images of each kind) and ROC curves for logical and structural."""
    test_set: AnomalyDataset = details["test_set"]
    kinds, scores = np.asarray(details["kinds"]), np.asarray(details["scores"])
    chosen = [i for kind in ("good", "logical", "structural") for i in np.flatnonzero(kinds == kind)[:rows_per_kind]]
    items = [test_set[int(i)] for i in chosen]
    grid = heatmap_grid(
        out_dir / HEATMAP_FILE,
        [item["image"].numpy() for item in items],
        [details["maps"][int(i)] for i in chosen],
        [item["mask"].numpy() for item in items],
        [f"{item['kind']} {Path(item['path']).name} score {scores[int(i)]:.3f}" for i, item in zip(chosen, items)],
    )
    curves = {}
    for kind in ("logical", "structural"):
        keep = (kinds == "good") | (kinds == kind)
        if (kinds == kind).any() and (kinds == "good").any():
            fpr, tpr = roc_curve(scores[keep], (kinds[keep] == kind).astype(int))
            curves[f"good vs {kind}"] = (fpr, tpr, metrics.get(f"image_auroc_{kind}"))
    paths = [grid]
    if curves:
        paths.append(roc_plot(out_dir / ROC_FILE, curves, details.get("title", "")))
    return paths


def evaluate_to_dir(
    method: Method,
    dataset: str,
    root: str | Path,
    category: str | None,
    out_dir: Path,
    device: torch.device,
    batch_size: int = 16,
    compile: bool | None = None,
    label: str = "",
    fpr: float = DEFAULT_FPR,
    threshold: float | None = None,
    threshold_fpr: float | None = None,
) -> dict[str, Any]:
    """Evaluate and write metrics.json + plots into `out_dir`; returns the metrics. `label` (e.g.
    the model's URI or run) goes into the plots' titles; `fpr`, `threshold`, `threshold_fpr` as in
    `evaluate_method` (pass a model's recorded threshold to report the confusion at it)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics, details = evaluate_method(method, dataset, root, category, device, batch_size, compile, fpr,
                                       threshold, threshold_fpr)
    if label:
        details["title"] = f"{details['title']}\n{label}"
    write_plots(out_dir, details, metrics)
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics
