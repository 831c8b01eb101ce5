"""The training loop's session without Ray, shared by the loop tests (tests/ is on the path)."""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from logicad.pipelines.train.checkpoints import MODEL_FILE, read_model_file
from logicad.pipelines.train.session import TuneSession


class LocalSession(TuneSession):
    """The loop's session without Ray: CPU, an optional checkpoint to resume from, reports kept."""

    def __init__(self, checkpoint_dir: Path | None = None) -> None:
        self.checkpoint_dir, self.reports = checkpoint_dir, []

    def device(self) -> torch.device:
        return torch.device("cpu")

    def latest_checkpoint(self):
        if self.checkpoint_dir is None:
            return None
        directory = self.checkpoint_dir

        class _Checkpoint:
            @contextlib.contextmanager
            def as_directory(self):
                yield str(directory)

        return _Checkpoint()

    def report(self, metrics: dict, checkpoint_dir: Path | None) -> None:
        payload = read_model_file(checkpoint_dir / MODEL_FILE) if checkpoint_dir else None
        self.reports.append((metrics, payload))
