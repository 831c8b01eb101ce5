"""Where the training loop runs: a Ray Train worker (DDP) or a Ray Tune trial (one process).

The loop (`worker.run_loop`) asks its session for the device, the checkpoint to resume
from, model/loader preparation and reporting; everything else is shared, so a sweep's
trial trains exactly as `logicad train` does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from .distributed import DeviceLoader


class TrainSession:
    """Inside `TorchTrainer`: DDP via `prepare_model`, reports through `ray.train`."""

    def device(self) -> torch.device:
        import ray.train.torch

        return ray.train.torch.get_device()

    def latest_checkpoint(self):
        import ray.train

        return ray.train.get_checkpoint()

    def prepare_model(self, method: torch.nn.Module, find_unused_parameters: bool) -> torch.nn.Module:
        """DDP-wrapped `method`; a method with no trainable parameter (statistics only, e.g. a
        memory bank on frozen features) as is: DDP refuses it and would have nothing to reduce."""
        import ray.train.torch

        if not any(p.requires_grad for p in method.parameters()):
            return method
        return ray.train.torch.prepare_model(
            method, parallel_strategy_kwargs={"find_unused_parameters": find_unused_parameters})

    def prepare_loader(self, loader: DataLoader, device: torch.device):
        import ray.train.torch

        return ray.train.torch.prepare_data_loader(loader, add_dist_sampler=False, move_to_device=True)

    def report(self, metrics: dict[str, Any], checkpoint_dir: Path | None) -> None:
        """A barrier over workers; `checkpoint_dir` is attached when given (rank 0)."""
        import ray.train

        checkpoint = ray.train.Checkpoint.from_directory(str(checkpoint_dir)) if checkpoint_dir else None
        ray.train.report(metrics, checkpoint=checkpoint)


class TuneSession(TrainSession):
    """Inside a Tune function trainable: one process, reports through `ray.tune` (ASHA sees them)."""

    def device(self) -> torch.device:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")

    def latest_checkpoint(self):
        import ray.tune

        return ray.tune.get_checkpoint()

    def prepare_model(self, method: torch.nn.Module, find_unused_parameters: bool) -> torch.nn.Module:
        return method

    def prepare_loader(self, loader: DataLoader, device: torch.device):
        return DeviceLoader(loader, device)

    def report(self, metrics: dict[str, Any], checkpoint_dir: Path | None) -> None:
        import ray.tune

        checkpoint = ray.tune.Checkpoint.from_directory(str(checkpoint_dir)) if checkpoint_dir else None
        ray.tune.report(metrics, checkpoint=checkpoint)
