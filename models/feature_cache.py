"""Frozen-network features of training images, computed once, for any method.

A method that trains without augmentation on top of a frozen feature extractor (FOD's
backbone, DFSC's teacher) computes the same features for a training image at every epoch.
`FeatureCache.lookup(images, index, compute)` serves them from memory instead.

- Keyed by the dataset index (`batch["index"]`, which the training loop's batches carry)
  and checked against a fingerprint of the image, so a different image under the same index
  (another dataset, an augmenting transform) is recomputed, never served stale. Fingerprints
  are compared in one batched op per lookup (one host sync, not one per image).
- Exact, or rounded the same way every time: entries keep the computed dtype unless `dtype`
  is given (DFSC: float16, half the memory; normalised teacher features are O(1) and float16
  keeps 11 bits). With `dtype` set, every result goes through the same rounding, cached or
  not, so training does not depend on what was cached.
- Memory-bounded by `budget_bytes`; what happens past the budget is `partial`:
  True caches the images that fit and computes the rest every time (no eviction churn);
  False turns the cache off for the run at the first entry that does not fit (`skipped`),
  since on a GPU a partial cache's bookkeeping costs more than the forward it saves;
  None (default) = partial on the CPU, all-or-nothing on a GPU.
- Device-aware: CPU features are kept in RAM. CUDA features are kept on the device when the
  whole budget fits in half of the device's free memory at the first insert, else in pinned
  host memory and copied back asynchronously (`placement`).

`compute` maps a batch of images (B x ...) to a tuple of per-level tensors (B x ...).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

#: fraction of the free CUDA memory the cache may take to live on the device
DEVICE_FRACTION = 0.5


def image_fingerprint(images: torch.Tensor) -> torch.Tensor:
    """B x 3 float64 on the images' device: per image the sum, the sum of squares, and a
    position-weighted sum (so a shifted or permuted image differs)."""
    flat = images.detach().flatten(1).double()
    ramp = torch.linspace(-1.0, 1.0, flat.shape[1], dtype=torch.float64, device=flat.device)
    return torch.stack([flat.sum(1), flat.square().sum(1), (flat * ramp).sum(1)], dim=1)


Levels = tuple[torch.Tensor, ...]


class FeatureCache:
    """dataset index -> (fingerprint, tuple of feature tensors) within a memory budget."""

    def __init__(self, budget_bytes: int, dtype: torch.dtype | None = None, partial: bool | None = None) -> None:
        self.budget = int(budget_bytes)
        self.dtype = dtype
        self.partial = partial
        self.entries: dict[int, tuple[torch.Tensor, Levels]] = {}
        self.used = 0
        self.hits = 0
        self.misses = 0
        #: the training set did not fit and `partial` is off: every lookup computes
        self.skipped = False
        #: where entries live: None (nothing stored yet), "device" or "host"
        self.placement: str | None = None

    @property
    def enabled(self) -> bool:
        return self.budget > 0

    def clear(self) -> None:
        self.entries.clear()
        self.used = 0
        self.skipped = False
        self.placement = None

    def __len__(self) -> int:
        return len(self.entries)

    def partial_on(self, device: torch.device) -> bool:
        """Whether a training set over the budget is cached in part on `device`."""
        return device.type == "cpu" if self.partial is None else self.partial

    def lookup(self, images: torch.Tensor, index: torch.Tensor | Sequence[int],
               compute: Callable[[torch.Tensor], Sequence[torch.Tensor]]) -> Levels:
        """The features of `images` (dataset indices `index`): cached rows where the
        fingerprint matches, the rest from `compute` (stored while the budget lasts)."""
        if not self.enabled or self.skipped:  # no cache: the computed features as they are
            return tuple(compute(images))
        keys = [int(i) for i in torch.as_tensor(index).reshape(-1).tolist()]
        prints = image_fingerprint(images)
        found = self._hits(keys, prints)
        missing = [row for row in range(len(keys)) if row not in found]
        self.hits += len(found)
        self.misses += len(missing)
        if not missing:
            return self._stacked(found, len(keys), images.device)
        rows = torch.tensor(missing, device=images.device)
        fresh = self._rounded(tuple(compute(images if len(missing) == len(keys) else images.index_select(0, rows))))
        self._place(fresh[0].device)
        for j, row in enumerate(missing):
            found[row] = tuple(f[j] for f in fresh)
            self._insert(keys[row], prints[row], found[row], images.device)
        return fresh if len(missing) == len(keys) else self._stacked(found, len(keys), images.device)

    def _hits(self, keys: list[int], prints: torch.Tensor) -> dict[int, Levels]:
        """{row: cached levels} for the rows whose stored fingerprint equals the image's."""
        have = [row for row, key in enumerate(keys) if key in self.entries]
        if not have:
            return {}
        ref = torch.stack([self.entries[keys[row]][0] for row in have]).to(prints.device)
        same = (ref == prints[have]).all(dim=1).tolist()  # one host sync
        return {row: self.entries[keys[row]][1] for row, ok in zip(have, same) if ok}

    def _insert(self, key: int, fingerprint: torch.Tensor, levels: Levels, device: torch.device) -> None:
        if key in self.entries or self.skipped:
            return
        nbytes = sum(t.numel() * t.element_size() for t in levels)
        if self.used + nbytes <= self.budget:
            self.entries[key] = (fingerprint.clone(), tuple(self._store(t) for t in levels))
            self.used += nbytes
        elif not self.partial_on(device):  # over the budget: no cache at all
            self.clear()
            self.skipped = True

    def _rounded(self, levels: Levels) -> Levels:
        return levels if self.dtype is None else tuple(t.to(self.dtype) for t in levels)

    def _place(self, device: torch.device) -> str:
        if self.placement is None:
            if device.type == "cuda":
                free, _ = torch.cuda.mem_get_info(device)
                self.placement = "device" if self.budget <= DEVICE_FRACTION * free else "host"
            else:
                self.placement = "device"  # CPU: the device is the RAM
        return self.placement

    def _store(self, tensor: torch.Tensor) -> torch.Tensor:
        tensor = tensor.detach().clone()
        if self.placement == "host" and tensor.is_cuda:
            tensor = tensor.to("cpu").pin_memory()
        return tensor

    @staticmethod
    def _stacked(rows: dict[int, Levels], n: int, device: torch.device) -> Levels:
        """The rows as one batch per level, in their stored dtype: outside autocast, which
        would otherwise cast (or, on a CPU, refuse) float16 entries under a bf16 step."""
        levels = len(rows[0])
        with torch.autocast(device.type, enabled=False):
            return tuple(torch.stack([rows[row][level].to(device, non_blocking=True) for row in range(n)])
                         for level in range(levels))
