"""SLSG's encoders: a pyramid of maps ending in the stride-16 bottleneck, each encoder
reporting its maps' channels and reductions so the decoders and the SG block follow.

- "resnet18" (the paper's / authors'): ResNet-18 with SLSG's forward (no maxpool, layer1 on
  the pre-BN conv1). At 256 px the five maps are 64@128 (conv1 -> bn1 -> relu: the shallow
  skip), 64@128 (layer1 on the raw conv1 output), 128@64, 256@32 and 512@16 (the 16 x 16
  bottleneck, 256 graph nodes); a stock `features_only` ResNet-18 would end at 8 x 8.
- "tf_efficientnet_lite0" (ImageNet weights ship with the project: "imagenet-lite0"): timm's
  `features_only` model on its first four levels, called through its own forward (so its
  input renormalisation hook applies). At 256 px: 16@128, 24@64, 40@32 and 112@16 (the
  bottleneck). Four maps instead of five: the networks take any list of levels (every map
  but the last is a skip at its own reduction), so lite0 needs no duplicated or padded skip.

Skip attention (SegNet) applies to the maps an encoder marks `attended`: ResNet's layer1-3 as
in the paper (not the shallow stem skip); every lite0 skip (each is a stage's output).
"""

from __future__ import annotations

import torch
from torch import nn

from ..backbones import create_backbone, feature_channels, feature_reductions, renormaliser

#: encoder architectures SLSG can use (config key `encoder`)
ENCODERS = ("resnet18", "tf_efficientnet_lite0")


class ResNetEncoder(nn.Module):
    """ResNet-18 (timm, through `create_backbone`) called with SLSG's own forward.

    weights: None/"" for random init (logged once by create_backbone), "hub", or a local
    state-dict file of timm's resnet18. `source` says where the weights came from.
    """

    channels = (64, 64, 128, 256, 512)
    reductions = (2, 2, 4, 8, 16)
    attended = (False, True, True, True)

    def __init__(self, weights: str | None = None, name: str = "resnet18") -> None:
        super().__init__()
        backbone, self.source = create_backbone(name, weights or None, out_indices=(0, 1, 2, 3, 4))
        # submodules are called directly (timm's forward and its pre-hook are bypassed)
        self.renormalise = renormaliser(name) or nn.Identity()
        self.conv1, self.bn1, self.act1 = backbone.conv1, backbone.bn1, backbone.act1
        self.layer1, self.layer2, self.layer3, self.layer4 = (backbone.layer1, backbone.layer2, backbone.layer3,
                                                              backbone.layer4)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """B x 3 x S x S -> [B x 64 x S/2 (bn+relu skip), B x 64 x S/2, B x 128 x S/4,
        B x 256 x S/8, B x 512 x S/16]."""
        stem = self.conv1(self.renormalise(x))
        skip = self.act1(self.bn1(stem))
        l1 = self.layer1(stem)
        l2 = self.layer2(l1)
        l3 = self.layer3(l2)
        return [skip, l1, l2, l3, self.layer4(l3)]


class TimmPyramidEncoder(nn.Module):
    """A timm `features_only` model up to stride 16, through its own forward (which
    renormalises ImageNet-normalised input where the model needs it).

    weights: a shipped source ("imagenet-lite0"), "hub", a state-dict file, or None/"" (random).
    """

    def __init__(self, name: str, weights: str | None = None, out_indices: tuple[int, ...] = (0, 1, 2, 3)) -> None:
        super().__init__()
        self.body, self.source = create_backbone(name, weights or None, out_indices=out_indices)
        self.channels = tuple(feature_channels(self.body))
        self.reductions = tuple(feature_reductions(self.body))
        if self.reductions[-1] != 16:
            raise ValueError(f"SLSG's bottleneck is at stride 16; {name} levels {out_indices} end at "
                             f"stride {self.reductions[-1]}")
        self.attended = (True,) * (len(self.channels) - 1)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """B x 3 x S x S -> one B x C_i x S/r_i map per level (lite0: 16@S/2, 24@S/4, 40@S/8, 112@S/16)."""
        return list(self.body(x))


def build_encoder(name: str, weights: str | None = None) -> nn.Module:
    """The encoder `name` (one of ENCODERS) with `weights` (see the classes)."""
    if name == "resnet18":
        return ResNetEncoder(weights, name)
    if name == "tf_efficientnet_lite0":
        return TimmPyramidEncoder(name, weights)
    raise ValueError(f"unknown SLSG encoder {name!r}; expected one of {list(ENCODERS)}")


#: the paper's encoder under its former name
SLSGEncoder = ResNetEncoder
