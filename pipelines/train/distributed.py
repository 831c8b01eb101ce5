"""torch.distributed-backed reductions for methods' statistics (gloo on CPU, NCCL on GPU)."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, Subset

from logicad.models.base import Collective


def world() -> tuple[int, int]:
    """(rank, world size); (0, 1) outside a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class TorchCollective(Collective):
    """Sums and concatenations over every worker of the process group."""

    def __init__(self) -> None:
        self.world_size = world()[1]

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.world_size == 1:
            return tensor
        out = tensor.detach().clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out

    def cat(self, tensor: torch.Tensor) -> torch.Tensor:
        """Rows of every worker in rank order; workers may hold different numbers of rows."""
        if self.world_size == 1:
            return tensor
        count = torch.tensor([tensor.shape[0]], device=tensor.device)
        counts = [torch.zeros_like(count) for _ in range(self.world_size)]
        dist.all_gather(counts, count)
        longest = int(max(c.item() for c in counts))
        padded = tensor.new_zeros((longest, *tensor.shape[1:]))
        padded[: tensor.shape[0]] = tensor
        gathered = [torch.zeros_like(padded) for _ in range(self.world_size)]
        dist.all_gather(gathered, padded.contiguous())
        return torch.cat([g[: int(c.item())] for g, c in zip(gathered, counts)])


def shard(dataset: Dataset, rank: int, world_size: int) -> Dataset:
    """Every `world_size`-th item from `rank`: disjoint shards, no padding, so statistics
    summed over workers equal one process's over the whole set."""
    return Subset(dataset, list(range(rank, len(dataset), world_size))) if world_size > 1 else dataset


def to_device(batch: Any, device: torch.device) -> Any:
    """Tensors of a (nested) batch moved to `device`; other values untouched."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


class DeviceLoader:
    """Iterate a DataLoader with every batch moved to `device`."""

    def __init__(self, loader: DataLoader, device: torch.device) -> None:
        self.loader, self.device = loader, device

    def __iter__(self):
        for batch in self.loader:
            yield to_device(batch, self.device)

    def __len__(self) -> int:
        return len(self.loader)
