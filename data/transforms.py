"""Albumentations pipelines applied to cached, already resized uint8 images."""

from __future__ import annotations

import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # no version check over the network

import albumentations as A  # noqa: E402
from albumentations.pytorch import ToTensorV2  # noqa: E402

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def eval_transform() -> A.Compose:
    """ImageNet normalisation, HWC uint8 -> CHW float tensor (mask passes through)."""
    return A.Compose([A.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD), ToTensorV2()])


def train_transform(augment: bool = False) -> A.Compose:
    """As eval, plus mild photometric jitter when `augment` (DFSC trains without it)."""
    steps = [A.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.0, p=0.5)] if augment else []
    return A.Compose([*steps, A.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD), ToTensorV2()])
