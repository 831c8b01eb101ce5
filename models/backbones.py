"""Frozen feature extractors from timm (`features_only`), with explicit weight sources.

`create_backbone(name, weights)` builds any timm model that supports `features_only`
and says where its weights came from:

- a local file path (.pth / .pt / .bin / .safetensors holding the model's state dict,
  e.g. `torch.save(timm.create_model(name, pretrained=True).state_dict(), PATH)` on a
  machine with internet): loaded through timm's `pretrained_cfg_overlay=dict(file=PATH)`;
- "hub": timm's own pretrained download (Hugging Face hub). Offline (HF_HUB_OFFLINE=1,
  or no network) this fails fast with `BackboneWeightsError`;
- None / "" / "random": random init, with one logged warning per backbone name. Residual
  branches are left live (timm's `zero_init_last=False` where the model takes it): timm
  zero-initialises each block's last norm by default, which is a good start for training
  but leaves a *frozen* random ResNet an identity stack of strided 1x1 projections whose
  receptive field is the stem's (one perturbed pixel moved one layer3 position).

timm is imported through `torchvision_ops.import_timm`, which works with any
torch/torchvision pair (see that module).
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

from torch import nn

from .torchvision_ops import import_timm

log = logging.getLogger(__name__)
_WARNED_RANDOM: set[str] = set()
#: True inside `restoring_saved_weights()`: backbones built there get a saved state dict next
_RESTORING: contextvars.ContextVar[bool] = contextvars.ContextVar("restoring_saved_weights", default=False)


@contextlib.contextmanager
def restoring_saved_weights() -> Iterator[None]:
    """Backbones built inside are placeholders for a saved model's state dict, so their random
    init is not announced (the warning would be wrong for a model trained with pretrained weights)."""
    token = _RESTORING.set(True)
    try:
        yield
    finally:
        _RESTORING.reset(token)


RANDOM = "random"
HUB = "hub"


class BackboneWeightsError(RuntimeError):
    """Backbone weights that cannot be loaded; the message names the backbone and source."""


def create_backbone(name: str, weights: str | None = None, out_indices: Sequence[int] = (2, 3),
                    **kwargs) -> tuple[nn.Module, str]:
    """(timm features_only model, weights source) for backbone `name`.

    weights: a local file path, "hub", or None/""/"random" (see module doc). The source
    is "file:<path>", "hub" or "random". Extra kwargs go to `timm.create_model`.
    The model is returned in train mode with gradients on; callers freeze it as needed.
    For ResNets, out_indices (2, 3) are layer2 (stride 8) and layer3 (stride 16).
    """
    timm = import_timm()
    arch, _ = timm.models.split_model_name_tag(name)
    if not timm.is_model(arch):
        raise BackboneWeightsError(f"unknown timm model {name!r}; see timm.list_models()")
    common = dict(features_only=True, out_indices=tuple(out_indices), **kwargs)
    if weights in (None, "", RANDOM):
        if name not in _WARNED_RANDOM and not _RESTORING.get():
            log.warning("backbone %s: random init (no pretrained weights given); features are not pretrained", name)
            _WARNED_RANDOM.add(name)
        return _create_random(timm, name, common), RANDOM
    if weights == HUB:
        try:
            return timm.create_model(name, pretrained=True, **common), HUB
        except Exception as exc:  # hub/network errors come in many types
            offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
            why = "HF_HUB_OFFLINE is set" if offline else f"{exc.__class__.__name__}: {str(exc)[:200]}"
            raise BackboneWeightsError(
                f"pretrained weights for {name} are not available offline from the timm hub ({why}); "
                f"pass a local weights file instead (a state dict saved with torch.save or .safetensors)"
            ) from None
    path = Path(weights)
    if not path.is_file():
        raise BackboneWeightsError(
            f"{path}: backbone weights file not found for {name}; expected a state dict file "
            f"(.pth/.pt/.bin/.safetensors), 'hub', or no weights for random init"
        )
    expected = f"expected the state dict of timm.create_model({name!r})"
    try:
        with _timm_load_report() as report:
            model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": str(path)}, **common)
    except Exception as exc:
        raise BackboneWeightsError(
            f"{path}: cannot load as {name} weights ({exc.__class__.__name__}: {str(exc)[:300]}); {expected}"
        ) from None
    # timm loads features_only models non-strictly (their head is dropped) and only logs
    # what did not fit: missing keys that the feature model has, or unexpected keys, are errors
    kept = set(model.state_dict())
    missing = [k for k in report.get("Missing keys", []) if k in kept]
    unexpected = report.get("Unexpected keys", [])
    if missing or unexpected:
        raise BackboneWeightsError(
            f"{path}: cannot load as {name} weights (missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}); {expected}"
        )
    return model, f"file:{path}"


def _create_random(timm, name: str, common: dict) -> nn.Module:
    """Random-init timm model with live residual branches where the architecture has the switch."""
    if "zero_init_last" in common:
        return timm.create_model(name, pretrained=False, **common)
    try:
        return timm.create_model(name, pretrained=False, zero_init_last=False, **common)
    except TypeError as exc:  # architectures without residual zero-init (Swin, ConvNeXt, ...)
        if "zero_init_last" not in str(exc):
            raise
        return timm.create_model(name, pretrained=False, **common)


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.keys: dict[str, list[str]] = {}

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        for kind in ("Missing keys", "Unexpected keys"):
            if message.startswith(kind + " ("):
                inside = message[len(kind) + 2:].split(")", 1)[0]
                self.keys.setdefault(kind, []).extend(k.strip() for k in inside.split(",") if k.strip())


@contextlib.contextmanager
def _timm_load_report() -> Iterator[dict[str, list[str]]]:
    """{"Missing keys": [...], "Unexpected keys": [...]} as timm reports them while loading a file."""
    logger = logging.getLogger("timm.models._builder")
    handler, level = _Collect(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield handler.keys
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def feature_channels(model: nn.Module) -> list[int]:
    """Channels of each returned feature level (timm feature_info)."""
    return list(model.feature_info.channels())


def feature_reductions(model: nn.Module) -> list[int]:
    """Stride of each returned feature level relative to the input."""
    return list(model.feature_info.reduction())
