"""EfficientAD's augmentation of the autoencoder's input (`ae_augment="efficientad"`).

EfficientAD trains its autoencoder on a colour-jittered copy of each training image: one
of brightness, contrast or saturation, picked uniformly, with a factor drawn uniformly from
[0.8, 1.2] (torchvision's ColorJitter(x=0.2) inside a RandomChoice), on the [0, 1] image
before ImageNet normalisation. DFSC drops it (no augmentation). Written here on tensors:

    brightness  x * f
    contrast    f * x + (1 - f) * mean(grey(x))     (one mean per image)
    saturation  f * x + (1 - f) * grey(x)           (per pixel)

each clamped to [0, 1]; grey = 0.299 R + 0.587 G + 0.114 B (ITU-R 601, as torchvision).
"""

from __future__ import annotations

import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: EfficientAD's jitter strength: factors in [1 - 0.2, 1 + 0.2]
JITTER = 0.2
_GREY = (0.299, 0.587, 0.114)


def colour_jitter(images: torch.Tensor, generator: torch.Generator, strength: float = JITTER) -> torch.Tensor:
    """B x 3 x H x W ImageNet-normalised images -> the same, each with one random jitter.

    The choices and factors come from `generator` (a CPU generator: seeded, so training is
    reproducible); the result has the input's dtype, device and memory format.
    """
    b = images.shape[0]
    choice = torch.randint(3, (b,), generator=generator)
    factor = 1.0 + strength * (2.0 * torch.rand(b, generator=generator) - 1.0)
    device = images.device
    choice, factor = choice.to(device)[:, None, None, None], factor.to(device)[:, None, None, None]
    mean = torch.tensor(IMAGENET_MEAN, device=device)[:, None, None]
    std = torch.tensor(IMAGENET_STD, device=device)[:, None, None]
    x = (images.float() * std + mean).clamp(0.0, 1.0)  # B x 3 x H x W in [0, 1]
    grey = torch.einsum("bchw,c->bhw", x, torch.tensor(_GREY, device=device))[:, None]  # B x 1 x H x W
    target = torch.where(choice == 1, grey.mean(dim=(2, 3), keepdim=True), grey)  # contrast: the mean grey
    jittered = torch.where(choice == 0, x * factor, factor * x + (1.0 - factor) * target)
    return ((jittered.clamp(0.0, 1.0) - mean) / std).to(images.dtype)
