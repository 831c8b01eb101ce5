"""SLSG's networks around the shared encoder: GPT-Net's inpainting decoder and auxiliary
head, the PatchGAN discriminator, and SegNet's skip attention, bottleneck (SG block or a
plain U-Net block), auxiliary head and decoder. Shapes are for S x S inputs (S = 256 in
the paper: encoder maps at 128, 128, 64, 32, 16 px). The networks take any encoder's list of
maps (channels and reductions as it reports them; the last map is the stride-16 bottleneck)."""

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


#: decoder width at reduction r: 32 r (ResNet-18: 256 @ S/8, 128 @ S/4, 64 @ S/2, 32 @ S)
WIDTH_PER_REDUCTION = 32
#: reductions whose up-block also takes the auxiliary features (SegNet's 64 and 128 px at 256)
EXTRA_REDUCTIONS = (4, 2)


def halvings(reduction: int) -> list[int]:
    """The up-blocks' output reductions from a bottleneck at `reduction`: 16 -> [8, 4, 2, 1]."""
    if reduction < 2 or reduction & (reduction - 1):
        raise ValueError(f"the bottleneck reduction must be a power of 2 >= 2, got {reduction}")
    out = []
    while reduction > 1:
        reduction //= 2
        out.append(reduction)
    return out


class UNetDecoder(nn.Module):
    """One up-block per halving from the bottleneck to S x S, each joined by the encoder skips
    at its reduction (deepest first), then a 3x3 conv to `out_channels`.

    skip_channels / skip_reductions: the skips' channels and reductions in encoder order.
    ResNet-18: bottleneck 512 @ S/16, skips [stem 64 @ S/2, layer1 64 @ S/2, layer2 128 @ S/4,
    layer3 256 @ S/8]: blocks 512 -> 256 (+ layer3) -> 128 (+ layer2) -> 64 (+ layer1, stem)
    -> 32. `extra` channels (SegNet's 32-channel auxiliary features, upsampled) join the S/4
    and S/2 blocks. Widths are 32 x reduction whatever the encoder.
    """

    def __init__(self, out_channels: int, bottleneck_channels: int, skip_channels: tuple[int, ...],
                 skip_reductions: tuple[int, ...], bottleneck_reduction: int = 16, extra: int = 0) -> None:
        super().__init__()
        self.extra = extra
        self.levels = halvings(bottleneck_reduction)
        stray = set(skip_reductions) - set(self.levels)
        if stray:
            raise ValueError(f"skips at reductions {sorted(stray)} fall between no decoder levels {self.levels}")
        #: per level, the skip indices joined there (deepest encoder map first)
        self.joins = [[i for i in reversed(range(len(skip_reductions))) if skip_reductions[i] == r]
                      for r in self.levels]
        blocks, cin = [], bottleneck_channels
        for r, join in zip(self.levels, self.joins):
            cout = WIDTH_PER_REDUCTION * r
            more = extra if r in EXTRA_REDUCTIONS else 0
            blocks.append(UpBlock(cin, cout, sum(skip_channels[i] for i in join) + more))
            cin = cout
        self.blocks = nn.ModuleList(blocks)
        self.head = nn.Conv2d(cin, out_channels, 3, padding=1)

    def forward(self, bottleneck: torch.Tensor, skips: list[torch.Tensor], size,
                extra: torch.Tensor | None = None) -> torch.Tensor:
        """-> B x out_channels x size."""
        x = bottleneck
        for r, join, block in zip(self.levels, self.joins, self.blocks):
            parts = [skips[i] for i in join]
            at = tuple(parts[0].shape[-2:]) if parts else (size[0] // r, size[1] // r)
            if extra is not None and r in EXTRA_REDUCTIONS:
                parts.append(upsample(extra, at))
            x = block(x, parts, at)
        return self.head(x)


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
    """Stage 1 heads on the encoder: inpainting decoder (3 channels) + auxiliary reconstruction.
    channels / reductions: the encoder's maps (the last is the bottleneck)."""

    def __init__(self, channels: tuple[int, ...] = (64, 64, 128, 256, 512),
                 reductions: tuple[int, ...] = (2, 2, 4, 8, 16)) -> None:
        super().__init__()
        self.decoder = UNetDecoder(3, channels[-1], tuple(channels[:-1]), tuple(reductions[:-1]), reductions[-1])
        self.aux = ReconstructionHead(channels[-1])

    def forward(self, feats: list[torch.Tensor], size) -> tuple[torch.Tensor, torch.Tensor]:
        """Encoder maps -> (reconstruction, auxiliary reconstruction), both B x 3 x S x S."""
        *skips, bottleneck = feats
        return self.decoder(bottleneck, skips, size), self.aux(bottleneck, size)


class SegNet(nn.Module):
    """Stage 2 heads on the (frozen) encoder: skip attention on the `attended` skips (ResNet:
    layer1-3), the bottleneck (SG block or plain), the auxiliary head, and the decoder. Final
    logits = decoder logits + auxiliary logits. channels / reductions: the encoder's maps."""

    def __init__(self, use_sg_block: bool = True, k: int = 9, shared_qk: bool = True, attn_scale: bool = True,
                 pos_subtract: bool = True, channels: tuple[int, ...] = (64, 64, 128, 256, 512),
                 reductions: tuple[int, ...] = (2, 2, 4, 8, 16),
                 attended: tuple[bool, ...] = (False, True, True, True)) -> None:
        super().__init__()
        width = channels[-1]
        self.attention = nn.ModuleList([SkipAttention(c) if on else nn.Identity()
                                        for c, on in zip(channels[:-1], attended)])
        self.bottleneck = (SGBlock(width, k, shared_qk, attn_scale, pos_subtract) if use_sg_block
                           else PlainBottleneck(width))
        self.aux = SegAuxHead(width)
        self.decoder = UNetDecoder(2, width, tuple(channels[:-1]), tuple(reductions[:-1]), reductions[-1],
                                   extra=SegAuxHead.feature_channels)

    def forward(self, feats: list[torch.Tensor], size) -> tuple[torch.Tensor, torch.Tensor]:
        """Encoder maps -> (final logits, auxiliary logits), both B x 2 x S x S."""
        *skips, bottleneck = feats
        x = self.bottleneck(bottleneck)
        aux_features, aux_logits = self.aux(x, size)
        skips = [attend(s) for attend, s in zip(self.attention, skips)]
        return self.decoder(x, skips, size, aux_features) + aux_logits, aux_logits
