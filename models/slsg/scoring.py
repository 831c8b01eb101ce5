"""SLSG's scores: the softmax anomaly probability map and the mean of its top-k pixels."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def anomaly_probability(logits: torch.Tensor, size) -> torch.Tensor:
    """B x 2 x h x w logits -> B x 1 x S x S softmax probability of the anomalous class (no smoothing)."""
    probability = logits.float().softmax(dim=1)[:, 1:2]
    if tuple(probability.shape[-2:]) != tuple(size):
        probability = F.interpolate(probability, size=size, mode="bilinear", align_corners=False)
    return probability


def topk_mean(maps: torch.Tensor, k: int) -> torch.Tensor:
    """B x 1 x H x W -> B: mean of each map's k highest pixels (all pixels when fewer)."""
    flat = maps.flatten(1).float()
    return flat.topk(min(int(k), flat.shape[1]), dim=1).values.mean(dim=1)
