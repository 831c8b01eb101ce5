"""Teacher features of training images, computed once.

DFSC trains without augmentation and its teacher is frozen, so the teacher's output
for a training image never changes after `prepare`: caching it removes the teacher
forward (~40% of a DFSC-S inference) from every training step after the first epoch.

Entries are keyed by the dataset index of the batch (`batch["index"]`) and checked
against a fingerprint of the image, so a different image under the same index (another
dataset, an augmenting transform) is recomputed instead of served stale. Features are
stored as float16 (normalised teacher features are O(1); float16 keeps 11 bits, a
relative error below 5e-4); while the cache is on, every target goes through the same
float16 rounding, so training does not depend on what was cached. Memory is capped by
`budget_bytes`: 384 x 56 x 56 float16 = 2.4 MB per 256 px image, so the default 2 GiB
holds ~870 images (every MVTec LOCO / MVTec AD category's training set).

Placement follows the device of the images. On the CPU, entries live in host memory and a
training set larger than the budget is cached in part (each hit saves a teacher forward).
On a GPU, entries stay on the device (no copies) while the training set fits the budget;
the first entry that does not fit turns the cache off for the run (`skipped`), since a
GPU's teacher forward costs less than a partial cache's bookkeeping. Fingerprints are
compared in one batched op per lookup (one host sync, not one per image).
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def fingerprint(images: torch.Tensor) -> torch.Tensor:
    """B x 3 float64 summary of each image (sum, sum of squares, strided sample sum)."""
    flat = images.detach().reshape(images.shape[0], -1).double()
    return torch.stack([flat.sum(1), flat.pow(2).sum(1), flat[:, ::977].sum(1)], dim=1)


class TeacherCache:
    """index -> (fingerprint, float16 features) within a memory budget.

    partial: cache part of a training set larger than the budget (True), or turn the
    cache off when it does not fit (False); None = by device (partial on the CPU only).
    """

    def __init__(self, budget_bytes: int, partial: bool | None = None) -> None:
        self.budget = int(budget_bytes)
        self.partial = partial
        self.entries: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.used = 0
        self.hits = 0
        self.misses = 0
        self.skipped = False

    @property
    def enabled(self) -> bool:
        return self.budget > 0

    def clear(self) -> None:
        self.entries.clear()
        self.used = 0
        self.skipped = False

    def partial_on(self, device: torch.device) -> bool:
        """Whether a training set over the budget is cached in part on `device`."""
        return device.type == "cpu" if self.partial is None else self.partial

    def lookup(self, images: torch.Tensor, index: torch.Tensor,
               compute: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """B x C x P x P float32 teacher features of `images` (dataset indices `index`)."""
        if self.skipped:
            return compute(images)
        keys = [int(i) for i in index.reshape(-1).tolist()]
        prints = fingerprint(images)  # B x 3, on the images' device
        stored = [self.entries.get(key) for key in keys]
        have = [row for row, entry in enumerate(stored) if entry is not None]
        found: dict[int, torch.Tensor] = {}
        if have:
            ref = torch.stack([stored[row][0] for row in have])
            same = torch.isclose(ref, prints[have], rtol=1e-9, atol=1e-9).all(dim=1).tolist()  # one host sync
            found = {row: stored[row][1] for row, ok in zip(have, same) if ok}
        missing = [row for row in range(len(keys)) if row not in found]
        self.hits += len(found)
        self.misses += len(missing)
        if missing:
            rows = torch.tensor(missing, device=images.device)
            fresh = compute(images if len(missing) == len(keys) else images.index_select(0, rows)).half()
            for j, row in enumerate(missing):
                found[row] = fresh[j]
                if keys[row] in self.entries or self.skipped:
                    continue
                nbytes = fresh[j].numel() * fresh.element_size()
                if self.used + nbytes <= self.budget:
                    self.entries[keys[row]] = (prints[row].clone(), fresh[j].clone())
                    self.used += nbytes
                elif not self.partial_on(images.device):  # over the budget: no cache at all
                    self.clear()
                    self.skipped = True
        return torch.stack([found[row].float() for row in range(len(keys))])
