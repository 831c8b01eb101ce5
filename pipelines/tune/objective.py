"""The tuning objective: leak-free by default.

MVTec LOCO's validation split holds only normal images, so tuning on test AUROC would
leak the test set. The default objective ("synthetic") is the image AUROC of
validation normals against anomalies synthesised from them (structural: Perlin-masked
textures, or drawn scratches, stains and dents; logical: whole objects added or taken away,
or regions moved, swapped or removed; see `logicad.data.anomaly_synthesis`), fixed by seed so
every trial sees the same images. A model is scored only on structural families it did not
train on (`held_out_families`). "test" scores the test split instead, for paper-style
reproduction, and is recorded as such.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from logicad.data import AnomalyDataset
from logicad.models.base import Method

from ..evaluate.scoring import evaluate_method, score_batches
from ..catalogue import OBJECTIVES
from ..evaluate.metrics import image_aurocs

OBJECTIVE_METRIC = "objective"


def held_out_families(method: Method) -> list[str]:
    """The structural anomaly families the synthetic objective scores `method` on: those of no
    training-set view it learnt from (a model trained to find Perlin-masked textures would find
    them in the objective too, whatever it does on real defects); all if it learnt from every one."""
    from logicad.data.anomaly_synthesis import STRUCTURAL_FAMILIES
    from logicad.data.views import synthesis_families

    seen = {family for view in method.training_views() for family in synthesis_families(view)}
    return [family for family in STRUCTURAL_FAMILIES if family not in seen] or list(STRUCTURAL_FAMILIES)


def synthetic_objective_set(method: Method, normals: AnomalyDataset, seed: int = 0, per_normal: int = 1):
    """Validation normals + `per_normal` synthesised anomalies of each kind per normal, the
    structural ones of `held_out_families(method)`."""
    from logicad.data.anomaly_synthesis import SyntheticAnomalySet

    return SyntheticAnomalySet(normals, seed=seed, n_per_kind=per_normal * len(normals),
                               structural_families=held_out_families(method))


def objective_metrics(method: Method, objective: str, dataset: str, root: str | Path, category: str | None,
                      val_set: AnomalyDataset, device: torch.device, seed: int = 0) -> dict[str, float]:
    """{objective, objective_logical, objective_structural}: image AUROCs on the objective's set."""
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r}; expected one of {list(OBJECTIVES)}")
    if objective == "test":
        metrics, _ = evaluate_method(method, dataset, root, category, device)
        aurocs = {k: metrics[k] for k in ("image_auroc", "image_auroc_logical", "image_auroc_structural")}
    else:
        anomalies = synthetic_objective_set(method, val_set, seed)
        scored = list(score_batches(method, anomalies, device))
        kinds = [anomalies[i]["kind"] for i, _, _ in scored]
        aurocs = image_aurocs(np.asarray([s for _, _, s in scored]), kinds)
    return {OBJECTIVE_METRIC: aurocs["image_auroc"], f"{OBJECTIVE_METRIC}_logical": aurocs["image_auroc_logical"],
            f"{OBJECTIVE_METRIC}_structural": aurocs["image_auroc_structural"]}
