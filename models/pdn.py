"""Patch description networks (EfficientAD's PDN), shared by DFSC and teacher distillation.

PDN-S (Batzner et al. 2023, "EfficientAD"), no padding::

    conv1 4x4  3 -> 128, ReLU, AvgPool 2/2
    conv2 4x4  128 -> 256, ReLU, AvgPool 2/2
    conv3 3x3  256 -> 256, ReLU
    conv4 4x4  256 -> out_channels

Every output location sees a 33 x 33 input patch at stride 4. At 256 px the output is
56 x 56 (256 -> 253 -> 126 -> 123 -> 61 -> 59 -> 56); `pdn_output_size` does the same
arithmetic for any input size (128 -> 24, 192 -> 40, 64 -> 8).

The convolutions are named conv1..conv4 and the module also accepts the two layouts in
which ready PDN-S teachers circulate (see `remap_pdn_state_dict`), so a teacher
distilled elsewhere loads with `--set teacher_weights=PATH`.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

#: PDN-S conv layers in order: (name, kernel size, followed by a 2/2 average pool)
_PDN_KERNELS = (("conv1", 4, True), ("conv2", 4, True), ("conv3", 3, False), ("conv4", 4, False))
#: EfficientAD's original code builds PDN-S as an nn.Sequential: conv layers at these indices
_SEQUENTIAL_INDEX = {"0": "conv1", "3": "conv2", "6": "conv3", "8": "conv4"}


def pdn_output_size(image_size: int) -> int:
    """Spatial size of the PDN-S output for a square `image_size` input (no padding)."""
    size = image_size
    for _, kernel, pool in _PDN_KERNELS:
        size = size - kernel + 1
        if pool:
            size //= 2
    return size


def pdn_output_centres(image_size: int) -> torch.Tensor:
    """P input-pixel coordinates (index space: pixel k's centre is k) of the centres of the PDN-S
    output locations along one side: 4 p + 16 (a valid conv of kernel k shifts by (k - 1) / 2,
    a 2/2 pool by 0.5 and doubles the step). A target map resampled at these points lines up
    with the PDN's output; one resized over the whole image does not (off by up to ~17 px at
    128 px, where the PDN sees only the interior)."""
    offset, step = 0.0, 1.0
    for _, kernel, pool in _PDN_KERNELS:
        offset += step * (kernel - 1) / 2
        if pool:
            offset += step * 0.5
            step *= 2
    return offset + step * torch.arange(pdn_output_size(image_size), dtype=torch.float32)


class PDNSmall(nn.Module):
    """PDN-S: B x 3 x S x S -> B x out_channels x P x P, P = `pdn_output_size(S)`.

    At S = 256: B x 3 x 256 x 256 -> B x out_channels x 56 x 56.
    Teacher: out_channels 384; student: 768 (first 384 regress the teacher, last 384 the
    autoencoder).
    """

    def __init__(self, out_channels: int = 384) -> None:
        super().__init__()
        self.out_channels = out_channels
        self.conv1 = nn.Conv2d(3, 128, kernel_size=4)
        self.conv2 = nn.Conv2d(128, 256, kernel_size=4)
        self.conv3 = nn.Conv2d(256, 256, kernel_size=3)
        self.conv4 = nn.Conv2d(256, out_channels, kernel_size=4)
        self.act = nn.ReLU(inplace=True)
        self.pool = nn.AvgPool2d(kernel_size=2, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.act(self.conv1(x)))  # B x 128 x 126 x 126 at 256 px
        x = self.pool(self.act(self.conv2(x)))  # B x 256 x 61 x 61
        x = self.act(self.conv3(x))  # B x 256 x 59 x 59
        return self.conv4(x)  # B x out x 56 x 56


def remap_pdn_state_dict(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A PDN-S state dict in `PDNSmall`'s names.

    Accepts `PDNSmall`'s own keys (conv1.weight, ...; also anomalib's layout), and
    EfficientAD's nn.Sequential keys (0.weight, 3.weight, 6.weight, 8.weight), with or
    without a `module.` prefix (DDP). Other keys are returned unchanged, so a caller's
    strict load reports them.
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        name = key.removeprefix("module.")
        head, _, tail = name.partition(".")
        if head in _SEQUENTIAL_INDEX and tail in ("weight", "bias"):
            name = f"{_SEQUENTIAL_INDEX[head]}.{tail}"
        out[name] = value
    return out


def check_pdn_state_dict(state: Mapping[str, torch.Tensor], out_channels: int) -> str | None:
    """None when `state` (in PDNSmall names) fits a PDN-S with `out_channels`; else what is wrong."""
    expected = PDNSmall(out_channels).state_dict()
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    if missing or extra:
        return f"keys differ from PDN-S (missing {missing[:4]}, unexpected {extra[:4]})"
    for key, value in expected.items():
        if not isinstance(state[key], torch.Tensor) or tuple(state[key].shape) != tuple(value.shape):
            shape = tuple(state[key].shape) if isinstance(state[key], torch.Tensor) else type(state[key]).__name__
            return f"{key} has shape {shape}, PDN-S with {out_channels} outputs needs {tuple(value.shape)}"
    return None
