"""The frozen pretrained feature extractor both reference methods read, and PatchCore's
locally aggregated patch features.

Shapes: B images of S x S, level l at stride r_l has C_l channels on an S/r_l x S/r_l grid;
patch features live on the finest level's h x w grid with C = sum of C_l channels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from ..backbones import FrozenFeatures
from ..base import ConfigError, MethodConfig


@dataclass
class FeatureStatisticsConfig(MethodConfig):
    """Keys both statistics-only reference methods share: a frozen pretrained backbone read at
    `strides`. Their images are 128 px here (the synthetic set's measured setting; 224/256 px
    for MVTec-sized images)."""

    image_size: int = 128
    #: images per batch of the statistics pass and of scoring
    batch_size: int = 8
    #: unused: no training stage (kept > 0 for the shared config checks)
    max_steps: int = 1
    #: timm backbone (frozen); these methods are defined by pretrained features
    backbone: str = "tf_efficientnet_lite0"
    #: a shipped source, a local file, "hub", or "random"
    backbone_weights: str = "imagenet-lite0"
    #: feature levels by stride, increasing
    strides: tuple[int, ...] = (8, 16)

    BACKBONE_WEIGHTS: ClassVar[dict[str, str]] = {"backbone_weights": "backbone"}

    def validate(self) -> None:
        super().validate()
        self.check([("strides", len(self.strides) >= 1 and list(self.strides) == sorted(self.strides),
                     "one or more increasing strides")])
        if self.image_size % self.strides[-1]:
            raise ConfigError(f"config key 'image_size' ({self.image_size}) must be a multiple of every "
                              f"stride {list(self.strides)}")


class FrozenBackbone(FrozenFeatures):
    """timm feature extractor at the given strides, frozen and always in eval mode (its
    BatchNorm statistics never move). images B x 3 x S x S -> [B x C_l x S/r_l x S/r_l], float32."""

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        weight = next(self.model.parameters())
        images = images.to(weight.device)
        if weight.dim() == 4 and weight.is_contiguous(memory_format=torch.channels_last) \
                and not weight.is_contiguous():
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.autocast(images.device.type, enabled=False):
            return [f.float().contiguous() for f in self.model(images)]


def fixed_shape_forward(backbone: FrozenBackbone, images: torch.Tensor, batch: int) -> list[torch.Tensor]:
    """`backbone(images)` computed in chunks of exactly `batch` images (the last one padded by
    repeating its last image, the padding dropped). Kernels may depend on the batch shape (on a
    CPU a batch of one differs by ~1e-6 from the same image among others), so statistics whose
    workers batch their shards differently are computed through one shape: N workers then get
    bit-identical features to one process. [B x 3 x S x S] -> [B x C_l x h_l x w_l]."""
    outputs: list[list[torch.Tensor]] = []
    for start in range(0, images.shape[0], batch):
        chunk = images[start:start + batch]
        real = chunk.shape[0]
        if real < batch:
            chunk = torch.cat([chunk, chunk[-1:].expand(batch - real, *chunk.shape[1:])])
        outputs.append([f[:real] for f in backbone(chunk)])
    return [torch.cat(level) for level in zip(*outputs)]


def aggregate(levels: list[torch.Tensor], pool_size: int) -> torch.Tensor:
    """PatchCore's locally aware patch features: every level averaged over its pool_size x
    pool_size neighbourhood (stride 1, zero padding counted), coarser levels bilinearly resized
    onto the finest grid, channels concatenated. [B x C_l x h_l x w_l] -> B x C x h x w."""
    if pool_size > 1:
        levels = [F.avg_pool2d(f, pool_size, stride=1, padding=pool_size // 2) for f in levels]
    size = levels[0].shape[-2:]
    resized = [levels[0]] + [F.interpolate(f, size=size, mode="bilinear", align_corners=False)
                             for f in levels[1:]]
    return torch.cat(resized, dim=1)


def patch_rows(features: torch.Tensor) -> torch.Tensor:
    """B x C x h x w -> B x (h * w) x C, positions row-major."""
    b, c, h, w = features.shape
    return features.permute(0, 2, 3, 1).reshape(b, h * w, c)


def normal_images(batch: dict[str, Any], seen: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(normal images B' x 3 x S x S, their dataset indices B') of a statistics batch. Indices
    (batch["index"]) let gathered rows be put back in dataset order; a batch without them is
    numbered from `seen`."""
    images = batch["image"]
    index = batch.get("index")
    index = torch.as_tensor(index) if index is not None else torch.arange(seen, seen + images.shape[0])
    index = index.to(images.device).long()
    if "label" in batch:
        keep = torch.as_tensor(batch["label"]).to(images.device) == 0
        images, index = images[keep], index[keep]
    return images, index
