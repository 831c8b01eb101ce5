"""Parameter-free references on pretrained features: what the features give with no training.

- `PatchNN`: every test patch's distance to its nearest training patch (PatchCore without the
  coreset): features at strides 8 and 16, each 3x3 average-pooled (local context), the coarse level
  resized onto the fine grid and concatenated; the map is the distance per patch (resized to the
  image), the image score its maximum. Strong on structural defects and fixed layouts, blind to a
  logical rule that no single patch breaks (items anywhere in a bag).
- `GlobalGaussian`: one descriptor per image (mean- and max-pooled channels of strides 8, 16 and
  32), a Gaussian fitted on the training images (Ledoit-Wolf shrinkage: 60-odd images, ~1000
  dimensions), the Mahalanobis distance as the image score; no map. Sees counts and global
  arrangement, not small defects.

Both read the same frozen backbone the methods' presets use (`create_backbone`, ImageNet-normalised
input). `reference_metrics` scores a category's test split with both (results-contract metrics).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from logicad.data import load_defects, load_split
from logicad.data.dataset import AnomalyDataset, sample_regions
from logicad.models.backbones import create_backbone
from logicad.pipelines.evaluate.metrics import compute_metrics
from logicad.pipelines.evaluate.scoring import to_original_size

BACKBONE = "tf_efficientnet_lite0"
WEIGHTS = "imagenet-lite0"


def _images(dataset: AnomalyDataset, batch: int = 32):
    for start in range(0, len(dataset), batch):
        yield torch.stack([dataset[i]["image"] for i in range(start, min(start + batch, len(dataset)))])


class PatchNN:
    """Nearest-neighbour patch distance on pooled features of strides 8 and 16."""

    def __init__(self, backbone: str = BACKBONE, weights: str = WEIGHTS) -> None:
        self.model, self.source = create_backbone(backbone, weights, out_indices=(2, 3))
        self.model.eval()
        self.bank: torch.Tensor | None = None

    @torch.inference_mode()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        """B x 3 x S x S -> B x C x S/8 x S/8 (both levels pooled 3x3, the coarse one resized)."""
        fine, coarse = (F.avg_pool2d(f, 3, stride=1, padding=1) for f in self.model(images))
        coarse = F.interpolate(coarse, size=fine.shape[-2:], mode="bilinear", align_corners=False)
        return torch.cat([fine, coarse], dim=1)

    def fit(self, train: AnomalyDataset) -> None:
        feats = [self.features(x) for x in _images(train)]
        self.bank = torch.cat([f.permute(0, 2, 3, 1).reshape(-1, f.shape[1]) for f in feats])

    @torch.inference_mode()
    def maps(self, images: torch.Tensor) -> torch.Tensor:
        """B x 3 x S x S -> B x 1 x S x S nearest-neighbour distances (exact, in chunks)."""
        feats = self.features(images)
        b, c, h, w = feats.shape
        queries = feats.permute(0, 2, 3, 1).reshape(-1, c)
        nearest = torch.cat([torch.cdist(q, self.bank).min(dim=1).values for q in queries.split(4096)])
        return F.interpolate(nearest.reshape(b, 1, h, w), size=images.shape[-2:], mode="bilinear",
                             align_corners=False)


class GlobalGaussian:
    """Mahalanobis distance of a pooled whole-image descriptor to the training images' Gaussian."""

    def __init__(self, backbone: str = BACKBONE, weights: str = WEIGHTS) -> None:
        self.model, self.source = create_backbone(backbone, weights, out_indices=(2, 3, 4))
        self.model.eval()

    @torch.inference_mode()
    def descriptors(self, images: torch.Tensor) -> np.ndarray:
        """B x 3 x S x S -> B x D: mean and max over positions of every channel of every level."""
        maps = self.model(images)
        return torch.cat([torch.cat([m.mean(dim=(2, 3)), m.amax(dim=(2, 3))], dim=1) for m in maps],
                         dim=1).double().numpy()

    def fit(self, train: AnomalyDataset) -> None:
        from sklearn.covariance import LedoitWolf

        self.gaussian = LedoitWolf().fit(np.concatenate([self.descriptors(x) for x in _images(train)]))

    def scores(self, images: torch.Tensor) -> np.ndarray:
        return np.sqrt(self.gaussian.mahalanobis(self.descriptors(images)))


def reference_metrics(data: Path, category: str, image_size: int = 128) -> dict[str, dict[str, Any]]:
    """{"patch_nn": metrics, "global_gaussian": metrics} on the category's test split (maps at each
    image's original size, as `evaluate` scores them), fitted on its training split."""
    train = load_split("mvtec_loco", data, category, "train", image_size)
    test = load_split("mvtec_loco", data, category, "test", image_size)
    defects = load_defects("mvtec_loco", data, category)
    regions = [sample_regions(s, defects) for s in test.samples]
    kinds = [s.kind for s in test.samples]
    out = {}
    start = time.perf_counter()
    patch = PatchNN()
    patch.fit(train)
    maps = torch.cat([patch.maps(x) for x in _images(test)])[:, 0].numpy()
    full = [to_original_size(m, test.orig_sizes[i]) for i, m in enumerate(maps)]
    out["patch_nn"] = compute_metrics([float(m.max()) for m in maps], kinds, full, regions)
    out["patch_nn"]["seconds"] = time.perf_counter() - start
    start = time.perf_counter()
    gauss = GlobalGaussian()
    gauss.fit(train)
    scores = np.concatenate([gauss.scores(x) for x in _images(test)])
    out["global_gaussian"] = compute_metrics(scores.tolist(), kinds)
    out["global_gaussian"]["seconds"] = time.perf_counter() - start
    return out
