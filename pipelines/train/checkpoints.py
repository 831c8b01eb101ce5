"""One file holds everything needed to score: `model.pt`.

Two flavours of the same format: the full file a Ray checkpoint holds during training (weights,
statistics and the optimizers' and schedulers' state, which resuming reads) and the lean file
that is registered and kept in outputs/ (weights, config, statistics, thresholds and a summary
of the training, no optimizer state). `read_model_file` reads both, and files written before the
lean one existed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from logicad.models.backbones import restoring_saved_weights
from logicad.models.base import Method, build_method, method_class

MODEL_FILE = "model.pt"
FORMAT = "logicad-model-v1"


class ModelFileError(ValueError):
    """A path that is not a logicad model file; the message names it."""


#: keys of a payload's "training" entry that only resuming reads (the Ray checkpoints keep them)
RESUME_ONLY = ("optimizers", "schedulers")


def save_model(path: str | Path, method: Method, extra: dict[str, Any] | None = None, lean: bool = False) -> Path:
    """Write method name, config, weights + statistics (and e.g. training state) to `path`;
    `lean` drops the optimizer and scheduler state (see `lean_payload`)."""
    payload = {
        "format": FORMAT,
        "method": method.name,
        "config": method.config.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in method.state_dict().items()},
        **(extra or {}),
    }
    return write_payload(path, lean_payload(payload) if lean else payload)


def write_payload(path: str | Path, payload: dict[str, Any]) -> Path:
    """torch.save `payload` to `path` through a temporary name, so no half-written model is left."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)  # a hard link to `path` elsewhere keeps the old contents
    return path


def lean_payload(payload: dict[str, Any]) -> dict[str, Any]:
    """The payload without optimizer and scheduler state: what scoring and a registry need.
    The training summary (stage, step, finished, health) stays; `payload` is not changed."""
    training = payload.get("training")
    if not isinstance(training, dict):
        return dict(payload)
    return {**payload, "training": {k: v for k, v in training.items() if k not in RESUME_ONLY}}


def has_resume_state(payload: dict[str, Any]) -> bool:
    """Whether the payload holds optimizer or scheduler state (a full, resumable file)."""
    training = payload.get("training")
    return isinstance(training, dict) and any(training.get(k) for k in RESUME_ONLY)


def save_lean_copy(source: str | Path, dest: str | Path, **fields: Any) -> Path:
    """Write the lean form of the model file `source` (plus top-level `fields`, e.g. thresholds)
    to `dest`; `source` and `dest` may be the same file."""
    payload = lean_payload(read_model_file(source))
    payload.update(fields)
    return write_payload(dest, payload)


def read_model_file(path: str | Path) -> dict[str, Any]:
    """The payload of a model file (a directory means its model.pt); clear error otherwise."""
    path = Path(path)
    if path.is_dir():
        path = path / MODEL_FILE
    if not path.is_file():
        raise ModelFileError(f"{path}: model file not found; expected a {MODEL_FILE} written by logicad train")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # torch raises many types for a bad file
        raise ModelFileError(f"{path}: not a logicad model file ({exc.__class__.__name__})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ModelFileError(f"{path}: not a logicad model file (expected format {FORMAT})")
    return payload


def method_from_payload(payload: dict[str, Any]) -> Method:
    """A method in eval mode with the payload's config, weights and statistics."""
    config = method_class(payload["method"]).config_cls.build(payload["config"])
    with restoring_saved_weights():  # the backbones' weights come from the state dict below
        method = build_method(payload["method"], config)
    method.load_state_dict(payload["state_dict"])
    return method.eval()


def load_model(path: str | Path) -> Method:
    return method_from_payload(read_model_file(path))


def update_model_file(path: str | Path, **fields: Any) -> None:
    """Add or replace top-level fields (e.g. the verdict threshold) of a model file in place."""
    payload = read_model_file(path)
    payload.update(fields)
    write_payload(path, payload)
