"""Plots people look at instead of tables: heatmap grids and ROC curves (PNG)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from logicad.data.transforms import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402


def denormalise(image: np.ndarray) -> np.ndarray:
    """3 x H x W ImageNet-normalised -> H x W x 3 in [0, 1]."""
    rgb = image.transpose(1, 2, 0) * np.asarray(IMAGENET_STD) + np.asarray(IMAGENET_MEAN)
    return np.clip(rgb, 0.0, 1.0)


def heatmap_grid(
    path: Path,
    images: Sequence[np.ndarray],
    maps: Sequence[np.ndarray],
    masks: Sequence[np.ndarray],
    titles: Sequence[str],
    vmax: float | None = None,
) -> Path:
    """One row per image: the image, its heatmap overlay, its ground-truth mask.

    images: 3 x H x W normalised; maps, masks: H x W. One colour scale for all rows
    (`vmax`, default the largest map value) so rows can be compared.
    """
    rows = len(images)
    vmax = vmax if vmax is not None else max(float(np.max(m)) for m in maps)
    vmin = min(float(np.min(m)) for m in maps)
    # three equal image columns and a narrow colour-bar column at the side
    fig = plt.figure(figsize=(7.9, 2.5 * rows))
    grid = fig.add_gridspec(rows, 4, width_ratios=[1, 1, 1, 0.06], wspace=0.06, hspace=0.25)
    shown = None
    for row, (image, amap, mask, title) in enumerate(zip(images, maps, masks, titles)):
        rgb = denormalise(image)
        height, width = rgb.shape[:2]
        axes = [fig.add_subplot(grid[row, col]) for col in range(3)]
        axes[0].imshow(rgb)
        axes[0].set_title(title, fontsize=8)
        axes[1].imshow(rgb)
        # the map drawn over the image's own extent, so the column is exactly the image's size
        shown = axes[1].imshow(amap, cmap="jet", alpha=0.5, vmin=vmin, vmax=vmax,
                               extent=(-0.5, width - 0.5, height - 0.5, -0.5))
        axes[1].set_title("anomaly map", fontsize=8)
        axes[2].imshow(mask > 0, cmap="gray", vmin=0, vmax=1)
        axes[2].set_title("ground truth", fontsize=8)
        for ax in axes:
            ax.axis("off")
    fig.colorbar(shown, cax=fig.add_subplot(grid[:, 3]), label="anomaly score")
    fig.savefig(path, dpi=90, bbox_inches="tight")
    plt.close(fig)
    return path


def roc_plot(path: Path, curves: dict[str, tuple[np.ndarray, np.ndarray, float | None]], title: str = "") -> Path:
    """ROC curves, one per name: (fpr, tpr, auroc), under `title` (method, category, run)."""
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    if title:
        ax.set_title(title, fontsize=8)
    for name, (fpr, tpr, auroc) in curves.items():
        label = f"{name} (AUROC {auroc:.3f})" if auroc is not None else name
        ax.plot(fpr, tpr, label=label)
    ax.plot([0, 1], [0, 1], "k--", linewidth=0.8, label="chance")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
