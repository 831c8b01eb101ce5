"""GLCF (global-local correspondence with a semantic bottleneck) behind the Method contract.

Spec: /work/shared/METHODS.md, section GLCF. Paper defaults in `GLCFConfig` (Swin-T,
bottleneck dim 240, PSS, averaged squared error, frozen teacher); the `cpu-synthetic`
preset is a smaller setting for the synthetic dataset on a CPU.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from ..backbones import BackboneWeightsError
from ..base import Collective, ConfigError, Method, MethodConfig, Stage, register
from . import loss as L
from . import scoring
from .network import DECODERS, SAM_VARIANTS, SemanticBottleneck, Teacher, build_decoder

log = logging.getLogger(__name__)


@dataclass
class GLCFConfig(MethodConfig):
    """GLCF's keys; the defaults are the paper's settings (METHODS.md)."""

    image_size: int = 224
    batch_size: int = 8
    #: 500 epochs of a LOCO category (~350 images) at batch 8
    max_steps: int = 22000
    lr: float = 1e-4
    betas: tuple[float, ...] = (0.9, 0.95)
    weight_decay: float = 0.01
    #: the last fraction of steps runs at lr x 0.1 (as DFSC's key): the paper drops the lr at
    #: epoch 300 of 500, i.e. for the last 40 %
    lr_drop_fraction: float = 0.4
    #: Phi_L: any timm `features_only` model (taps are chosen by stride)
    backbone: str = "swin_tiny_patch4_window7_224"
    #: teacher weights: a local state-dict file, "hub" (timm's download), or "" = random init
    backbone_weights: str = ""
    #: teacher strides read by MS-PEM; the largest is the bottleneck's grid (7 x 7 at 224 px)
    sb_strides: tuple[int, ...] = (8, 16, 32)
    #: teacher strides the decoders estimate (losses and maps), ascending
    target_strides: tuple[int, ...] = (4, 8, 16)
    sam_variant: str = "pss"
    sb_dim: int = 240
    sb_depth: int = 6
    sb_heads: int = 12
    decoder_dim: int = 240
    #: blocks of each of the two SAM decoder stacks (global, local)
    decoder_depth: int = 6
    decoder_heads: int = 16
    mlp_ratio: float = 4.0
    #: Phi_G / Psi_L / Psi_G: Swin-Unet-style patch expanding (`swin`) or ResNet up-sampling
    decoder: str = "swin"
    #: blocks per decoder stage, deepest first (Swin-T's stage depths reversed: 6, 2, 2)
    up_depths: tuple[int, ...] = (6, 2, 2)
    distance: str = "l2"
    #: fusion weights of the standardised local / global maps (score-only)
    w_local: float = 5.0
    w_global: float = 1.0
    #: K: per-scale weights in ascending target-stride order (score-only)
    scale_weights: tuple[float, ...] = (1.0, 3.0, 6.0)
    #: which branches the map uses: both (`fused`), `local` (W_L A_L alone, as W_G = 0) or
    #: `global` (W_G A_G alone, as W_L = 0): the paper's branch ablation as one key (score-only)
    branches: str = "fused"
    smoothing_sigma: float = 4.0

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        # 2 CPU cores: the shipped ImageNet EfficientNet-Lite0 teacher (the paper's Swin-T is
        # slow on a CPU and has no offline weights here), 128 px, a narrower and shallower SAM,
        # ResNet up-sampling decoders with one block per stage, batch 4, 800 steps (262-372 s
        # on parts_box in-process on a shared machine). Chosen on a seed-1 synthetic set (never
        # the benchmark's test split); parts_box mean image AUROC (logical / structural), 800 steps:
        # - strides: the bottleneck reads 16 and 32 (a 4 x 4 grid at 128 px) and the decoders
        #   estimate strides 8 and 16. Pretrained deep levels carry the meaning: 0.904
        #   (0.902 / 0.905) vs 0.850 (0.755 / 0.945) with the bottleneck on 8/16 and targets 4/8,
        #   whose logical score came from the stride-8 map alone (K (0, 1): 0.905; the stride-4
        #   map alone 0.776), so the paper's third, stride-4 target is left out (it costs most).
        # - distance `cos` (the authors' later version): with `l2` the errors follow the few
        #   high-magnitude Lite0 channels (ReLU6 maps, squared errors ~100): 0.629 vs 0.850 at
        #   strides 8/16 + 4/8.
        # - W_L 5, W_G 1 (the paper's) and K = (1, 1): the best of a score-only grid (W_L
        #   0-10, W_G 0-5, six K) on parts_box; the fusion beats each branch (local 0.887,
        #   global 0.604).
        # - lr 5e-4 and 800 steps kept from the random-feature preset (not re-tuned: CPU time).
        "cpu-synthetic": {
            "image_size": 128,
            "backbone": "tf_efficientnet_lite0",
            "backbone_weights": "imagenet-lite0",
            "sb_strides": (16, 32),
            "target_strides": (8, 16),
            "scale_weights": (1.0, 1.0),
            "distance": "cos",
            "sb_dim": 128,
            "sb_depth": 2,
            "sb_heads": 4,
            "decoder_dim": 128,
            "decoder_depth": 2,
            "decoder_heads": 4,
            "decoder": "resnet",
            "up_depths": (1, 1),
            "batch_size": 4,
            "max_steps": 800,
            "lr": 5e-4,
        },
    }
    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {
        **MethodConfig.CHOICES,
        "sam_variant": SAM_VARIANTS,
        "decoder": DECODERS,
        "distance": L.DISTANCES,
        "branches": ("fused", "local", "global"),
    }
    SCORE_ONLY: ClassVar[tuple[str, ...]] = ("w_local", "w_global", "scale_weights", "branches")
    BACKBONE_WEIGHTS: ClassVar[dict[str, str]] = {"backbone_weights": "backbone"}

    def validate(self) -> None:
        super().validate()
        grid = max(self.sb_strides) if self.sb_strides else 0
        expected_targets = tuple(grid // 2 ** k for k in range(len(self.target_strides), 0, -1))
        checks = [
            ("betas", len(self.betas) == 2 and all(0.0 <= b < 1.0 for b in self.betas), "two values in [0, 1)"),
            ("weight_decay", self.weight_decay >= 0, ">= 0"),
            ("lr_drop_fraction", 0.0 <= self.lr_drop_fraction <= 1.0, "in [0, 1]"),
            ("sb_strides", bool(self.sb_strides) and all(grid % s == 0 for s in self.sb_strides),
             "strides that divide the largest one (e.g. 8,16,32)"),
            ("image_size", grid > 0 and self.image_size % grid == 0, f"a multiple of max(sb_strides) = {grid}"),
            ("target_strides", bool(self.target_strides) and tuple(self.target_strides) == expected_targets,
             f"the strides below max(sb_strides), halving, ascending (e.g. {expected_targets or (4, 8, 16)})"),
            ("sb_dim", self.sb_dim > 0 and self.sb_dim % 4 == 0 and self.sb_dim % self.sb_heads == 0,
             "a multiple of 4 and of sb_heads"),
            ("sb_heads", self.sb_heads > 0, "> 0"),
            ("decoder_dim", self.decoder_dim > 0 and self.decoder_dim % 4 == 0
             and self.decoder_dim % self.decoder_heads == 0, "a multiple of 4 and of decoder_heads"),
            ("decoder_heads", self.decoder_heads > 0, "> 0"),
            ("sb_depth", self.sb_depth >= 0, ">= 0"),
            ("decoder_depth", self.decoder_depth >= 0, ">= 0"),
            ("mlp_ratio", self.mlp_ratio > 0, "> 0"),
            ("up_depths", len(self.up_depths) == len(self.target_strides) and min(self.up_depths, default=0) >= 0,
             f"{len(self.target_strides)} values >= 0 (one per target stride)"),
            ("scale_weights", len(self.scale_weights) == len(self.target_strides),
             f"{len(self.target_strides)} values (one per target stride)"),
            ("smoothing_sigma", self.smoothing_sigma >= 0, ">= 0"),
        ]
        self.check(checks)


def lr_factor(step: int, steps: int, drop_fraction: float) -> float:
    """1, then 0.1 for the last `drop_fraction` of the steps."""
    return 0.1 if step >= steps - round(drop_fraction * steps) else 1.0


@register
class GLCF(Method):
    """Frozen teacher Phi_L; semantic bottleneck (MS-PEM + SAM) giving Theta and Omega;
    decoders Phi_G(Theta), Psi_L(Omega), Psi_G(Omega); loss l_E^L + l_C + l_E^G; maps from
    the local (Phi_L vs Psi_L) and global (Phi_G vs Psi_G) estimation errors."""

    name = "glcf"
    config_cls = GLCFConfig
    config: GLCFConfig
    finalize_split = "train"

    def __init__(self, config: GLCFConfig | None = None) -> None:
        super().__init__(config or GLCFConfig())
        c = self.config
        self._teacher_error: str | None = None
        taps = tuple(sorted(set(c.sb_strides) | set(c.target_strides)))
        try:
            self.teacher = Teacher(c.backbone, c.backbone_weights, taps, c.image_size)
        except BackboneWeightsError as exc:
            if "has no feature maps" in str(exc) or "unknown timm model" in str(exc):
                raise ConfigError(f"config key 'backbone': {exc}") from None
            # Not fatal here: a saved model carries its teacher in the state dict, so it scores
            # where the weights file (or the hub) is gone. Training without it fails in `prepare`.
            self._teacher_error = str(exc)
            self.teacher = Teacher(c.backbone, "", taps, c.image_size)
        self.teacher.requires_grad_(False).eval()
        channels = self.teacher.channels
        grid_stride = max(c.sb_strides)
        grid = (c.image_size // grid_stride,) * 2
        self.strides = tuple(c.target_strides)
        self.bottleneck = SemanticBottleneck(
            {s: channels[s] for s in c.sb_strides}, grid_stride, grid, channels[grid_stride], c.sam_variant,
            c.sb_dim, c.sb_depth, c.sb_heads, c.decoder_dim, c.decoder_depth, c.decoder_heads, c.mlp_ratio)
        outputs = [(s, channels[s]) for s in reversed(self.strides)]  # deepest first
        self.phi_g = build_decoder(c.decoder, channels[grid_stride], outputs, grid, c.up_depths)
        self.psi_l = build_decoder(c.decoder, channels[grid_stride], outputs, grid, c.up_depths)
        self.psi_g = build_decoder(c.decoder, channels[grid_stride], outputs, grid, c.up_depths)
        # stats[branch (local, global), scale, (mean, std)] of normal training maps
        self.register_buffer("stats", torch.stack([torch.zeros(2, len(self.strides)),
                                                   torch.ones(2, len(self.strides))], dim=-1))
        self.register_buffer("finalized", torch.tensor(False))
        self._warned_unfinalized = False

    # --- networks -----------------------------------------------------------------------
    def trainable(self) -> list[nn.Module]:
        return [self.bottleneck, self.phi_g, self.psi_l, self.psi_g]

    def features(self, images: torch.Tensor) -> dict[str, dict[int, torch.Tensor]]:
        """{"teacher", "phi_g", "psi_l", "psi_g"}: each {stride: B x C_s x H_s x W_s}."""
        images = self._input(images)
        with torch.no_grad():
            taps = self.teacher(images)
        theta, omega = self.bottleneck(taps)
        return {"teacher": {s: taps[s] for s in self.strides}, "phi_g": self.phi_g(theta),
                "psi_l": self.psi_l(omega), "psi_g": self.psi_g(omega)}

    def _input(self, images: torch.Tensor) -> torch.Tensor:
        size = self.config.image_size
        if images.dim() != 4 or tuple(images.shape[1:]) != (3, size, size):
            raise ValueError(f"GLCF was built for B x 3 x {size} x {size} images (image_size {size}), "
                             f"got {tuple(images.shape)}")
        return images.to(self.stats.device)

    # --- life cycle -----------------------------------------------------------------------
    def prepare(self, loader: Iterable[dict], collective: Collective = Collective()) -> None:
        if self._teacher_error:
            raise BackboneWeightsError(self._teacher_error)

    def stages(self) -> list[Stage]:
        c = self.config
        params = [p for m in self.trainable() for p in m.parameters()]
        optimizer = self.optimizer(torch.optim.AdamW, params, lr=c.lr, betas=tuple(c.betas),
                                   weight_decay=c.weight_decay)
        steps = c.max_steps
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: lr_factor(step, steps, c.lr_drop_fraction))
        return [Stage("train", steps, optimizer, scheduler)]

    def training_step(self, batch: dict[str, Any], stage: str = "train") -> dict[str, torch.Tensor]:
        f = self.features(batch["image"])
        terms = L.glcf_losses(f["teacher"], f["phi_g"], f["psi_l"], f["psi_g"], self.config.distance)
        loss = terms["l_el"] + terms["l_c"] + terms["l_eg"]
        return {"loss": loss, **{k: v.detach() for k, v in terms.items()}}

    def finalize(self, loader: Iterable[dict], collective: Collective = Collective()) -> None:
        """Per branch and scale: the mean over normal training images of each image's mean
        and std of its upsampled, smoothed map (sums and counts all-reduced)."""
        c = self.config
        total = torch.zeros(2, len(self.strides), 2, dtype=torch.float64, device=self.stats.device)
        count = torch.zeros((), dtype=torch.float64, device=self.stats.device)
        for batch in loader:
            images = batch["image"]
            if "label" in batch:
                images = images[torch.as_tensor(batch["label"]).to(images.device) == 0]
            if images.shape[0] == 0:
                continue
            raw = self.raw_maps(images)
            for b, branch in enumerate(scoring.BRANCHES):
                for i, stride in enumerate(self.strides):
                    moments = scoring.image_moments(raw[branch, stride], c.image_size, c.smoothing_sigma)
                    total[b, i] += moments.sum(dim=0)
            count += images.shape[0]
        summed = collective.sum(torch.cat([total.flatten(), count[None]]))
        n = float(summed[-1])
        if n == 0:
            raise ValueError("GLCF.finalize got no normal training images (label 0)")
        self.stats.copy_((summed[:-1] / n).view_as(total).float())
        self.finalized.fill_(True)

    # --- scoring --------------------------------------------------------------------------
    @torch.no_grad()
    def raw_maps(self, images: torch.Tensor) -> dict[tuple[str, int], torch.Tensor]:
        """{("local" | "global", stride): B x H_s x W_s} estimation errors, eval mode."""
        with torch.inference_mode(), _eval(*self.trainable()):
            f = self.features(images)
            kind = self.config.distance
            return {**{("local", s): L.distance_map(f["teacher"][s], f["psi_l"][s], kind) for s in self.strides},
                    **{("global", s): L.distance_map(f["phi_g"][s], f["psi_g"][s], kind) for s in self.strides}}

    @torch.no_grad()
    def score_parts(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """{"local_s4", ..., "global_s16"}: standardised maps B x H_s x W_s at each scale's own
        size (upsampling is linear, so it commutes with the fusion in `maps_from_parts`)."""
        if not bool(self.finalized) and not self._warned_unfinalized:
            log.warning("GLCF scoring before finalize(): maps are not standardised")
            self._warned_unfinalized = True
        return scoring.standardise(self.raw_maps(images), self.stats, self.strides)

    @torch.no_grad()
    def maps_from_parts(self, parts: dict[str, torch.Tensor]) -> torch.Tensor:
        """B x 1 x S x S fused map under the current config's w_local, w_global,
        scale_weights, branches and smoothing_sigma."""
        c = self.config
        w_local = 0.0 if c.branches == "global" else c.w_local
        w_global = 0.0 if c.branches == "local" else c.w_global
        with torch.inference_mode():
            return scoring.fuse(parts, self.strides, w_local, w_global, tuple(c.scale_weights), c.image_size,
                                c.smoothing_sigma)

    @torch.no_grad()
    def anomaly_map(self, images: torch.Tensor) -> torch.Tensor:
        """B x 3 x S x S -> B x 1 x S x S."""
        return self.maps_from_parts(self.score_parts(images))

    @torch.no_grad()
    def image_score(self, maps: torch.Tensor) -> torch.Tensor:
        """The map's standard deviation per image."""
        return scoring.image_score(maps)

    # --- state ----------------------------------------------------------------------------
    def train(self, mode: bool = True) -> GLCF:
        super().train(mode)
        self.teacher.eval()  # frozen: always eval
        return self

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        result = super().load_state_dict(state_dict, strict=strict, assign=assign)
        self._teacher_error = None  # the teacher comes from the state dict
        return result

    def describe(self) -> list[str]:
        c = self.config
        source = self.teacher.source
        if self._teacher_error:
            source = f"UNAVAILABLE ({self._teacher_error}); random until a saved model's state dict is loaded"
        grid = c.image_size // max(c.sb_strides)
        trainable = sum(p.numel() for m in self.trainable() for p in m.parameters())
        return [f"teacher: {c.backbone}, weights {source}; taps at strides {list(self.teacher.strides)} "
                f"(channels {[self.teacher.channels[s] for s in self.teacher.strides]})",
                f"semantic bottleneck: {c.sam_variant}, {grid}x{grid} = {grid * grid} tokens, dim {c.sb_dim}; "
                f"decoders: {c.decoder}; {trainable / 1e6:.1f}M trainable parameters",
                f"statistics on the training images; map = {c.branches} "
                f"(W_L {c.w_local}, W_G {c.w_global}, K {list(c.scale_weights)}), sigma {c.smoothing_sigma}"]


@contextlib.contextmanager
def _eval(*modules: nn.Module) -> Iterator[None]:
    """`modules` in eval mode for the block (BN running statistics), their modes restored after."""
    modes = [m.training for m in modules]
    for m in modules:
        m.eval()
    try:
        yield
    finally:
        for m, mode in zip(modules, modes):
            m.train(mode)
