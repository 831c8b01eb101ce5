"""Parameter-free references on pretrained features: what the features give with no training.

Both are the project's own statistics-only methods, fitted in-process on the training split:
- `patchcore` with `coreset_ratio=1.0` (the whole memory bank): every test patch's distance to
  its nearest training patch, features at strides 8 and 16 pooled 3x3; the image score is the
  map's maximum. Strong on structural defects and fixed layouts, blind to a logical rule that no
  single patch breaks (items anywhere in a bag).
- `global_gaussian`: a Gaussian (Ledoit-Wolf) of mean- and max-pooled whole-image descriptors;
  the Mahalanobis distance is the image score. Sees counts and global arrangement, not small
  defects.

Both read the backbone the methods' presets use (tf_efficientnet_lite0 + imagenet-lite0).
`reference_metrics` scores a category's test split with both (results-contract metrics).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from logicad.data import load_defects, load_split
from logicad.data.dataset import sample_regions
from logicad.models.base import build_method
from logicad.pipelines.evaluate.metrics import compute_metrics
from logicad.pipelines.evaluate.scoring import score_batches, to_original_size

#: name -> (method, config overrides)
REFERENCES: dict[str, tuple[str, dict[str, Any]]] = {
    "patch_nn": ("patchcore", {"coreset_ratio": 1.0}),
    "global_gaussian": ("global_gaussian", {}),
}


def reference_metrics(data: Path, category: str, image_size: int = 128) -> dict[str, dict[str, Any]]:
    """{reference name: metrics} on the category's test split (maps at each image's original
    size, as `evaluate` scores them), each fitted on the category's training split."""
    test = load_split("mvtec_loco", data, category, "test", image_size)
    defects = load_defects("mvtec_loco", data, category)
    regions = [sample_regions(s, defects) for s in test.samples]
    out = {}
    for name, (method_name, overrides) in REFERENCES.items():
        start = time.perf_counter()
        method = build_method(method_name, image_size=image_size, **overrides)
        train = load_split("mvtec_loco", data, category, "train", image_size)
        method.prepare(DataLoader(train, batch_size=method.config.batch_size))
        method.finalize(DataLoader(train, batch_size=method.config.batch_size))
        scored = sorted(score_batches(method.eval(), test, torch.device("cpu")), key=lambda item: item[0])
        maps = [to_original_size(amap, test.orig_sizes[i]) for i, amap, _ in scored]
        out[name] = compute_metrics([score for _, _, score in scored], [s.kind for s in test.samples], maps, regions)
        out[name]["seconds"] = time.perf_counter() - start
    return out
