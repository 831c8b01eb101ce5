"""SLSG's ResNet-18 encoder with the authors' forward: no maxpool, layer1 on the pre-BN conv1.

At 256 px the five maps are 64@128 (conv1 -> bn1 -> relu: the shallow skip), 64@128
(layer1 on the raw conv1 output), 128@64, 256@32 and 512@16 (the 16 x 16 bottleneck,
256 graph nodes); a stock `features_only` ResNet-18 would end at 8 x 8.
"""

from __future__ import annotations

import torch
from torch import nn

from ..backbones import create_backbone


class SLSGEncoder(nn.Module):
    """ResNet-18 (timm, through `create_backbone`) called with SLSG's own forward.

    weights: None/"" for random init (logged once by create_backbone), "hub", or a local
    state-dict file of timm's resnet18. `source` says where the weights came from.
    """

    channels = (64, 64, 128, 256, 512)
    reductions = (2, 2, 4, 8, 16)

    def __init__(self, weights: str | None = None) -> None:
        super().__init__()
        backbone, self.source = create_backbone("resnet18", weights or None, out_indices=(0, 1, 2, 3, 4))
        self.conv1, self.bn1, self.act1 = backbone.conv1, backbone.bn1, backbone.act1
        self.layer1, self.layer2, self.layer3, self.layer4 = (backbone.layer1, backbone.layer2, backbone.layer3,
                                                              backbone.layer4)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """B x 3 x S x S -> [B x 64 x S/2 (bn+relu skip), B x 64 x S/2, B x 128 x S/4,
        B x 256 x S/8, B x 512 x S/16]."""
        stem = self.conv1(x)
        skip = self.act1(self.bn1(stem))
        l1 = self.layer1(stem)
        l2 = self.layer2(l1)
        l3 = self.layer3(l2)
        return [skip, l1, l2, l3, self.layer4(l3)]
