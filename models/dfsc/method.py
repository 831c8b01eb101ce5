"""DFSC (EfficientAD-S + distinctive feature separation constraint) behind the Method contract.

Spec: /work/shared/METHODS.md, section DFSC. Paper defaults in `DFSCConfig`; the
`cpu-synthetic` preset is a smaller setting for the synthetic dataset on a CPU.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..base import Collective, ConfigError, Method, MethodConfig, Stage, register
from ..feature_cache import FeatureCache
from ..pdn import pdn_output_size
from . import loss as L
from . import scoring
from .augment import IMAGENET_MEAN, IMAGENET_STD, colour_jitter
from .backbone_teacher import BackboneTeacher
from .network import AE_NORMS, Autoencoder, PDNSmall, decoder_sizes
from .sparse_grad import sparse_grad_conv2d

log = logging.getLogger(__name__)

_IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}


def _cpu_bf16() -> str:
    """The preset's precision: bf16 where the CPU computes bf16 natively (avx512_bf16 or
    AMX), else float32 (emulated bf16 is slower than float32)."""
    try:
        native = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    except AttributeError:  # older torch: no probe
        native = False
    return "bf16" if native else "32"


@dataclass
class DFSCConfig(MethodConfig):
    """DFSC's keys; the defaults are the paper's settings (METHODS.md)."""

    image_size: int = 256
    batch_size: int = 1
    max_steps: int = 70000
    lr: float = 1e-4
    weight_decay: float = 1e-5
    #: DFSC hinge margin (0..2; d = ||T^ - A^|| is in [0, 2])
    margin: float = 1.0
    #: weight of L_dfsc in the total loss
    alpha: float = 2.0
    #: quantile of D_TA that selects the "distinctive" locations (DFSC mask)
    quantile: float = 0.999
    #: quantile of (T - S)^2 that selects the elements of L_hard
    hard_quantile: float = 0.999
    #: D_TA averaged over channels per location ("channel") or per element ("element")
    dfsc_reduction: str = "channel"
    #: momentum of the student EMA used for scoring
    ema_momentum: float = 0.99
    #: Ma & Yarats' untuned exponential warm-up: factor 1 - exp(-(1 - beta2) * step)
    warmup_beta2: float = 0.997
    #: the last fraction of steps runs at lr x 0.1
    lr_drop_fraction: float = 0.1
    #: teacher width (PDN-S); a backbone teacher's width is its levels' channels, pooled down
    #: to out_channels only where that is smaller
    out_channels: int = 384
    #: quantiles of normal validation maps used to normalise map_st and map_ae
    map_q_low: float = 0.9
    map_q_high: float = 0.995
    #: the teacher: "pdn" (EfficientAD's PDN-S, the paper's) or "backbone" (the frozen pretrained
    #: `teacher_backbone` itself: its features at `teacher_strides` are the target)
    teacher: str = "pdn"
    #: teacher="pdn": teacher file (distill-teacher output or a PDN-S state dict); "" = random init
    teacher_weights: str = ""
    #: teacher="backbone": any timm features_only model and its weights (a shipped source such as
    #: "imagenet-lite0", a file, "hub"; "" = random init)
    teacher_backbone: str = "tf_efficientnet_lite0"
    teacher_backbone_weights: str = "imagenet-lite0"
    #: teacher="backbone": feature strides concatenated (tf_efficientnet_lite0: 8 -> 40, 16 -> 112 channels)
    teacher_strides: tuple[int, ...] = (8, 16)
    #: teacher="backbone": the backbone's input size; 0 = 2 x image_size (EfficientAD's distillation)
    teacher_backbone_size: int = 0
    #: teacher="backbone": k x k average pooling of each level (EfficientAD's distillation target: 3)
    teacher_pool: int = 3
    #: folder of ImageNet-style images for EfficientAD's penalty; "" = off (DFSC drops it)
    penalty_dir: str = ""
    penalty_weight: float = 1.0
    #: memory for caching teacher features of training images (DFSC uses no augmentation); 0 = off
    teacher_cache_mb: int = 2048
    # Where DFSC departs from EfficientAD (the defaults are DFSC's; the other value is EfficientAD's):
    #: normalisation before every autoencoder activation: "instance" (DFSC) or "none"
    ae_norm: str = "instance"
    #: DFSC's extra ReLU at the start of the autoencoder's decoder
    ae_extra_relu: bool = True
    #: each normalised map through a sigmoid before averaging ("sigmoid", DFSC) or averaged as is
    #: ("linear", EfficientAD's 0.1 * (map - q_low) / (q_high - q_low)); score-only
    map_norm: str = "sigmoid"
    #: score-only: which difference maps the final map averages ("both", or "st" / "ae" alone)
    branches: str = "both"
    #: the autoencoder's input: the training image ("none", DFSC) or a colour-jittered copy
    #: ("efficientad": random brightness, contrast or saturation, factor 0.8-1.2)
    ae_augment: str = "none"

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        # 2 CPU cores, ~2 minutes: 128 px (24 x 24 maps, ~1/4 of the work of 256 px), batch 4, 300
        # steps at lr 5e-4 with a ~60-step warm-up (beta2 0.95; the paper's 0.997 would warm up for
        # ~700 steps). The teacher is the frozen ImageNet EfficientNet-Lite0 itself (teacher="backbone",
        # shipped weights: nothing to download or distil first) at stride 8 only (40 channels), its
        # levels sampled at the PDN-S output centres: its receptive field is close to the PDN
        # student's (33 px), while stride 16 is context the student cannot regress. Chosen over
        # the random PDN on the selection set (synthetic seed 1, `benchmarks/quality_synthetic.py
        # --data-seed 1`, image AUROC logical/structural): 0.877/0.915 (parts_box) and 0.877/1.000
        # (bottle_label), mean image AUROC 0.918, against the random PDN's 0.740/0.875 and
        # 0.980/0.988, mean 0.896. Benchmark set (seed 0):
        # 0.825/0.960 (parts_box), 0.860/0.990 (bottle_label), 0.873/0.905 (screw_kit), 0.580/0.635
        # (screw_bag), ~100 s of training each. bf16 autocast where the CPU has native bf16
        # (about half the step time; scores correlate 0.99999 with float32), else float32.
        "cpu-synthetic": {
            "image_size": 128,
            "batch_size": 4,
            "max_steps": 300,
            "lr": 5e-4,
            "warmup_beta2": 0.95,
            "teacher": "backbone",
            "teacher_backbone": "tf_efficientnet_lite0",
            "teacher_backbone_weights": "imagenet-lite0",
            "teacher_strides": (8,),
            "precision": _cpu_bf16(),
        },
        # As before pretrained features: a random-init PDN teacher (EfficientAD's network, no
        # weights), 600 steps. Benchmark set: 0.76/0.90 (parts_box), 0.99/0.91 (bottle_label),
        # 0.92/0.89 (screw_kit). A PDN distilled from Lite0 (`logicad distill-teacher --backbone
        # tf_efficientnet_lite0 --backbone-weights imagenet-lite0`) then `--set teacher_weights=PATH`
        # gives EfficientAD's fast teacher; it needs a GPU's budget (EfficientAD distils for 60k steps).
        "cpu-synthetic-pdn": {
            "image_size": 128,
            "batch_size": 4,
            "max_steps": 600,
            "lr": 5e-4,
            "warmup_beta2": 0.95,
            "precision": _cpu_bf16(),
        },
    }
    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {
        **MethodConfig.CHOICES,
        "dfsc_reduction": ("channel", "element"),
        "ae_norm": AE_NORMS,
        "map_norm": scoring.MAP_NORMS,
        "branches": scoring.BRANCHES,
        "ae_augment": ("none", "efficientad"),
        "teacher": ("pdn", "backbone"),
    }
    BACKBONE_WEIGHTS: ClassVar[dict[str, str]] = {"teacher_backbone_weights": "teacher_backbone"}
    SCORE_ONLY: ClassVar[tuple[str, ...]] = ("map_norm", "branches")

    def backbones_in_use(self) -> dict[str, str]:
        """The backbone teacher only when `teacher` is "backbone": the PDN teacher is no timm model."""
        return dict(self.BACKBONE_WEIGHTS) if self.teacher == "backbone" else {}

    def validate(self) -> None:
        super().validate()
        if pdn_output_size(self.image_size) < 1:
            smallest = next(s for s in range(1, 1024) if pdn_output_size(s) >= 1)
            raise ConfigError(f"config key 'image_size' must be >= {smallest} for PDN-S, got {self.image_size}")
        checks = [
            ("weight_decay", self.weight_decay >= 0, ">= 0"),
            ("margin", 0.0 <= self.margin <= 2.0, "in [0, 2]"),
            ("alpha", self.alpha >= 0, ">= 0"),
            ("quantile", 0.0 <= self.quantile <= 1.0, "in [0, 1]"),
            ("hard_quantile", 0.0 <= self.hard_quantile <= 1.0, "in [0, 1]"),
            ("ema_momentum", 0.0 <= self.ema_momentum < 1.0, "in [0, 1)"),
            ("warmup_beta2", 0.0 <= self.warmup_beta2 < 1.0, "in [0, 1)"),
            ("lr_drop_fraction", 0.0 <= self.lr_drop_fraction <= 1.0, "in [0, 1]"),
            ("out_channels", self.out_channels > 0, "> 0"),
            ("map_q_low", 0.0 <= self.map_q_low < 1.0, "in [0, 1)"),
            ("map_q_high", self.map_q_low < self.map_q_high <= 1.0, "in (map_q_low, 1]"),
            ("penalty_weight", self.penalty_weight >= 0, ">= 0"),
            ("teacher_cache_mb", self.teacher_cache_mb >= 0, ">= 0"),
            ("teacher_strides", len(self.teacher_strides) > 0 and all(s > 0 for s in self.teacher_strides),
             "one or more strides > 0"),
            ("teacher_backbone_size", self.teacher_backbone_size >= 0, ">= 0"),
            ("teacher_pool", self.teacher_pool >= 0 and self.teacher_pool % 2 == 1 or self.teacher_pool == 0,
             "0 (off) or odd"),
        ]
        self.check(checks)
        if self.teacher == "backbone" and self.teacher_weights:
            raise ConfigError(f"config key 'teacher_weights' ({self.teacher_weights}) is a PDN-S teacher file, but "
                              f"teacher='backbone' (the cpu-synthetic preset's); add --set teacher=pdn to use it")


def lr_factor(step: int, steps: int, beta2: float, drop_fraction: float) -> float:
    """Exponential warm-up (Ma & Yarats 2021) x 0.1 for the last `drop_fraction` of steps.

    `step` counts optimizer steps from 0; the warm-up uses t = step + 1 so the first
    update is not zero: 1 - exp(-(1 - beta2) * t) (~0.95 at t = 1 / (1 - beta2) * 3).
    """
    warmup = 1.0 - math.exp(-(1.0 - beta2) * (step + 1)) if beta2 > 0 else 1.0
    drop_start = steps - round(drop_fraction * steps)
    return warmup * (0.1 if step >= drop_start else 1.0)


@register
class DFSC(Method):
    """EfficientAD-S with DFSC: PDN-S teacher (frozen) and student (768 out), an
    autoencoder with InstanceNorm, L_hard + L_ae + L_stae + alpha * L_dfsc, an EMA
    student for scoring and sigmoid-normalised maps.
    """

    name = "dfsc"
    config_cls = DFSCConfig
    config: DFSCConfig
    #: S_st's backward from L_hard's non-zero entries only (identical gradients; off for speed
    #: ablations). A CPU speed-up: on a GPU the dense backward is faster, so it is used there.
    sparse_hard_backward: bool = True
    #: the step compiles: its host side (cache lookups, jitter) runs outside the graph
    #: (`_step_inputs`), and the losses are masked means with static shapes
    compilable_step = True

    def __init__(self, config: DFSCConfig | None = None) -> None:
        super().__init__(config or DFSCConfig())
        c = self.config
        self.feature_size = pdn_output_size(c.image_size)
        self.teacher = self._build_teacher()
        #: the teacher's output channels C: the student has 2C, the autoencoder C
        self.channels = self.teacher.out_channels
        self.student = PDNSmall(2 * self.channels)
        self.autoencoder = Autoencoder(c.image_size, self.channels, norm=c.ae_norm, extra_relu=c.ae_extra_relu)
        self.student_ema = copy.deepcopy(self.student)
        self.teacher.requires_grad_(False).eval()
        self.student_ema.requires_grad_(False)
        self.register_buffer("teacher_mean", torch.zeros(self.channels))
        self.register_buffer("teacher_std", torch.ones(self.channels))
        self.register_buffer("prepared", torch.tensor(False))
        self.register_buffer("q_st", torch.tensor([0.0, 1.0]))
        self.register_buffer("q_ae", torch.tensor([0.0, 1.0]))
        self.register_buffer("finalized", torch.tensor(False))
        # float16 entries (half the memory; every target then takes the same rounding); on a GPU
        # all or nothing: a set over the budget turns the cache off
        self.cache = FeatureCache(c.teacher_cache_mb * 2**20, dtype=torch.float16)
        self._teacher_info = self._backbone_info() if c.teacher == "backbone" else \
            "random init (no teacher weights: --set teacher_weights=PATH, or --set teacher=backbone)"
        self._teacher_error: str | None = None
        self._penalty: PenaltyImages | None = None
        self._augment_generator = torch.Generator().manual_seed(c.seed)
        self._warned_unfinalized = False
        if c.teacher_weights:
            self._load_teacher(c.teacher_weights)

    # --- teacher ----------------------------------------------------------------------
    def _build_teacher(self) -> nn.Module:
        """PDN-S (C = out_channels) or the frozen pretrained backbone; B x 3 x S x S -> B x C x P x P."""
        c = self.config
        if c.teacher == "pdn":
            return PDNSmall(c.out_channels)
        try:
            return BackboneTeacher(c.teacher_backbone, c.teacher_backbone_weights, c.image_size, self.feature_size,
                                   c.teacher_strides, c.teacher_backbone_size, c.teacher_pool, c.out_channels)
        except ValueError as exc:  # a stride the backbone does not have
            raise ConfigError(f"config key 'teacher_strides': {exc}") from None

    def _backbone_info(self) -> str:
        c, t = self.config, self.teacher
        return (f"frozen {c.teacher_backbone} ({t.source}), strides {list(t.strides)} at {t.backbone_size} px, "
                f"{c.teacher_pool}x{c.teacher_pool} average pooled, resized to {self.feature_size}x"
                f"{self.feature_size}: {self.channels} channels")

    def _load_teacher(self, path: str) -> None:
        from ..distill import read_teacher_file

        if not Path(path).exists():
            # Not fatal here: a saved model carries its teacher in the state dict, so scoring
            # works where the file is gone. Training without it fails in `prepare`.
            self._teacher_error = f"{path}: teacher weights file not found; expected a file written by " \
                                  f"`logicad distill-teacher` (save_teacher) or a PDN-S state dict"
            self._teacher_info = f"from {path} (MISSING: loaded only from a saved model's state dict)"
            return
        payload = read_teacher_file(path, self.config.out_channels)  # TeacherFileError naming the path
        self.teacher.load_state_dict(payload["state_dict"])
        meta = payload.get("meta") or {}
        origin = ", ".join(f"{k} {meta[k]}" for k in ("backbone", "backbone_weights", "steps") if meta.get(k))
        self._teacher_info = f"PDN-S from {path}" + (f" (distilled: {origin})" if origin else "")

    def _teacher_features(self, images: torch.Tensor) -> torch.Tensor:
        """Frozen teacher, normalised per channel: B x C x P x P float32 (no graph)."""
        with torch.no_grad():
            out = self.teacher(images).float()
            return (out - self.teacher_mean[:, None, None]) / self.teacher_std[:, None, None]

    def _training_teacher(self, batch: dict[str, Any], images: torch.Tensor) -> torch.Tensor:
        index = batch.get("index")
        if index is None or not self.cache.enabled:
            return self._teacher_features(images)
        return self.cache.lookup(images, index, lambda x: (self._teacher_features(x),))[0].float()

    def training_targets(self, batch: dict[str, Any], images: torch.Tensor
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(T(I), the autoencoder's input I_ae, T(I_ae)) for a training batch of images I.

        Without augmentation I_ae is I and both targets are the same (cached) tensor. With
        `ae_augment="efficientad"` this follows EfficientAD's training step: the student's
        L_hard half regresses T(I) of the unaugmented image, which is what the teacher
        cache holds (its entries are keyed and fingerprinted by the unaugmented image, so
        they stay correct); the autoencoder sees I_ae = jitter(I), and the targets of L_ae
        (and of DFSC's hinge) are T(I_ae) of that same augmented image -- in EfficientAD
        the autoencoder reconstructs the teacher's features of what it is shown, and
        L_stae pairs it with the student's AE half on I_ae too. A fresh jitter is drawn
        every step, so T(I_ae) is never cached: it costs one extra teacher forward.
        """
        teacher = self._training_teacher(batch, images)  # B x C x P x P, float32
        if self.config.ae_augment == "none":
            return teacher, images, teacher
        images_ae = colour_jitter(images, self._augment_generator)
        return teacher, images_ae, self._teacher_features(images_ae)

    # --- life cycle -------------------------------------------------------------------
    def prepare(self, loader: Iterable[dict], collective: Collective = Collective()) -> None:
        """Teacher channel mean/std over the training images (sums all-reduced)."""
        if self._teacher_error:
            raise FileNotFoundError(self._teacher_error)
        c = self.channels
        device = self.teacher_mean.device
        total = torch.zeros(2 * c + 1, dtype=torch.float64, device=device)
        self.teacher.eval()
        with torch.inference_mode(), _no_autocast(device):
            for batch in loader:
                out = self.teacher(self._input(batch["image"])).double()
                total[:c] += out.sum(dim=(0, 2, 3))
                total[c:2 * c] += out.pow(2).sum(dim=(0, 2, 3))
                total[2 * c] += out.shape[0] * out.shape[2] * out.shape[3]
        total = collective.sum(total)
        count = float(total[2 * c])
        if count == 0:
            raise ValueError("DFSC.prepare got no training images")
        mean = total[:c] / count
        var = (total[c:2 * c] / count - mean.pow(2)).clamp_min(0.0)
        self.teacher_mean.copy_(mean.float())
        self.teacher_std.copy_(var.sqrt().clamp_min(1e-8).float())
        self.prepared.fill_(True)
        self.cache.clear()

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [*self.student.parameters(), *self.autoencoder.parameters()]

    def stages(self) -> list[Stage]:
        c = self.config
        optimizer = self.optimizer(torch.optim.AdamW, self.trainable_parameters(), lr=c.lr, weight_decay=c.weight_decay)
        steps = c.max_steps
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: lr_factor(step, steps, c.warmup_beta2, c.lr_drop_fraction)
        )
        self._penalty_images()  # a bad penalty_dir fails here, before training
        return [Stage("train", steps, optimizer, scheduler)]

    def _penalty_images(self) -> PenaltyImages | None:
        c = self.config
        if c.penalty_dir and self._penalty is None:
            self._penalty = PenaltyImages(c.penalty_dir, c.image_size, c.seed)
        return self._penalty

    def training_step(self, batch: dict[str, Any], stage: str = "train") -> dict[str, torch.Tensor]:
        c = self.config
        images, teacher, images_ae, teacher_ae = self._step_inputs(batch)  # targets B x C x P x P, float32
        s_st, s_ae = self._student_halves(images, images_ae)  # B x C x P x P each
        ae = self.autoencoder(images_ae).float()
        l_hard = L.hard_loss((teacher - s_st).pow(2), c.hard_quantile)
        d_ta = (teacher_ae - ae).pow(2)
        l_ae = d_ta.mean()
        l_stae = (ae - s_ae).pow(2).mean()
        l_dfsc = L.dfsc_loss(teacher_ae, ae, d_ta.detach(), c.quantile, c.margin, c.dfsc_reduction)
        loss = l_hard + l_ae + l_stae + c.alpha * l_dfsc
        out = {"l_hard": l_hard, "l_ae": l_ae, "l_stae": l_stae, "l_dfsc": l_dfsc}
        penalty = self._penalty_images()
        if penalty is not None:
            penalty_images = self._input(self._penalty_batch(penalty, images))
            conv4 = self.student.conv4  # only S_st is penalised: skip the other half of the last conv
            s_st = F.conv2d(self._student_trunk(penalty_images), conv4.weight[: self.channels],
                            conv4.bias[: self.channels])
            l_penalty = L.penalty_loss(s_st.float())
            loss = loss + c.penalty_weight * l_penalty
            out["l_penalty"] = l_penalty
        return {"loss": loss, **{k: v.detach() for k, v in out.items()}}

    @torch.compiler.disable
    def _step_inputs(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(I, T(I), I_ae, T(I_ae)): the host side of a step (the prepared check, teacher-cache
        lookups by image key, the jitter's generator), kept out of a compiled step's graph."""
        if not bool(self.prepared):
            raise RuntimeError("DFSC.training_step before prepare(): the teacher statistics are missing")
        images = self._input(batch["image"])
        return images, *self.training_targets(batch, images)

    @staticmethod
    @torch.compiler.disable
    def _penalty_batch(penalty: PenaltyImages, images: torch.Tensor) -> torch.Tensor:
        """A batch of penalty images like `images` (host-side sampling, outside compiled graphs)."""
        return penalty.sample(images.shape[0]).to(images.device, images.dtype)

    def _student_halves(self, images: torch.Tensor, images_ae: torch.Tensor | None = None
                        ) -> tuple[torch.Tensor, torch.Tensor]:
        """(S_st(images), S_ae(images_ae)) of the live student in float32.

        One shared trunk: for the same images (no augmentation) one forward serves both
        halves; for an augmented `images_ae` the trunk runs once on both, stacked. The
        last conv is split by output half: S_st's gradient comes only from L_hard's 0.1%
        of elements, so its backward uses `sparse_grad_conv2d` (same gradients).
        """
        c, b = self.channels, images.shape[0]
        same = images_ae is None or images_ae is images
        x = self._student_trunk(images if same else torch.cat([images, images_ae]))
        x_st, x_ae = (x, x) if same else (x[:b], x[b:])
        weight, bias = self.student.conv4.weight, self.student.conv4.bias
        if self.uses_sparse_backward(x.device):
            s_st = sparse_grad_conv2d(x_st, weight[:c], bias[:c])
        else:
            s_st = F.conv2d(x_st, weight[:c], bias[:c])
        s_ae = F.conv2d(x_ae, weight[c:], bias[c:])
        return s_st.float(), s_ae.float()

    def uses_sparse_backward(self, device: torch.device) -> bool:
        """The sparse L_hard backward on the CPU only (its index_put and nonzero calls cost
        more than the dense backward's saved FLOPs on a GPU)."""
        return self.sparse_hard_backward and device.type == "cpu"

    def _student_trunk(self, images: torch.Tensor) -> torch.Tensor:
        """The live student up to its last conv: B x 256 x (P + 3) x (P + 3)."""
        s = self.student
        x = s.pool(s.act(s.conv1(images)))
        x = s.pool(s.act(s.conv2(x)))
        return s.act(s.conv3(x))

    @torch.no_grad()
    def after_step(self, stage: str = "train") -> None:
        """EMA of the student (momentum `ema_momentum`), used for scoring."""
        ema = list(self.student_ema.parameters())
        live = [p.detach() for p in self.student.parameters()]
        torch._foreach_lerp_(ema, live, 1.0 - self.config.ema_momentum)

    def finalize(self, loader: Iterable[dict], collective: Collective = Collective()) -> None:
        """Map quantiles (map_q_low, map_q_high) of map_st and map_ae over normal validation images."""
        rows_st, rows_ae = [], []
        for batch in loader:
            images = batch["image"]
            if "label" in batch:
                keep = torch.as_tensor(batch["label"]).to(images.device) == 0
                images = images[keep]
            if images.shape[0] == 0:
                continue
            map_st, map_ae = self.raw_maps(images)
            rows_st.append(map_st.flatten(1))
            rows_ae.append(map_ae.flatten(1))
        empty = self.q_st.new_zeros((0, self.feature_size**2))
        all_st = collective.cat(torch.cat(rows_st) if rows_st else empty)
        all_ae = collective.cat(torch.cat(rows_ae) if rows_ae else empty)
        if all_st.shape[0] == 0:
            raise ValueError("DFSC.finalize got no normal validation images (label 0)")
        qs = (self.config.map_q_low, self.config.map_q_high)
        self.q_st.copy_(torch.stack([L.quantile(all_st.float(), q) for q in qs]))
        self.q_ae.copy_(torch.stack([L.quantile(all_ae.float(), q) for q in qs]))
        self.finalized.fill_(True)

    # --- scoring --------------------------------------------------------------------
    def raw_maps(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(map_st, map_ae), B x P x P, with the EMA student; no dropout; inference mode."""
        size = self.config.image_size
        if images.dim() != 4 or tuple(images.shape[1:]) != (3, size, size):
            raise ValueError(f"DFSC was built for B x 3 x {size} x {size} images (image_size {size}), "
                             f"got {tuple(images.shape)}")
        images = self._input(images)
        with torch.inference_mode(), _eval(self.autoencoder), self._scoring_autocast(images.device):
            teacher = self._teacher_features(images)
            student = self.student_ema(images)
            ae = self.autoencoder(images)
            return scoring.difference_maps(teacher, student, ae)

    @torch.no_grad()
    def anomaly_map(self, images: torch.Tensor) -> torch.Tensor:
        """B x 3 x S x S (S = image_size) -> B x 1 x S x S, in (0, 1) with map_norm "sigmoid";
        uses the EMA student."""
        return self.maps_from_parts(self.score_parts(images))

    @torch.no_grad()
    def score_parts(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """The raw maps map_st, map_ae (B x P x P): what `map_norm` (score-only) acts on."""
        map_st, map_ae = self.raw_maps(images)
        return {"map_st": map_st, "map_ae": map_ae}

    @torch.no_grad()
    def maps_from_parts(self, parts: dict[str, torch.Tensor]) -> torch.Tensor:
        if not bool(self.finalized) and not self._warned_unfinalized:
            log.warning("DFSC.anomaly_map before finalize(): maps are not quantile-normalised")
            self._warned_unfinalized = True
        size = self.config.image_size
        q_st, q_ae = self.q_st.to(parts["map_st"].device), self.q_ae.to(parts["map_st"].device)
        with torch.inference_mode():
            return scoring.combine(parts["map_st"], parts["map_ae"], q_st, q_ae, (size, size), self.config.map_norm,
                                   self.config.branches)

    def traceable_maps(self, images: torch.Tensor) -> torch.Tensor:
        """`anomaly_map` as a pure tensor function, for the compiled scoring path
        (pipelines/evaluate/compiled.py): no host read of `finalized`, no inference_mode
        block (the scorer runs in eval and inference mode, so the maps are the same)."""
        x = self._input(images)
        with self._scoring_autocast(x.device):
            map_st, map_ae = scoring.difference_maps(self._teacher_features(x), self.student_ema(x), self.autoencoder(x))
        return scoring.combine(map_st, map_ae, self.q_st, self.q_ae, tuple(images.shape[-2:]), self.config.map_norm,
                               self.config.branches)

    def _scoring_autocast(self, device: torch.device):
        precision = self.config.precision
        if precision == "bf16":
            return torch.autocast(device.type, dtype=torch.bfloat16)
        if precision == "16" and device.type == "cuda":
            return torch.autocast(device.type, dtype=torch.float16)
        return _no_autocast(device)

    def _input(self, images: torch.Tensor) -> torch.Tensor:
        """Images on the model's device, in the memory format of its convolutions."""
        weight = self.student.conv1.weight
        images = images.to(weight.device)
        if weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous():
            images = images.contiguous(memory_format=torch.channels_last)
        return images

    # --- state ----------------------------------------------------------------------
    def train(self, mode: bool = True) -> DFSC:
        super().train(mode)
        self.teacher.eval()  # frozen: always eval
        return self

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        result = super().load_state_dict(state_dict, strict=strict, assign=assign)
        self._teacher_error = None  # the teacher comes from the state dict
        self.cache.clear()
        return result

    def describe(self) -> list[str]:
        c = self.config
        lines = [f"teacher: {self._teacher_info}",
                 (f"image {c.image_size} px -> feature maps {self.feature_size}x{self.feature_size}; "
                  f"decoder upsample sizes {list(decoder_sizes(c.image_size))}")]
        if self.cache.enabled:
            lines.append(f"teacher features of training images cached (the unaugmented images'), up to "
                         f"{c.teacher_cache_mb} MB (on a GPU: on the device, or off if the set does not fit)")
        departures = [f"{key}={getattr(c, key)!r}" for key in ("ae_norm", "ae_extra_relu", "map_norm", "ae_augment")
                      if getattr(c, key) != getattr(DFSCConfig, key)]
        if departures:
            lines.append("EfficientAD's choice instead of DFSC's: " + ", ".join(departures))
        if c.penalty_dir:
            lines.append(f"ImageNet penalty: on, images from {c.penalty_dir}, weight {c.penalty_weight}")
        else:
            lines.append("ImageNet penalty: off (as in DFSC)")
        return lines


@contextlib.contextmanager
def _eval(module: nn.Module) -> Iterator[None]:
    """`module` in eval mode for the block (dropout off), its mode restored after."""
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


def _no_autocast(device: torch.device):
    return torch.autocast(device.type, enabled=False)


class PenaltyImages:
    """EfficientAD's penalty images: any folder of images, resized to 2S, centre-cropped to
    S, grey with p = 0.3, ImageNet-normalised; sampled with a seeded generator."""

    def __init__(self, folder: str, image_size: int, seed: int) -> None:
        root = Path(folder)
        if not root.is_dir():
            raise FileNotFoundError(f"{folder}: penalty_dir not found; expected a folder of images")
        self.paths = sorted(p for p in root.rglob("*") if p.suffix.lower() in _IMAGE_SUFFIXES)
        if not self.paths:
            raise FileNotFoundError(f"{folder}: no images ({', '.join(sorted(_IMAGE_SUFFIXES))}) under penalty_dir")
        self.image_size = image_size
        self.generator = torch.Generator().manual_seed(seed)
        self.mean = torch.tensor(IMAGENET_MEAN)[:, None, None]
        self.std = torch.tensor(IMAGENET_STD)[:, None, None]

    def sample(self, count: int) -> torch.Tensor:
        picks = torch.randint(len(self.paths), (count,), generator=self.generator).tolist()
        grey = (torch.rand(count, generator=self.generator) < 0.3).tolist()
        return torch.stack([self._load(self.paths[i], g) for i, g in zip(picks, grey)])

    def _load(self, path: Path, grey: bool) -> torch.Tensor:
        import numpy as np
        from PIL import Image

        s = self.image_size
        with Image.open(path) as image:
            image = image.convert("RGB").resize((2 * s, 2 * s), Image.BILINEAR)
        image = image.crop((s // 2, s // 2, s // 2 + s, s // 2 + s))
        if grey:
            image = image.convert("L").convert("RGB")
        tensor = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
        return (tensor - self.mean) / self.std
