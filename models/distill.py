"""Teacher pre-training for DFSC / EfficientAD: distil a PDN-S from a pretrained backbone.

EfficientAD (Batzner et al. 2023, sec. 3.1) trains the PDN teacher once, on ImageNet,
to regress the features of a WideResNet-101 that PatchCore uses: layer 2 and layer 3,
locally aggregated, brought to one resolution, concatenated and reduced to 384
channels. Here any image iterable and any timm `features_only` backbone work.

The fixed target (`FeatureTarget`, no trainable parameters), for images B x 3 x S x S:

1. the backbone sees the images at `backbone_image_size` (EfficientAD: 512 px for a
   256 px PDN); levels `out_indices` (ResNets: (2, 3) = layer2 at stride 8, layer3 at
   stride 16);
2. each level is averaged over 3 x 3 neighbourhoods (PatchCore's local aggregation);
3. deeper levels are upsampled (bilinear) to the first level's size;
4. per location, each level's channel vector is resampled to `embed_dim` (1024) by
   adaptive average pooling over channels, so every level weighs the same; the levels
   are concatenated and pooled the same way to `out_channels` (384): PatchCore's
   parameter-free projection;
5. resized (bilinear, antialiased) to the PDN output size (56 x 56 at 256 px);
6. normalised per channel with mean/std estimated first on up to `norm_batches`
   batches of the images.

The PDN-S is trained with MSE to this target, Adam lr 1e-4, weight decay 1e-5
(EfficientAD's pre-training settings; it also uses random greyscale, left out here).
Pure torch: the pipeline's `distill-teacher` stage wraps it.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .pdn import PDNSmall, check_pdn_state_dict, pdn_output_size, remap_pdn_state_dict

log = logging.getLogger(__name__)
TEACHER_FORMAT = "logicad-pdn-teacher-v1"


class TeacherFileError(ValueError):
    """A teacher weights file that cannot be used; the message names the path and what was expected."""


# --- the target ------------------------------------------------------------------------
class FeatureTarget(nn.Module):
    """Frozen backbone features projected to `out_channels` (see the module doc).

    B x 3 x S x S -> B x out_channels x h x w, h = S_b / stride of the first level
    (64 x 64 for WideResNet layer2 at S_b = 512).
    """

    def __init__(self, backbone: nn.Module, out_channels: int = 384, embed_dim: int = 1024,
                 backbone_image_size: int | None = None) -> None:
        super().__init__()
        self.backbone = backbone.eval().requires_grad_(False)
        self.out_channels = out_channels
        self.embed_dim = embed_dim
        self.backbone_image_size = backbone_image_size

    def train(self, mode: bool = True) -> FeatureTarget:
        super().train(mode)
        self.backbone.eval()  # frozen: batch norm statistics stay fixed
        return self

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        size = self.backbone_image_size
        if size and images.shape[-2:] != (size, size):
            images = F.interpolate(images, size=size, mode="bilinear", align_corners=False,
                                   antialias=images.shape[-1] > size)
        levels = self.backbone(images)
        levels = [lvl.permute(0, 3, 1, 2) if _channels_last_output(lvl, self.backbone, i) else lvl
                  for i, lvl in enumerate(levels)]
        size = levels[0].shape[-2:]
        embedded = []
        for level in levels:
            level = F.avg_pool2d(level.float(), 3, stride=1, padding=1, count_include_pad=False)
            if level.shape[-2:] != size:
                level = F.interpolate(level, size=size, mode="bilinear", align_corners=False)
            embedded.append(_pool_channels(level, self.embed_dim))
        return _pool_channels(torch.cat(embedded, dim=1), self.out_channels)


def _pool_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    """B x C x h x w -> B x channels x h x w, adaptive average pooling over the channel axis."""
    b, c, h, w = x.shape
    flat = x.permute(0, 2, 3, 1).reshape(b * h * w, 1, c)
    pooled = F.adaptive_avg_pool1d(flat, channels)
    return pooled.reshape(b, h, w, channels).permute(0, 3, 1, 2).contiguous()


def _channels_last_output(level: torch.Tensor, backbone: nn.Module, i: int) -> bool:
    """timm's Swin-style backbones return N x H x W x C features."""
    channels = backbone.feature_info.channels()[i]
    return level.shape[1] != channels and level.shape[-1] == channels


# --- distillation -----------------------------------------------------------------------
def distill_teacher(
    images: Iterable[Any],
    backbone: str = "wide_resnet101_2",
    backbone_weights: str | None = None,
    steps: int = 60000,
    image_size: int = 256,
    out_channels: int = 384,
    lr: float = 1e-4,
    weight_decay: float = 1e-5,
    device: str | torch.device = "cpu",
    backbone_image_size: int | None = None,
    out_indices: Sequence[int] = (2, 3),
    embed_dim: int = 1024,
    norm_batches: int = 100,
    seed: int = 0,
    log_every: int = 0,
    on_step: Callable[[int, float], None] | None = None,
) -> tuple[PDNSmall, list[float]]:
    """Train a PDN-S teacher to regress backbone features; (teacher in eval mode, loss per step).

    images: batches (B x 3 x H x W ImageNet-normalised tensors, or dicts with "image"),
    re-iterable (a list or DataLoader) when `steps` exceeds one pass. Each batch is resized
    to `image_size` for the PDN and, from its own resolution, to `backbone_image_size`
    (default 2 x image_size, as in EfficientAD) for the backbone: give batches at
    >= backbone_image_size so the backbone sees full detail. `on_step(step, loss)` is called
    after every step (1-based), e.g. for a console progress line with an ETA.
    """
    from .backbones import create_backbone

    if steps <= 0:
        raise ValueError(f"steps must be > 0, got {steps}")
    device = torch.device(device)
    torch.manual_seed(seed)
    net, source = create_backbone(backbone, backbone_weights, out_indices=out_indices)
    target = FeatureTarget(net, out_channels, embed_dim, backbone_image_size or 2 * image_size).to(device)
    out_size = pdn_output_size(image_size)

    def features(batch: torch.Tensor) -> torch.Tensor:
        feats = target(batch)
        return F.interpolate(feats, size=out_size, mode="bilinear", align_corners=False, antialias=True)

    mean, std = _feature_stats(features, itertools.islice(_batches(images, device), norm_batches))
    teacher = PDNSmall(out_channels).to(device)
    optimizer = torch.optim.Adam(teacher.parameters(), lr=lr, weight_decay=weight_decay)
    history: list[float] = []
    teacher.train()
    for step, batch in enumerate(_cycle(images, device)):
        if step >= steps:
            break
        goal = (features(batch) - mean) / std  # the backbone sees the batch at its own resolution
        loss = F.mse_loss(teacher(_resize(batch, image_size)), goal)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        history.append(float(loss.detach()))
        if on_step is not None:
            on_step(step + 1, history[-1])
        if log_every and (step + 1) % log_every == 0:
            log.info("distill %s: step %d/%d loss %.4f", backbone, step + 1, steps, history[-1])
    teacher.eval()
    teacher.distill_meta = {"backbone": backbone, "backbone_weights": source, "steps": steps,
                            "image_size": image_size, "out_channels": out_channels,
                            "final_loss": history[-1] if history else None}
    return teacher, history


def _as_images(batch: Any) -> torch.Tensor:
    images = batch["image"] if isinstance(batch, dict) else batch
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"expected image batches B x 3 x H x W (or dicts with 'image'), got "
                         f"{getattr(images, 'shape', type(images).__name__)}")
    return images


def _batches(images: Iterable[Any], device: torch.device) -> Iterator[torch.Tensor]:
    for batch in images:
        yield _as_images(batch).to(device).float()


def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
    if x.shape[-2:] == (size, size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)


def _cycle(images: Iterable[Any], device: torch.device) -> Iterator[torch.Tensor]:
    """Batches forever; re-iterates `images` after each pass (an exhausted iterator is an error)."""
    passes = 0
    while True:
        count = 0
        for batch in _batches(images, device):
            count += 1
            yield batch
        passes += 1
        if count == 0:
            raise ValueError("distill_teacher: the images iterable yielded no batches"
                             + (" after its first pass; pass a list or DataLoader" if passes > 1 else ""))


@torch.no_grad()
def _feature_stats(features, batches: Iterable[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std (1 x C x 1 x 1) of the target features over `batches`."""
    total = sq = None
    count = 0
    for batch in batches:
        f = features(batch).double()
        s, q = f.sum(dim=(0, 2, 3)), f.pow(2).sum(dim=(0, 2, 3))
        total, sq = (s, q) if total is None else (total + s, sq + q)
        count += f.shape[0] * f.shape[2] * f.shape[3]
    if not count:
        raise ValueError("distill_teacher: no images to estimate the feature mean/std")
    mean = total / count
    std = (sq / count - mean.pow(2)).clamp_min(0).sqrt().clamp_min(1e-6)
    return mean.float()[None, :, None, None], std.float()[None, :, None, None]


# --- teacher files ------------------------------------------------------------------------
def save_teacher(path: str | Path, teacher: nn.Module, meta: dict[str, Any] | None = None) -> Path:
    """Write a teacher file: format tag, PDN-S state dict, out_channels, provenance."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in teacher.state_dict().items()}
    out_channels = int(state["conv4.weight"].shape[0]) if "conv4.weight" in state else None
    info = {**getattr(teacher, "distill_meta", {}), **(meta or {})}
    payload = {"format": TEACHER_FORMAT, "state_dict": state, "out_channels": out_channels,
               "meta": {k: v for k, v in info.items() if isinstance(v, (str, int, float, bool, type(None)))}}
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)
    return path


def read_teacher_file(path: str | Path, out_channels: int | None = None) -> dict[str, Any]:
    """{"state_dict" (PDNSmall names), "out_channels", "meta"} from a teacher file.

    Accepts files from `save_teacher` and bare PDN-S state dicts (PDNSmall / anomalib
    names, or EfficientAD's nn.Sequential indices). Anything else: TeacherFileError.
    """
    path = Path(path)
    expected = f"expected a teacher file written by save_teacher / `logicad distill-teacher` " \
               f"(format {TEACHER_FORMAT}) or a PDN-S state dict"
    if not path.is_file():
        raise TeacherFileError(f"{path}: teacher weights file not found; {expected}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip and unpickler errors come in many types
        raise TeacherFileError(f"{path}: not a teacher weights file ({exc.__class__.__name__}); {expected}") from None
    meta: dict[str, Any] = {}
    if isinstance(payload, dict) and "format" in payload:
        if payload.get("format") != TEACHER_FORMAT or not isinstance(payload.get("state_dict"), dict):
            raise TeacherFileError(f"{path}: file format {payload.get('format')!r} is not a teacher file; {expected}")
        state, meta = payload["state_dict"], payload.get("meta") or {}
    elif isinstance(payload, dict) and all(isinstance(v, torch.Tensor) for v in payload.values()):
        state = payload
    else:
        raise TeacherFileError(f"{path}: holds a {type(payload).__name__}, not a teacher state dict; {expected}")
    state = remap_pdn_state_dict(state)
    found = int(state["conv4.weight"].shape[0]) if isinstance(state.get("conv4.weight"), torch.Tensor) else None
    want = out_channels if out_channels is not None else found
    problem = check_pdn_state_dict(state, want) if want else "no conv4.weight"
    if problem:
        raise TeacherFileError(f"{path}: not a PDN-S teacher with {want} output channels: {problem}; {expected}")
    return {"state_dict": state, "out_channels": want, "meta": meta}


def load_teacher(path: str | Path, out_channels: int | None = None) -> dict[str, torch.Tensor]:
    """The PDN-S state dict of a teacher file (PDNSmall names); TeacherFileError if it is not one."""
    return read_teacher_file(path, out_channels)["state_dict"]


def teacher_from_file(path: str | Path) -> PDNSmall:
    """A PDNSmall with the file's weights, in eval mode."""
    info = read_teacher_file(path)
    teacher = PDNSmall(info["out_channels"])
    teacher.load_state_dict(info["state_dict"])
    return teacher.eval()
