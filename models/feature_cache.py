"""Frozen-backbone features of training images, computed once, for any method.

A method that trains without augmentation on top of a frozen feature extractor
(FOD, DFSC's teacher, ...) computes the same features for a training image at every
epoch. `FeatureCache.lookup(images, index, compute)` serves them from memory instead.

- Keyed by the dataset index (`batch["index"]`, which the training loop's batches
  carry) and checked against a fingerprint of the image, so a different image under
  the same index (another dataset, an augmenting transform) is recomputed, never
  served stale.
- Memory-bounded: entries are added until `budget_bytes` is used; later images are
  computed every time (no eviction churn).
- Device-aware: CPU features are kept in RAM. CUDA features are kept on the device
  when the whole budget fits in half of the device's free memory at the first insert,
  else in pinned host memory and copied back asynchronously (`placement`).
- Exact: entries keep the computed dtype unless `dtype` is given, so a hit returns the
  very tensor a fresh computation gives.

`compute` maps a batch of images (B x ...) to a tuple of per-level tensors (B x ...).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

#: fraction of the free CUDA memory the cache may take to live on the device
DEVICE_FRACTION = 0.5


def image_fingerprint(images: torch.Tensor) -> torch.Tensor:
    """B x 3 float64 on the CPU: per image the sum, the sum of squares, and a position-weighted
    sum (so a shifted or permuted image differs), computed on the images' device."""
    flat = images.detach().flatten(1).double()
    ramp = torch.linspace(-1.0, 1.0, flat.shape[1], dtype=torch.float64, device=flat.device)
    return torch.stack([flat.sum(1), flat.square().sum(1), (flat * ramp).sum(1)], dim=1).cpu()


class FeatureCache:
    """dataset index -> (fingerprint, tuple of feature tensors) within a memory budget."""

    def __init__(self, budget_bytes: int, dtype: torch.dtype | None = None) -> None:
        self.budget = int(budget_bytes)
        self.dtype = dtype
        self.entries: dict[int, tuple[torch.Tensor, tuple[torch.Tensor, ...]]] = {}
        self.used = 0
        self.hits = 0
        self.misses = 0
        #: where entries live: None (nothing stored yet), "device" or "host"
        self.placement: str | None = None

    @property
    def enabled(self) -> bool:
        return self.budget > 0

    def clear(self) -> None:
        self.entries.clear()
        self.used = 0
        self.placement = None

    def __len__(self) -> int:
        return len(self.entries)

    def _place(self, device: torch.device) -> str:
        if self.placement is None:
            if device.type == "cuda":
                free, _ = torch.cuda.mem_get_info(device)
                self.placement = "device" if self.budget <= DEVICE_FRACTION * free else "host"
            else:
                self.placement = "device"  # CPU: the device is the RAM
        return self.placement

    def _store(self, tensor: torch.Tensor) -> torch.Tensor:
        tensor = tensor.detach().to(self.dtype or tensor.dtype).clone()
        if self.placement == "host" and tensor.is_cuda:
            tensor = tensor.to("cpu").pin_memory()
        return tensor

    def lookup(self, images: torch.Tensor, index: torch.Tensor | Sequence[int],
               compute: Callable[[torch.Tensor], Sequence[torch.Tensor]]) -> tuple[torch.Tensor, ...]:
        """The features of `images` (dataset indices `index`): cached rows where the
        fingerprint matches, the rest from `compute` (and stored while the budget lasts)."""
        keys = [int(i) for i in torch.as_tensor(index).reshape(-1).tolist()]
        if not self.enabled:
            return tuple(compute(images))
        prints = image_fingerprint(images)
        rows: dict[int, tuple[torch.Tensor, ...]] = {}
        for row, key in enumerate(keys):
            entry = self.entries.get(key)
            if entry is not None and torch.equal(entry[0], prints[row]):
                rows[row] = entry[1]
        missing = [row for row in range(len(keys)) if row not in rows]
        self.hits += len(rows)
        self.misses += len(missing)
        if len(missing) == len(keys):
            fresh = tuple(compute(images))
        elif missing:
            fresh = tuple(compute(images.index_select(0, torch.tensor(missing, device=images.device))))
        else:
            fresh = ()
        if self.dtype is not None:  # every result goes through the same rounding, cached or not
            fresh = tuple(f.to(self.dtype) for f in fresh)
        if missing:
            self._place(fresh[0].device)
        for j, row in enumerate(missing):
            level_rows = tuple(f[j] for f in fresh)
            rows[row] = level_rows
            nbytes = sum(t.numel() * t.element_size() for t in level_rows)
            if keys[row] not in self.entries and self.used + nbytes <= self.budget:
                self.entries[keys[row]] = (prints[row], tuple(self._store(t) for t in level_rows))
                self.used += nbytes
        if len(missing) == len(keys):
            return fresh
        device = images.device
        levels = len(rows[0])
        return tuple(torch.stack([rows[row][level].to(device, non_blocking=True) for row in range(len(keys))])
                     for level in range(levels))
