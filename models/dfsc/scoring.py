"""DFSC scoring: EfficientAD's quantile normalisation of the two difference maps, then
DFSC's sigmoid (so a negative region of one map cannot cancel a positive region of the
other), averaged, padded and resized to the input size.

`map_norm="linear"` is EfficientAD's own scoring (the ablation of DFSC's sigmoid): the
quantile-normalised maps averaged as they are, zero-padded; unbounded, and negative
where both maps lie below their q_low quantile.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

#: EfficientAD pads the PDN map by 4 on each side before resizing (33 px patches at stride 4)
MAP_PADDING = 4
#: "sigmoid" (DFSC) or "linear" (EfficientAD)
MAP_NORMS = ("sigmoid", "linear")
#: which difference maps the final map averages: both (the papers'), or one branch alone
#: (an ablation: the student-teacher map sees local defects, the autoencoder map the layout)
BRANCHES = ("both", "st", "ae")


def difference_maps(teacher: torch.Tensor, student: torch.Tensor, ae: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(map_st, map_ae), each B x P x P float32.

    teacher: B x C x P x P (normalised), student: B x 2C x P x P, ae: B x C x P x P.
    map_st = mean_c (T - S[:C])^2, map_ae = mean_c (A - S[C:])^2.
    """
    c = teacher.shape[1]
    teacher, student, ae = teacher.float(), student.float(), ae.float()
    map_st = (teacher - student[:, :c]).pow(2).mean(dim=1)
    map_ae = (ae - student[:, c:]).pow(2).mean(dim=1)
    return map_st, map_ae


def normalise(raw: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """EfficientAD: 0.1 * (m - q_a) / (q_b - q_a), q = (q_a, q_b)."""
    return 0.1 * (raw - q[0]) / (q[1] - q[0]).clamp_min(1e-12)


def combine(map_st: torch.Tensor, map_ae: torch.Tensor, q_st: torch.Tensor, q_ae: torch.Tensor,
            image_size: tuple[int, int], map_norm: str = "sigmoid", branches: str = "both") -> torch.Tensor:
    """B x P x P raw maps -> B x 1 x H x W final map.

    "sigmoid" (DFSC): sigmoid(normalised map_st) and sigmoid(normalised map_ae) averaged,
    in (0, 1); padded by 4 with 0.5 (= EfficientAD's zero padding of the normalised maps,
    through the sigmoid). "linear" (EfficientAD): the normalised maps averaged, padded
    with 0. Then a bilinear resize to `image_size`. `branches` "st" or "ae" keeps one
    normalised map alone (same normalisation and padding).
    """
    if map_norm not in MAP_NORMS:
        raise ValueError(f"map_norm must be one of {MAP_NORMS}, got {map_norm!r}")
    if branches not in BRANCHES:
        raise ValueError(f"branches must be one of {BRANCHES}, got {branches!r}")
    n_st, n_ae = normalise(map_st, q_st), normalise(map_ae, q_ae)
    if map_norm == "sigmoid":
        n_st, n_ae = torch.sigmoid(n_st), torch.sigmoid(n_ae)
    if branches == "both":
        combined = 0.5 * (n_st + n_ae)
    else:
        combined = n_st if branches == "st" else n_ae
    pad = 0.5 if map_norm == "sigmoid" else 0.0
    padded = F.pad(combined[:, None], (MAP_PADDING,) * 4, value=pad)
    return F.interpolate(padded, size=image_size, mode="bilinear", align_corners=False)
