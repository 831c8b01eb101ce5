"""DFSC's networks: PDN-S teacher/student (`logicad.models.pdn`) and EfficientAD's
autoencoder with DFSC's change (InstanceNorm before every activation, an extra ReLU at
the start of the decoder).

Autoencoder at 256 px (EfficientAD-S), B x 3 x 256 x 256 -> B x 384 x 56 x 56::

    encoder  conv4x4/2 pad 1: 3->32, 32->32, 32->64, 64->64, 64->64   (+IN, ReLU each)
             256 -> 128 -> 64 -> 32 -> 16 -> 8
             conv8x8 64->64 (no activation)                          8 -> 1
    decoder  ReLU (DFSC's extra one)
             6 x {bilinear upsample to 3, 8, 15, 32, 63, 127; conv4x4 pad 2 64->64
                  (size + 1); IN, ReLU, Dropout 0.2}
             bilinear upsample to 56 (= PDN output), conv3x3 pad 1 + IN + ReLU,
             conv3x3 pad 1 64->384

Other sizes: the decoder's upsample sizes are EfficientAD's scaled by S / 256 (rounded
half up, at least 1): 128 px -> 2, 4, 8, 16, 32, 64; 192 px -> 2, 6, 11, 24, 47, 95.
The last encoder conv's kernel is min(8, encoder size), so the bottleneck stays
1 x 1 where EfficientAD's 8 x 8 kernel would not fit (S < 256) and is EfficientAD's
(S / 32 - 7) above. The final upsample target is `pdn_output_size(S)`.

No InstanceNorm before the decoder's extra ReLU: the bottleneck is 1 x 1 at S <= 256,
where instance statistics are undefined (one value per channel).

EfficientAD's autoencoder (the ablation of DFSC's change): `norm="none"` (no InstanceNorm)
and `extra_relu=False` (no ReLU at the start of the decoder). InstanceNorm has no weights
(affine=False), so the state dict is the same either way.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..pdn import PDNSmall, pdn_output_size

__all__ = ["AE_NORMS", "Autoencoder", "PDNSmall", "decoder_sizes", "encoder_sizes", "pdn_output_size"]

#: EfficientAD's decoder upsample sizes at 256 px
_DECODER_SIZES_256 = (3, 8, 15, 32, 63, 127)
#: normalisation before the autoencoder's activations: DFSC's InstanceNorm, or none (EfficientAD)
AE_NORMS = ("instance", "none")


def decoder_sizes(image_size: int) -> tuple[int, ...]:
    """Bilinear upsample targets of the six decoder blocks (3, 8, 15, 32, 63, 127 at 256 px)."""
    return tuple(max(1, int(s * image_size / 256 + 0.5)) for s in _DECODER_SIZES_256)


def encoder_sizes(image_size: int) -> tuple[tuple[int, ...], int]:
    """(sizes after the five stride-2 convs, kernel of the last conv); ((128, 64, 32, 16, 8), 8) at 256."""
    sizes, size = [], image_size
    for _ in range(5):
        size = (size + 2 - 4) // 2 + 1
        sizes.append(size)
    return tuple(sizes), min(8, size)


class Autoencoder(nn.Module):
    """B x 3 x S x S -> B x out_channels x P x P, P = `pdn_output_size(S)` (56 at 256).

    norm: "instance" (DFSC) or "none" (EfficientAD); extra_relu: DFSC's ReLU at the start
    of the decoder (EfficientAD has none).
    """

    def __init__(self, image_size: int = 256, out_channels: int = 384, dropout: float = 0.2,
                 norm: str = "instance", extra_relu: bool = True) -> None:
        super().__init__()
        sizes, last_kernel = encoder_sizes(image_size)
        if sizes[-1] < 1:
            raise ValueError(f"image_size {image_size} is too small for the autoencoder (needs >= 32)")
        if norm not in AE_NORMS:
            raise ValueError(f"autoencoder norm must be one of {AE_NORMS}, got {norm!r}")
        instance = norm == "instance"
        self.image_size = image_size
        self.up_sizes = decoder_sizes(image_size)
        self.out_size = pdn_output_size(image_size)
        widths = (3, 32, 32, 64, 64, 64)
        self.encoder = nn.Sequential(
            *[_block(nn.Conv2d(widths[i], widths[i + 1], 4, stride=2, padding=1), widths[i + 1], instance=instance)
              for i in range(5)],
            nn.Conv2d(64, 64, kernel_size=last_kernel),
        )
        # DFSC's extra ReLU at the start of the decoder
        self.decoder_act = nn.ReLU(inplace=False) if extra_relu else nn.Identity()
        self.decoder = nn.ModuleList(
            [_block(nn.Conv2d(64, 64, 4, stride=1, padding=2), 64, dropout, instance) for _ in self.up_sizes]
        )
        self.head = nn.Sequential(
            _block(nn.Conv2d(64, 64, 3, stride=1, padding=1), 64, instance=instance),
            nn.Conv2d(64, out_channels, 3, stride=1, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.decoder_act(self.encoder(x))  # B x 64 x 1 x 1 at 256 px
        for size, block in zip(self.up_sizes, self.decoder):
            x = block(F.interpolate(x, size=size, mode="bilinear", align_corners=False))  # -> size + 1
        x = F.interpolate(x, size=self.out_size, mode="bilinear", align_corners=False)  # B x 64 x 56 x 56
        return self.head(x)  # B x out x 56 x 56


def _block(conv: nn.Conv2d, channels: int, dropout: float = 0.0, instance: bool = True) -> nn.Sequential:
    """conv, [InstanceNorm (DFSC: before every activation),] ReLU[, Dropout]."""
    norm = [nn.InstanceNorm2d(channels)] if instance else []
    layers: list[nn.Module] = [conv, *norm, nn.ReLU(inplace=True)]
    if dropout:
        layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)
