"""A frozen pretrained timm backbone as DFSC's teacher (`teacher="backbone"`).

EfficientAD distils a PDN-S from pretrained features so that the teacher is fast; the
features themselves are the target. On a CPU with a few hundred distillation steps the
distilled PDN is a poor copy of them, so this teacher *is* the pretrained network: the
student (PDN-S, 2C out) and the autoencoder regress its features directly.

    B x 3 x S x S  (ImageNet-normalised; the backbone renormalises to its own config)
      -> resized to the backbone size (default 2 x S, as EfficientAD's distillation)
      -> timm features_only levels at `strides` (e.g. 8 and 16)
      -> each level average-pooled k x k, stride 1 (EfficientAD's / PatchCore's local
         aggregation of the distillation target)
      -> each sampled (bilinear) at the centres of the PDN-S output locations, P x P,
         P = `pdn_output_size(S)` (`pdn_output_centres`: 4 p + 16 px), so that target location
         p describes the same image patch the student's location p sees
      -> concatenated: B x sum(channels) x P x P (tf_efficientnet_lite0 at 8/16: 40 + 112)
      -> optionally channel-pooled to `max_channels` when that is smaller (PatchCore's
         parameter-free projection)

Per-channel mean/std normalisation stays DFSC's `prepare` statistic.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..backbones import create_backbone
from ..pdn import pdn_output_centres
from ..torchvision_ops import import_timm


def stride_indices(name: str, strides: Sequence[int]) -> tuple[list[int], list[int]]:
    """(timm out_indices, channels) of the feature levels of `name` at `strides`; ValueError
    naming the available strides otherwise. The model is built on the meta device (no memory)."""
    timm = import_timm()
    with torch.device("meta"):
        info = timm.create_model(name, features_only=True, pretrained=False).feature_info
    reductions, channels = list(info.reduction()), list(info.channels())
    missing = [s for s in strides if s not in reductions]
    if missing:
        raise ValueError(f"{name} has no feature level at stride {missing}; its strides are {reductions}")
    indices = [reductions.index(s) for s in strides]
    return indices, [channels[i] for i in indices]


class BackboneTeacher(nn.Module):
    """Frozen backbone features as a PDN-sized map: B x 3 x S x S -> B x C x P x P (see the module doc).

    C = sum of the levels' channels, or `max_channels` when that is smaller.
    """

    def __init__(self, name: str, weights: str | None, image_size: int, out_size: int,
                 strides: Sequence[int] = (8, 16), backbone_size: int = 0, pool: int = 3,
                 max_channels: int = 0) -> None:
        super().__init__()
        indices, channels = stride_indices(name, strides)
        self.backbone, self.source = create_backbone(name, weights, out_indices=indices)
        self.backbone.eval().requires_grad_(False)
        self.name = name
        self.strides = tuple(strides)
        self.backbone_size = backbone_size or 2 * image_size
        self.out_size = out_size
        self.pool = pool
        # the sampling grid in grid_sample's [-1, 1] frame (align_corners=False: the image's edges)
        centres = (2 * pdn_output_centres(image_size) + 1) / image_size - 1
        if centres.numel() != out_size:
            raise ValueError(f"out_size {out_size} is not the PDN-S output size {centres.numel()} at {image_size} px")
        y, x = torch.meshgrid(centres, centres, indexing="ij")
        self.register_buffer("grid", torch.stack([x, y], dim=-1)[None], persistent=False)  # 1 x P x P x 2
        total = sum(channels)
        self.out_channels = min(total, max_channels) if max_channels else total

    def train(self, mode: bool = True) -> BackboneTeacher:
        super().train(mode)
        self.backbone.eval()  # frozen: batch norm statistics stay the pretrained ones
        return self

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        size = self.backbone_size
        if images.shape[-2:] != (size, size):
            images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False,
                                   antialias=images.shape[-1] > size)
        maps = []
        for level in self.backbone(images):
            level = level.float()
            if self.pool > 1:
                level = F.avg_pool2d(level, self.pool, stride=1, padding=self.pool // 2, count_include_pad=False)
            grid = self.grid.to(level.device).expand(level.shape[0], -1, -1, -1)
            maps.append(F.grid_sample(level, grid, mode="bilinear", padding_mode="border", align_corners=False))
        out = torch.cat(maps, dim=1)  # B x sum(channels) x P x P
        if out.shape[1] != self.out_channels:
            out = _pool_channels(out, self.out_channels)
        return out


def _pool_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    """B x C x h x w -> B x channels x h x w by adaptive average pooling over the channel axis."""
    b, c, h, w = x.shape
    flat = x.permute(0, 2, 3, 1).reshape(b * h * w, 1, c)
    return F.adaptive_avg_pool1d(flat, channels).reshape(b, h, w, channels).permute(0, 3, 1, 2).contiguous()
