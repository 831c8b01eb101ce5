"""SLSG's networks around the shared encoder: GPT-Net's inpainting decoder and auxiliary
head, the PatchGAN discriminator, and SegNet's skip attention, bottleneck (SG block or a
plain U-Net block), auxiliary head and decoder. Shapes are for S x S inputs (S = 256 in
the paper: encoder maps at 128, 128, 64, 32, 16 px)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .sg_block import SGBlock


def conv_group(cin: int, cout: int, kernel: int = 3, dilation: int = 1) -> nn.Sequential:
    """conv (no bias) + BN + ReLU, 'same' padding."""
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, padding=dilation * (kernel // 2), dilation=dilation,
                                   bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def upsample(x: torch.Tensor, size) -> torch.Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class UpBlock(nn.Module):
    """x2 upsample + conv group (cin -> cout), concat the skips, then the conv block (two
    conv groups): B x cin x h x w (+ skips at 2h x 2w) -> B x cout x 2h x 2w."""

    def __init__(self, cin: int, cout: int, skip_channels: int) -> None:
        super().__init__()
        self.up = conv_group(cin, cout)
        self.block = nn.Sequential(conv_group(cout + skip_channels, cout), conv_group(cout, cout))

    def forward(self, x: torch.Tensor, skips: list[torch.Tensor], size) -> torch.Tensor:
        x = self.up(upsample(x, size))
        return self.block(torch.cat([x, *skips], dim=1) if skips else x)


class UNetDecoder(nn.Module):
    """Four up-blocks with the encoder skips, then a 3x3 conv to `out_channels` at S x S.

    Inputs: the bottleneck (512 @ S/16) and skips [layer3 256 @ S/8, layer2 128 @ S/4,
    layer1 64 @ S/2 + stem 64 @ S/2]; `extra` channels (SegNet's 32-channel auxiliary
    features, upsampled) join the S/4 and S/2 blocks.
    """

    def __init__(self, out_channels: int, extra: int = 0) -> None:
        super().__init__()
        self.extra = extra
        self.up3 = UpBlock(512, 256, 256)
        self.up2 = UpBlock(256, 128, 128 + extra)
        self.up1 = UpBlock(128, 64, 128 + extra)
        self.up0 = UpBlock(64, 32, 0)
        self.head = nn.Conv2d(32, out_channels, 3, padding=1)

    def forward(self, bottleneck: torch.Tensor, skips: list[torch.Tensor], size,
                extra: torch.Tensor | None = None) -> torch.Tensor:
        """-> B x out_channels x size."""
        l3, l2, l1, stem = skips
        x = self.up3(bottleneck, [l3], l3.shape[-2:])
        more = [] if extra is None else [upsample(extra, l2.shape[-2:])]
        x = self.up2(x, [l2, *more], l2.shape[-2:])
        more = [] if extra is None else [upsample(extra, l1.shape[-2:])]
        x = self.up1(x, [l1, stem, *more], l1.shape[-2:])
        return self.head(self.up0(x, [], size))


class ReconstructionHead(nn.Module):
    """GPT-Net's auxiliary head: bottleneck 512 @ S/16 -> 3 x S x S image (3x3 conv group,
    1x1 conv, bilinear x16)."""

    def __init__(self, channels: int = 512) -> None:
        super().__init__()
        self.body = nn.Sequential(conv_group(channels, 128), nn.Conv2d(128, 3, 1))

    def forward(self, x: torch.Tensor, size) -> torch.Tensor:
        return upsample(self.body(x), size)


class PatchDiscriminator(nn.Module):
    """PatchGAN (Markov) discriminator: four 4x4 conv groups (64, 128, 256, 512; strides
    2, 2, 2, 1; LeakyReLU 0.2, BN after the first) and a 4x4 conv to a 1-channel map."""

    def __init__(self, channels: int = 3, width: int = 64) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = channels
        for i, (mult, stride) in enumerate(((1, 2), (2, 2), (4, 2), (8, 1))):
            cout = width * mult
            layers.append(nn.Conv2d(cin, cout, 4, stride=stride, padding=1, bias=i == 0))
            if i > 0:
                layers.append(nn.BatchNorm2d(cout))
            layers.append(nn.LeakyReLU(0.2, inplace=True))
            cin = cout
        layers.append(nn.Conv2d(cin, 1, 4, stride=1, padding=1))
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """B x 3 x S x S -> B x 1 x P x P patch logits (least-squares targets 1 real, 0 fake)."""
        return self.body(x)


class SkipAttention(nn.Module):
    """Large-kernel spatial attention on a skip: 1x1, depthwise 3x3, depthwise 3x3 (dilation
    3), 1x1 -> multiply with the input, ReLU, 1x1, plus the input. Shape-preserving."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.attend = nn.Sequential(
            nn.Conv2d(channels, channels, 1),
            nn.Conv2d(channels, channels, 3, padding=1, groups=channels),
            nn.Conv2d(channels, channels, 3, padding=3, dilation=3, groups=channels),
            nn.Conv2d(channels, channels, 1),
        )
        self.out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(F.relu(x * self.attend(x))) + x


class PlainBottleneck(nn.Module):
    """The ablation's plain U-Net bottleneck: two 3x3 conv groups plus the input."""

    def __init__(self, channels: int = 512) -> None:
        super().__init__()
        self.block = nn.Sequential(conv_group(channels, channels), conv_group(channels, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x) + x


class SegAuxHead(nn.Module):
    """On the bottleneck output: two 3x3 conv groups (512 -> 256 -> 32) giving features fed to
    the decoder, then two 3x3 convs to 2 logits, upsampled x16 to S x S."""

    feature_channels = 32

    def __init__(self, channels: int = 512) -> None:
        super().__init__()
        self.features = nn.Sequential(conv_group(channels, 256), conv_group(256, self.feature_channels))
        self.logits = nn.Sequential(nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(inplace=True),
                                    nn.Conv2d(32, 2, 3, padding=1))

    def forward(self, x: torch.Tensor, size) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (features B x 32 x h x w, logits B x 2 x S x S)."""
        features = self.features(x)
        return features, upsample(self.logits(features), size)


class GPTNet(nn.Module):
    """Stage 1 heads on the encoder: inpainting decoder (3 channels) + auxiliary reconstruction."""

    def __init__(self) -> None:
        super().__init__()
        self.decoder = UNetDecoder(3)
        self.aux = ReconstructionHead()

    def forward(self, feats: list[torch.Tensor], size) -> tuple[torch.Tensor, torch.Tensor]:
        """Encoder maps -> (reconstruction, auxiliary reconstruction), both B x 3 x S x S."""
        stem, l1, l2, l3, l4 = feats
        return self.decoder(l4, [l3, l2, l1, stem], size), self.aux(l4, size)


class SegNet(nn.Module):
    """Stage 2 heads on the (frozen) encoder: skip attention on layer1-3, the bottleneck
    (SG block or plain), the auxiliary head, and the decoder. Final logits = decoder logits +
    auxiliary logits."""

    def __init__(self, use_sg_block: bool = True, k: int = 9, shared_qk: bool = True, attn_scale: bool = True,
                 pos_subtract: bool = True) -> None:
        super().__init__()
        self.attn1, self.attn2, self.attn3 = SkipAttention(64), SkipAttention(128), SkipAttention(256)
        self.bottleneck = (SGBlock(512, k, shared_qk, attn_scale, pos_subtract) if use_sg_block
                           else PlainBottleneck(512))
        self.aux = SegAuxHead(512)
        self.decoder = UNetDecoder(2, extra=SegAuxHead.feature_channels)

    def forward(self, feats: list[torch.Tensor], size) -> tuple[torch.Tensor, torch.Tensor]:
        """Encoder maps -> (final logits, auxiliary logits), both B x 2 x S x S."""
        stem, l1, l2, l3, l4 = feats
        x = self.bottleneck(l4)
        aux_features, aux_logits = self.aux(x, size)
        skips = [self.attn3(l3), self.attn2(l2), self.attn1(l1), stem]
        return self.decoder(x, skips, size, aux_features) + aux_logits, aux_logits
