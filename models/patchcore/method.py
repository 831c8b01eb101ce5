"""PatchCore (Roth et al. 2022) behind the Method contract: no training, one pass of statistics.

`prepare` reads the normal training images once: locally aggregated patch features of a
frozen pretrained backbone are gathered from every worker (`Collective.cat`, put back in
dataset order), and the greedy coreset is computed once on that whole bank, so N workers
build exactly the bank one process builds (a per-rank bank would keep 1/N of the patches).
Scoring: every test patch's distance to its nearest bank row is the map (bilinearly resized
to the image), the map's maximum the image score.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from ..base import Collective, Method, MethodConfig, Stage, register
from .coreset import coreset_size, greedy_coreset, random_projection
from .network import (FeatureStatisticsConfig, FrozenBackbone, aggregate, fixed_shape_forward, normal_images,
                      patch_rows)
from .search import faiss_available, nearest


@dataclass
class PatchCoreConfig(FeatureStatisticsConfig):
    """PatchCore's keys. The paper's settings where they carry over: strides 8 and 16 (wide
    ResNet-50's layer2 + layer3), 3 x 3 neighbourhood, coreset 1-10 % (10 % here), projection to
    128 dims for the coreset; its images are 256 px centre-cropped to 224 (128 here: the
    synthetic set's measured setting, and the bank grows with the square of the size).
    `strides` are aggregated onto the finest one."""

    #: neighbourhood of the local average (the paper's patch size p = 3)
    pool_size: int = 3
    #: fraction of the patch features kept by the greedy coreset (1.0 keeps the whole bank)
    coreset_ratio: float = 0.1
    #: dimensions of the coreset's random projection (0: none)
    projection_dim: int = 128
    #: "torch" (exact, batched) or "faiss" (exact IndexFlatL2; needs faiss installed)
    search_backend: str = "torch"

    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {
        **MethodConfig.CHOICES,
        "search_backend": ("torch", "faiss"),
    }

    def validate(self) -> None:
        super().validate()
        self.check([
            ("pool_size", self.pool_size >= 1 and self.pool_size % 2 == 1, "an odd number >= 1"),
            ("coreset_ratio", 0.0 < self.coreset_ratio <= 1.0, "in (0, 1]"),
            ("projection_dim", self.projection_dim >= 0, ">= 0"),
            ("search_backend", self.search_backend != "faiss" or faiss_available(),
             "'torch' here: faiss is not installed"),
        ])


@register
class PatchCore(Method):
    """Memory bank of aggregated patch features (greedy coreset); nearest-neighbour distance map."""

    name = "patchcore"
    config_cls = PatchCoreConfig
    config: PatchCoreConfig
    trains = False

    def __init__(self, config: PatchCoreConfig | None = None) -> None:
        super().__init__(config or PatchCoreConfig())
        c = self.config
        self.backbone = FrozenBackbone(c.backbone, c.backbone_weights, c.strides)
        self.channels = sum(self.backbone.channels)
        self.grid = c.image_size // c.strides[0]
        #: M x C coreset rows; its size is known only after `prepare` (load_state_dict resizes it)
        self.register_buffer("memory_bank", torch.zeros(0, self.channels))
        #: patches the bank was subsampled from (before the coreset)
        self.register_buffer("bank_source_rows", torch.zeros((), dtype=torch.long))

    # --- features ---------------------------------------------------------------------
    def patch_features(self, images: torch.Tensor) -> torch.Tensor:
        """B x 3 x S x S -> B x C x h x w aggregated patch features (h = S / strides[0])."""
        return aggregate(self.backbone(images), self.config.pool_size)

    # --- life cycle -------------------------------------------------------------------
    def prepare(self, loader: Iterable[dict], collective: Collective = Collective()) -> None:
        """The memory bank: patch features of every normal training image of every worker, in
        dataset order (batch["index"]), then the greedy coreset, computed once on all of it. The
        backbone sees batches of exactly `batch_size` images, so the features do not depend on
        how the workers' shards were batched."""
        c = self.config
        device = self.memory_bank.device
        rows, ids = [torch.zeros(0, self.grid * self.grid, self.channels, device=device)], \
            [torch.zeros(0, dtype=torch.long, device=device)]
        seen = 0
        for batch in loader:
            images, index = normal_images(batch, seen)
            seen += int(batch["image"].shape[0])
            if images.shape[0]:
                levels = fixed_shape_forward(self.backbone, images, c.batch_size)
                rows.append(patch_rows(aggregate(levels, c.pool_size)).to(device))
                ids.append(index.to(device))
        features, order = collective.cat(torch.cat(rows)), collective.cat(torch.cat(ids))
        if features.shape[0] == 0:
            raise ValueError("PatchCore.prepare got no normal training images (label 0)")
        bank = features[torch.argsort(order, stable=True)].reshape(-1, self.channels)
        keep = greedy_coreset(random_projection(bank, c.projection_dim, c.seed),
                              coreset_size(bank.shape[0], c.coreset_ratio), c.seed)
        self.memory_bank = bank[keep].contiguous()
        self.bank_source_rows.fill_(bank.shape[0])

    def stages(self) -> list[Stage]:
        """None: the bank is a statistic of `prepare`."""
        return []

    def training_step(self, batch: dict[str, Any], stage: str = "") -> dict[str, torch.Tensor]:
        raise RuntimeError("PatchCore has no training step (its memory bank is built in prepare)")

    # --- scoring --------------------------------------------------------------------
    @torch.no_grad()
    def patch_scores(self, images: torch.Tensor) -> torch.Tensor:
        """B x 3 x S x S -> B x 1 x h x w distance of each patch to its nearest bank row."""
        size = self.config.image_size
        if images.dim() != 4 or tuple(images.shape[1:]) != (3, size, size):
            raise ValueError(f"PatchCore was built for B x 3 x {size} x {size} images (image_size {size}), "
                             f"got {tuple(images.shape)}")
        if self.memory_bank.shape[0] == 0:
            raise RuntimeError("PatchCore scoring before prepare(): the memory bank is empty")
        feats = self.patch_features(images)
        b, _, h, w = feats.shape
        distances, _ = nearest(patch_rows(feats).reshape(b * h * w, -1), self.memory_bank,
                               backend=self.config.search_backend)
        return distances.reshape(b, 1, h, w)

    @torch.no_grad()
    def anomaly_map(self, images: torch.Tensor) -> torch.Tensor:
        """B x 3 x S x S -> B x 1 x S x S: patch distances bilinearly resized to the image."""
        size = images.shape[-2:]
        return F.interpolate(self.patch_scores(images), size=size, mode="bilinear", align_corners=False)

    # --- state ----------------------------------------------------------------------
    def train(self, mode: bool = True) -> PatchCore:
        super().train(mode)
        self.backbone.train(False)
        return self

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs) -> None:
        """The saved bank's size is the model's: resize the buffer before loading it."""
        saved = state_dict.get(prefix + "memory_bank")
        if saved is not None and saved.dim() == 2 and saved.shape[1] == self.channels:
            self.memory_bank = torch.zeros(saved.shape, dtype=self.memory_bank.dtype,
                                           device=self.memory_bank.device)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def describe(self) -> list[str]:
        c = self.config
        return [f"backbone {c.backbone}: {self.backbone.source}; strides {list(c.strides)} pooled "
                f"{c.pool_size}x{c.pool_size} -> {self.channels}-dim patches on a {self.grid}x{self.grid} grid",
                f"memory bank: greedy coreset of {c.coreset_ratio:g} of the training patches (projection "
                f"{c.projection_dim or 'none'}); exact nearest-neighbour search ({c.search_backend})"]

