"""GLCF's distances between feature maps (METHODS.md, GLCF "Loss" and "Score").

Both take B x C x H x W maps (cast to float32 here, so bf16 autocast outputs are fine):

- `l2` (default, the paper version): squared error averaged over channels and positions.
  The paper writes a sum over positions, which weights the stride-4 map 16x more than the
  stride-16 one; the average keeps the three scales comparable.
- `cos` (the authors' later version): 1 - cosine similarity over channels, averaged over
  positions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

DISTANCES = ("l2", "cos")


def distance_map(a: torch.Tensor, b: torch.Tensor, kind: str = "l2") -> torch.Tensor:
    """B x C x H x W pair -> B x H x W: mean_c (a - b)^2 (`l2`) or 1 - cos_c(a, b) (`cos`)."""
    a, b = a.float(), b.float()
    if kind == "l2":
        return (a - b).pow(2).mean(dim=1)
    if kind == "cos":
        return 1.0 - F.cosine_similarity(a, b, dim=1, eps=1e-8)
    raise ValueError(f"distance must be one of {DISTANCES}, got {kind!r}")


def distance(a: torch.Tensor, b: torch.Tensor, kind: str = "l2") -> torch.Tensor:
    """Scalar d(a, b): `distance_map` averaged over images and positions."""
    return distance_map(a, b, kind).mean()


def multiscale(a: dict[int, torch.Tensor], b: dict[int, torch.Tensor], kind: str = "l2") -> torch.Tensor:
    """sum over the scales of `a` of d(a_s, b_s) (all weights 1, as in the paper)."""
    return torch.stack([distance(a[s], b[s], kind) for s in sorted(a)]).sum()


def glcf_losses(teacher: dict[int, torch.Tensor], phi_g: dict[int, torch.Tensor], psi_l: dict[int, torch.Tensor],
                psi_g: dict[int, torch.Tensor], kind: str = "l2") -> dict[str, torch.Tensor]:
    """{"l_el": d(Phi_L, Psi_L), "l_c": d(Phi_G, Phi_L), "l_eg": d(Phi_G, Psi_G)}, each summed
    over the target scales. No stop-gradients: l_eg moves both Phi_G and Psi_G."""
    return {"l_el": multiscale(teacher, psi_l, kind), "l_c": multiscale(phi_g, teacher, kind),
            "l_eg": multiscale(phi_g, psi_g, kind)}
