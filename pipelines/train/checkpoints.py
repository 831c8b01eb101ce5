"""One file holds everything needed to score (and to resume training): `model.pt`."""

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


def save_model(path: str | Path, method: Method, extra: dict[str, Any] | None = None) -> Path:
    """Write method name, config, weights + statistics (and e.g. training state) to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FORMAT,
        "method": method.name,
        "config": method.config.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in method.state_dict().items()},
        **(extra or {}),
    }
    tmp = path.with_suffix(".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)  # never leave a half-written model behind
    return path


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
    tmp = Path(path).with_suffix(".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)
