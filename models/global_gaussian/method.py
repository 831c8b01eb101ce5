"""A Gaussian of whole-image pretrained descriptors behind the Method contract (no training).

`prepare` pools every normal training image's frozen features into one descriptor (mean and
max of every channel at several strides), gathers them from every worker (`Collective.cat`, in
dataset order) and fits a Gaussian with Ledoit-Wolf shrinkage; N workers fit what one does.
The image score is the Mahalanobis distance of the test image's descriptor. It sees counts and
arrangements that no single patch breaks (random-layout logic: a pair that must match far
apart, a number of parts) and little of a small local defect.

Map (`map_mode`, score-only): "patch" spreads the squared distance over the patches that
contribute it (scoring.patch_shares), scaled so the map's maximum is the distance; "uniform"
holds the distance everywhere. The image score is the distance: `score`/`scores_from_parts`
return it directly (evaluation, score-only sweeps, the registered model), and every map's
maximum equals it, so `image_score(anomaly_map(x))` agrees.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from ..base import Collective, Method, MethodConfig, Stage, register
from ..patchcore.network import FeatureStatisticsConfig, FrozenBackbone, fixed_shape_forward, normal_images
from . import scoring
from .gaussian import fit_gaussian


@dataclass
class GlobalGaussianConfig(FeatureStatisticsConfig):
    """Keys of the global Gaussian reference (no paper of its own: the settings measured on the
    synthetic set with ImageNet features; 128 px there, 224/256 px for MVTec-sized images)."""

    #: feature levels pooled into the descriptor
    strides: tuple[int, ...] = (8, 16, 32)
    #: per channel: "mean_max", "mean" or "max" over positions
    pooling: str = "mean_max"
    #: covariance shrinkage towards a scaled identity: < 0 Ledoit-Wolf's coefficient, else fixed in [0, 1]
    shrinkage: float = -1.0
    #: "patch" (the distance's patch-level shares) or "uniform" (the distance everywhere)
    map_mode: str = "patch"

    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {
        **MethodConfig.CHOICES,
        "pooling": tuple(scoring.POOLINGS),
        "map_mode": ("patch", "uniform"),
    }
    SCORE_ONLY: ClassVar[tuple[str, ...]] = ("map_mode",)

    def validate(self) -> None:
        super().validate()
        self.check([("shrinkage", self.shrinkage <= 1.0, "< 0 (Ledoit-Wolf) or in [0, 1]")])


@register
class GlobalGaussian(Method):
    """Mahalanobis distance of a pooled whole-image descriptor to the training images' Gaussian."""

    name = "global_gaussian"
    config_cls = GlobalGaussianConfig
    config: GlobalGaussianConfig
    trains = False

    def __init__(self, config: GlobalGaussianConfig | None = None) -> None:
        super().__init__(config or GlobalGaussianConfig())
        c = self.config
        self.backbone = FrozenBackbone(c.backbone, c.backbone_weights, c.strides)
        dims = len(scoring.POOLINGS[c.pooling]) * sum(self.backbone.channels)
        self.register_buffer("mean", torch.zeros(dims, dtype=torch.float64))
        self.register_buffer("precision", torch.zeros(dims, dims, dtype=torch.float64))
        self.register_buffer("shrinkage", torch.zeros((), dtype=torch.float64))
        self.register_buffer("fitted", torch.tensor(False))

    # --- life cycle -------------------------------------------------------------------
    def prepare(self, loader: Iterable[dict], collective: Collective = Collective()) -> None:
        """Descriptors of every worker's normal training images, in dataset order (backbone
        batches of exactly `batch_size` images, as PatchCore's); the Gaussian."""
        device = self.mean.device
        rows = [torch.zeros(0, self.mean.shape[0], dtype=torch.float64, device=device)]
        ids = [torch.zeros(0, dtype=torch.long, device=device)]
        seen = 0
        for batch in loader:
            images, index = normal_images(batch, seen)
            seen += int(batch["image"].shape[0])
            if images.shape[0]:
                levels = fixed_shape_forward(self.backbone, images, self.config.batch_size)
                rows.append(scoring.descriptors(levels, self.config.pooling).to(device))
                ids.append(index.to(device))
        descriptors, order = collective.cat(torch.cat(rows)), collective.cat(torch.cat(ids))
        if descriptors.shape[0] == 0:
            raise ValueError("GlobalGaussian.prepare got no normal training images (label 0)")
        mean, precision, shrinkage = fit_gaussian(descriptors[torch.argsort(order, stable=True)],
                                                  self.config.shrinkage)
        self.mean.copy_(mean)
        self.precision.copy_(precision)
        self.shrinkage.fill_(shrinkage)
        self.fitted.fill_(True)

    def stages(self) -> list[Stage]:
        """None: the Gaussian is a statistic of `prepare`."""
        return []

    def training_step(self, batch: dict[str, Any], stage: str = "") -> dict[str, torch.Tensor]:
        raise RuntimeError("GlobalGaussian has no training step (its Gaussian is fitted in prepare)")

    # --- scoring --------------------------------------------------------------------
    @torch.no_grad()
    def score_parts(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """{"distance": B Mahalanobis distances, "shares": B x 1 x h x w their squared patch shares}."""
        size = self.config.image_size
        if images.dim() != 4 or tuple(images.shape[1:]) != (3, size, size):
            raise ValueError(f"GlobalGaussian was built for B x 3 x {size} x {size} images (image_size {size}), "
                             f"got {tuple(images.shape)}")
        if not bool(self.fitted):
            raise RuntimeError("GlobalGaussian scoring before prepare(): the Gaussian is not fitted")
        squared, shares = scoring.patch_shares(self.backbone(images), self.config.pooling, self.mean,
                                               self.precision)
        return {"distance": squared.clamp_min(0.0).sqrt(), "shares": shares}

    @torch.no_grad()
    def maps_from_parts(self, parts: dict[str, torch.Tensor]) -> torch.Tensor:
        """B x 1 x S x S maps under the current map_mode; each map's maximum is the distance."""
        size = self.config.image_size
        if self.config.map_mode == "uniform":
            return scoring.uniform_maps(parts["distance"], size)
        return scoring.share_maps(parts["distance"], parts["shares"], size)

    @torch.no_grad()
    def anomaly_map(self, images: torch.Tensor) -> torch.Tensor:
        """B x 3 x S x S -> B x 1 x S x S (see map_mode)."""
        return self.maps_from_parts(self.score_parts(images))

    @torch.no_grad()
    def score(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B x 1 x S x S maps, B Mahalanobis distances): the image score is the distance itself,
        not a function of the map (evaluation, prediction and serving call this)."""
        return self.scores_from_parts(self.score_parts(images))

    @torch.no_grad()
    def scores_from_parts(self, parts: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(maps under the current map_mode, B distances) from cached parts (score-only sweeps)."""
        return self.maps_from_parts(parts), parts["distance"].float()

    @torch.no_grad()
    def image_score(self, maps: torch.Tensor) -> torch.Tensor:
        """B: the map's maximum, which every map_mode makes exactly the Mahalanobis distance, so
        callers that score a map (`image_score(anomaly_map(x))`) get the distance too."""
        return maps.flatten(1).amax(dim=1)

    @torch.no_grad()
    def distances(self, images: torch.Tensor) -> torch.Tensor:
        """B Mahalanobis distances (float64) of the images' descriptors."""
        return self.score_parts(images)["distance"]

    # --- state ----------------------------------------------------------------------
    def train(self, mode: bool = True) -> GlobalGaussian:
        super().train(mode)
        self.backbone.train(False)
        return self

    def describe(self) -> list[str]:
        c = self.config
        return [f"backbone {c.backbone}: {self.backbone.source}; {c.pooling} pooling of strides {list(c.strides)} "
                f"-> {self.mean.shape[0]}-dim image descriptor; Gaussian with "
                f"{'Ledoit-Wolf' if c.shrinkage < 0 else f'fixed {c.shrinkage:g}'} shrinkage; map {c.map_mode}"]

