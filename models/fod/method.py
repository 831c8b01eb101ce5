"""FOD (focus the discrepancy: intra- and inter-correlation) behind the Method contract.

Spec: /work/shared/METHODS.md, section FOD (what the authors' code does). Paper
defaults in `FODConfig`; the `cpu-synthetic` preset is a smaller setting for the
synthetic dataset on a CPU.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from ..base import Collective, ConfigError, Method, MethodConfig, Stage, register
from ..feature_cache import FeatureCache
from . import loss as L
from . import scoring
from .network import LevelOutput, LevelTransformer, PooledBackbone


@dataclass
class FODConfig(MethodConfig):
    """FOD's keys; the defaults are the paper's settings (METHODS.md)."""

    image_size: int = 256
    batch_size: int = 1
    #: 100 epochs of a MVTec LOCO category (~360 training images) at batch 1
    max_steps: int = 36000
    lr: float = 1e-4
    #: timm backbone (frozen); the authors' code defaults to wide_resnet50_2
    backbone: str = "efficientnet_b6"
    #: local weights file, "hub", or "" for random init
    backbone_weights: str = ""
    #: feature levels by stride (one transformer each)
    strides: tuple[int, ...] = (8, 16)
    #: transformer width per level
    d_model: tuple[int, ...] = (256, 512)
    heads: int = 8
    layers: int = 3
    ffn_ratio: int = 4
    #: average-pool window applied to every backbone map (stride 1)
    pool_size: int = 3
    lambda1: float = 0.5
    lambda2: float = 0.5
    #: false: the authors' code (the residual cancels); true: the paper's Eq. 1 (x + I2Correlation)
    residual: bool = False
    #: ablation: drop the entropy terms
    use_entropy: bool = True
    #: ablation: intra-correlation only (no reference features, no inter branch; the residual
    #: stays and the score weights by the intra KL, as in the authors' code)
    intra_only: bool = False
    #: "full": rec x (max - softmax(-KL)); "rec_only": the reconstruction error alone
    score_mode: str = "full"
    #: Gaussian smoothing of the map before its maximum (image score); 0 = none
    smoothing_sigma: float = 4.0
    #: memory for caching backbone features of training images (no augmentation); 0 = off
    feature_cache_mb: int = 2048

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        # 2 CPU cores, minutes: the shipped ImageNet EfficientNet-Lite0 (the paper's backbone
        # family; strides 8 and 16 -> its 40- and 112-channel levels), 128 px, both of the paper's
        # levels (16x16 and 8x8 tokens), narrow transformers, batch 4, 600 steps (40 epochs of
        # the synthetic set). Chosen in-process on a seed-1 synthetic set (never the benchmark's
        # test split), parts_box, image AUROC logical/structural:
        # - 96 px, stride 16 alone, lr 1e-4 (the random-feature preset on lite0): 0.59/0.55
        #   (rec_only 0.76/0.74): the reconstruction had not converged (rec loss still falling
        #   8.3 -> 2.9 at step 600) and one 6x6 level is coarse for these parts;
        # - a patch nearest-neighbour probe on the same pooled features says where the ceiling is:
        #   96 px stride 16 0.90/0.71, 128 px stride 16 0.82/0.76, 128 px strides 8+16 1.00/0.81,
        #   160 px 0.99/0.92 (over the three fixed-layout categories 128 px 8+16: 0.98/0.93);
        #   with pretrained features the stride-8 level no longer collapses and carries the parts;
        # - 128 px, strides (8, 16), d_model (64, 128), lr 1e-3: 0.86/0.70 with the full score,
        #   0.91/0.82 with the reconstruction alone (one run; lr 1e-4 leaves the reconstruction
        #   unconverged in a CPU budget, see the first line).
        # The score: rec x (max - softmax(-KL_inter)) multiplies every image's map by that
        # image's own max softmax weight, a per-image factor unrelated to the defect, so the KL
        # weighting lowered the image AUROC in both settings above: the preset scores by the
        # reconstruction alone (`score_mode=full` is the paper's score; the correlation losses
        # still train the attention either way). smoothing_sigma 4 (2: 0.91/0.81, 0: 0.91/0.79).
        "cpu-synthetic": {
            "backbone": "tf_efficientnet_lite0",
            "backbone_weights": "imagenet-lite0",
            "image_size": 128,
            "batch_size": 4,
            "strides": (8, 16),
            "d_model": (64, 128),
            "heads": 4,
            "layers": 2,
            "lr": 1e-3,
            "max_steps": 600,
            "score_mode": "rec_only",
        },
    }
    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {
        **MethodConfig.CHOICES,
        "score_mode": ("full", "rec_only"),
    }
    SCORE_ONLY: ClassVar[tuple[str, ...]] = ("score_mode", "smoothing_sigma")
    BACKBONE_WEIGHTS: ClassVar[dict[str, str]] = {"backbone_weights": "backbone"}

    def validate(self) -> None:
        super().validate()
        if len(self.d_model) != len(self.strides):
            raise ConfigError(f"config key 'd_model' needs one width per level of 'strides' {list(self.strides)}, "
                              f"got {list(self.d_model)}")
        checks = [
            ("strides", len(self.strides) >= 1 and all(s >= 2 for s in self.strides), "one or more strides >= 2"),
            ("d_model", all(d > 0 for d in self.d_model), "> 0 per level"),
            ("heads", self.heads > 0, "> 0"),
            ("layers", self.layers > 0, "> 0"),
            ("ffn_ratio", self.ffn_ratio > 0, "> 0"),
            ("pool_size", self.pool_size >= 1 and self.pool_size % 2 == 1, "an odd number >= 1"),
            ("lambda1", self.lambda1 >= 0, ">= 0"),
            ("lambda2", self.lambda2 >= 0, ">= 0"),
            ("smoothing_sigma", self.smoothing_sigma >= 0, ">= 0"),
            ("feature_cache_mb", self.feature_cache_mb >= 0, ">= 0"),
        ]
        self.check(checks)
        for stride in self.strides:
            if self.image_size % stride:
                raise ConfigError(f"config key 'image_size' ({self.image_size}) must be a multiple of every "
                                  f"stride {list(self.strides)}")


@register
class FOD(Method):
    """Frozen pooled backbone -> per level a transformer of I2Correlation layers that
    reconstructs the features; minimax on learnable-sigma RBF targets; reference
    features = per-position training mean (a `prepare` statistic, saved as buffers)."""

    name = "fod"
    config_cls = FODConfig
    config: FODConfig

    def __init__(self, config: FODConfig | None = None) -> None:
        super().__init__(config or FODConfig())
        c = self.config
        self.backbone = PooledBackbone(c.backbone, c.backbone_weights, c.strides, c.pool_size)
        grids = [(c.image_size // s, c.image_size // s) for s in c.strides]
        self.levels = nn.ModuleList(
            LevelTransformer(ch, grid, d, c.heads, c.layers, c.ffn_ratio, c.residual, c.intra_only)
            for ch, grid, d in zip(self.backbone.channels, grids, c.d_model))
        for i, (ch, (h, w)) in enumerate(zip(self.backbone.channels, grids)):
            self.register_buffer(f"reference_{i}", torch.zeros(ch, h, w))
        self.register_buffer("prepared", torch.tensor(False))
        self.cache = FeatureCache(c.feature_cache_mb * 2**20)

    # --- features ---------------------------------------------------------------------
    def references(self) -> list[torch.Tensor]:
        return [getattr(self, f"reference_{i}") for i in range(len(self.levels))]

    def features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Pooled frozen-backbone features, float32, no graph: [B x C_l x h_l x w_l]."""
        with torch.no_grad():
            return self.backbone(self._input(images))

    def _training_features(self, batch: dict[str, Any], images: torch.Tensor) -> list[torch.Tensor]:
        index = batch.get("index")
        if index is None or not self.cache.enabled:
            return self.features(images)
        return list(self.cache.lookup(images, index, self.features))

    def _input(self, images: torch.Tensor) -> torch.Tensor:
        weight = next(self.backbone.parameters())
        images = images.to(weight.device)
        if weight.dim() == 4 and weight.is_contiguous(memory_format=torch.channels_last) \
                and not weight.is_contiguous():
            images = images.contiguous(memory_format=torch.channels_last)
        return images

    def forward_levels(self, features: list[torch.Tensor]) -> list[LevelOutput]:
        refs = self.references()
        return [level(f, None if self.config.intra_only else ref)
                for level, f, ref in zip(self.levels, features, refs)]

    # --- life cycle -------------------------------------------------------------------
    def prepare(self, loader: Iterable[dict], collective: Collective = Collective()) -> None:
        """Reference features: per-position mean of the pooled features over the normal
        training images (sums and count all-reduced: N workers compute what one does).
        The features seen here also fill the training cache."""
        refs = self.references()
        device = refs[0].device
        sizes = [r.numel() for r in refs]
        total = torch.zeros(sum(sizes) + 1, dtype=torch.float64, device=device)
        self.cache.clear()
        with torch.autocast(device.type, enabled=False):
            for batch in loader:
                images = batch["image"]
                keep = None
                if "label" in batch:
                    keep = torch.as_tensor(batch["label"]).to(images.device) == 0
                    images = images[keep]
                if images.shape[0] == 0:
                    continue
                if "index" in batch and self.cache.enabled:
                    index = torch.as_tensor(batch["index"])
                    index = index[keep.to(index.device)] if keep is not None else index
                    feats = self.cache.lookup(images, index, self.features)
                else:
                    feats = self.features(images)
                total[:-1] += torch.cat([f.double().sum(0).flatten() for f in feats])
                total[-1] += images.shape[0]
        total = collective.sum(total)
        count = float(total[-1])
        if count == 0:
            raise ValueError("FOD.prepare got no normal training images (label 0)")
        for ref, chunk in zip(refs, total[:-1].split(sizes)):
            ref.copy_((chunk / count).reshape(ref.shape).float())
        self.prepared.fill_(True)

    def stages(self) -> list[Stage]:
        params = [p for p in self.levels.parameters() if p.requires_grad]
        optimizer = self.optimizer(torch.optim.Adam, params, lr=self.config.lr)
        return [Stage("train", self.config.max_steps, optimizer)]

    def training_step(self, batch: dict[str, Any], stage: str = "train") -> dict[str, torch.Tensor]:
        """loss = sum over levels of loss1 + loss2 (stop-gradients as in the spec: one backward
        gives the gradients of the authors' two backward calls); terms detached for logging."""
        c = self.config
        if not bool(self.prepared):
            raise RuntimeError("FOD.training_step before prepare(): the reference features are missing")
        images = self._input(batch["image"])
        outs = self.forward_levels(self._training_features(batch, images))
        total: dict[str, torch.Tensor] = {}
        for out in outs:
            rec = L.reconstruction_loss(out.recon, out.features)
            terms = {"rec": rec, **L.fused_minimax(rec, out.intra, out.inter, c.lambda1, c.lambda2, c.use_entropy)}
            for key, value in terms.items():
                total[key] = total[key] + value if key in total else value
        return {"loss": total.pop("loss"), **{k: v.detach() for k, v in total.items()}}

    # --- scoring --------------------------------------------------------------------
    @torch.no_grad()
    def score_parts(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per level the token reconstruction error and correlation KL (B x h x w each)."""
        size = self.config.image_size
        if images.dim() != 4 or tuple(images.shape[1:]) != (3, size, size):
            raise ValueError(f"FOD was built for B x 3 x {size} x {size} images (image_size {size}), "
                             f"got {tuple(images.shape)}")
        if not bool(self.prepared):
            raise RuntimeError("FOD scoring before prepare(): the reference features are missing")
        with torch.inference_mode(), torch.autocast(images.device.type, enabled=False):
            outs = self.forward_levels(self.features(images))
            parts: dict[str, torch.Tensor] = {}
            for i, out in enumerate(outs):
                parts[f"rec_{i}"], parts[f"kl_{i}"] = scoring.level_parts(out)
            return parts

    @torch.no_grad()
    def maps_from_parts(self, parts: dict[str, torch.Tensor]) -> torch.Tensor:
        """B x 1 x S x S unsmoothed map (pixel metrics use it) under the current score_mode."""
        c = self.config
        levels = [scoring.weighted(parts[f"rec_{i}"], parts[f"kl_{i}"], c.score_mode, inter=not c.intra_only)
                  for i in range(len(self.levels))]
        return scoring.combine(levels, (c.image_size, c.image_size))

    @torch.no_grad()
    def anomaly_map(self, images: torch.Tensor) -> torch.Tensor:
        """B x 3 x S x S (S = image_size) -> B x 1 x S x S, unsmoothed."""
        return self.maps_from_parts(self.score_parts(images))

    @torch.no_grad()
    def image_score(self, maps: torch.Tensor) -> torch.Tensor:
        """B: the maximum of each map after Gaussian smoothing (smoothing_sigma)."""
        return scoring.image_scores(maps, self.config.smoothing_sigma)

    # --- state ----------------------------------------------------------------------
    def train(self, mode: bool = True) -> FOD:
        super().train(mode)
        self.backbone.train(False)
        return self

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        result = super().load_state_dict(state_dict, strict=strict, assign=assign)
        self.cache.clear()
        return result

    def describe(self) -> list[str]:
        c = self.config
        grids = [f"{c.image_size // s}x{c.image_size // s}" for s in c.strides]
        lines = [f"backbone {c.backbone}: {self.backbone.source}; levels at strides {list(c.strides)} "
                 f"-> token grids {grids}, d_model {list(c.d_model)}, {c.layers} layers x {c.heads} heads",
                 f"I2Correlation: {'intra only (ablation)' if c.intra_only else 'intra - inter'}, "
                 f"residual {'on (paper Eq. 1)' if c.residual else 'cancelled (authors code)'}, "
                 f"entropy {'on' if c.use_entropy else 'off (ablation)'}, score {c.score_mode}"]
        if self.cache.enabled:
            lines.append(f"backbone features of training images cached (no augmentation), up to "
                         f"{c.feature_cache_mb} MB")
        return lines
