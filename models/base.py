"""The method contract every detector implements, its typed config, and the registry.

One generic training loop (`logicad.pipelines.train.worker`) drives every method
through the same life cycle:

    method = build_method("dfsc", config)
    method.prepare(train_loader, collective)      # statistics before training
    for stage in method.stages():                 # one or more training stages
        method.start_stage(stage.name)            # also when a run resumes inside it
        for step in range(stage.steps):           # batches of `stage.data`'s view
            losses = method(batch, stage=stage.name)  # == training_step; DDP-safe
            losses["loss"].backward()             # ONE backward per step
            for opt in stage.optimizers: opt.step()
            method.after_step(stage.name)
    method.finalize(loader_of(method.finalize_split), collective)
    maps = method.anomaly_map(images)             # B x 1 x H x W at input size
    scores = method.image_score(maps)             # B
    maps, scores = method.score(images)           # both: what evaluate / predict / serving call

Several objectives from one forward (FOD's minimax pair, a GAN's generator and
discriminator losses) are expressed as one summed `loss` whose stop-gradients route
each term to its own parameters: the gradients add exactly as separate `backward`
calls would, and DDP all-reduces them once. A stage with several optimizers steps
each of them after that backward (each owns disjoint parameters).

A method may have no training stage (`stages()` returns []: PatchCore's memory bank, a
Gaussian of image descriptors): its statistics are all of it, computed in `prepare`/`finalize`
with the `Collective`. The loop then wraps nothing in DDP (no trainable parameter), steps no
optimizer, and checks that every worker holds the same state (buffers included) instead of
the same parameters. A statistic whose size is known only after `prepare` (a subsampled bank)
is a buffer that `load_state_dict` resizes to the saved one.

A stage that trains on a view of synthesised anomalies (`Stage.data`, e.g. SLSG's simulation)
is listed by `training_views()` too, known without building the stages: the leak-free tuning
objective then scores the model only on anomaly families it did not learn from.

Score-only config keys (`MethodConfig.SCORE_ONLY`) change no weight: `score_parts`
computes the network outputs once, `maps_from_parts` turns cached parts into maps
under the current config, so a sweep over those keys never retrains.

A method knows nothing about Ray, MLflow or S3: distributed statistics go through
the `Collective` it is handed.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterable, Mapping

import torch
from torch import nn


class ConfigError(ValueError):
    """A bad config key or value; the message names the key and what is valid."""


@dataclass
class MethodConfig:
    """Keys every method has. Subclasses add the paper's keys with the paper's defaults."""

    image_size: int = 256
    batch_size: int = 1
    max_steps: int = 70000
    lr: float = 1e-4
    seed: int = 0
    num_workers: int = 0
    precision: str = "32"

    #: named, smaller settings (e.g. for the synthetic default on a CPU); never the defaults
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {}
    #: allowed values of string keys
    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {"precision": ("32", "bf16", "16")}
    #: keys that change only how maps are combined and scored, never a weight (score-only sweeps)
    SCORE_ONLY: ClassVar[tuple[str, ...]] = ()
    #: timm backbone weights keys -> the key naming their architecture, e.g.
    #: {"backbone_weights": "backbone"}: checked by the driver before any worker starts
    BACKBONE_WEIGHTS: ClassVar[dict[str, str]] = {}

    @classmethod
    def keys(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def build(cls, overrides: Mapping[str, Any] | None = None, preset: str | None = None) -> "MethodConfig":
        """Defaults, then the preset's values, then `overrides` (strings are parsed)."""
        values: dict[str, Any] = {}
        if preset is not None:
            if preset not in cls.PRESETS:
                raise ConfigError(
                    f"unknown preset {preset!r} for {cls.__name__}; valid presets: {sorted(cls.PRESETS) or 'none'}"
                )
            values.update(cls.PRESETS[preset])
        values.update(overrides or {})
        config = cls()
        return config.replace(**values)

    def replace(self, **values: Any) -> "MethodConfig":
        """A copy with `values` set; keys are checked and string values parsed to the field's type."""
        types = typing.get_type_hints(type(self))
        valid = self.keys()
        parsed = {}
        for key, raw in values.items():
            if key not in valid:
                raise ConfigError(f"unknown config key {key!r}; valid keys: {', '.join(valid)}")
            parsed[key] = _parse_value(key, raw, types[key])
        config = dataclasses.replace(self, **parsed)
        config.validate()
        return config

    def validate(self) -> None:
        """Range checks; raise ConfigError naming the key."""
        for key in ("image_size", "batch_size", "max_steps"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"config key {key!r} must be > 0, got {getattr(self, key)}")
        if self.lr <= 0:
            raise ConfigError(f"config key 'lr' must be > 0, got {self.lr}")
        for key, choices in self.CHOICES.items():
            if getattr(self, key) not in choices:
                raise ConfigError(f"config key {key!r} must be one of {list(choices)}, got {getattr(self, key)!r}")

    def check(self, checks: Iterable[tuple[str, bool, str]]) -> None:
        """ConfigError for the first (key, ok, what) whose `ok` is false: "key must be what"."""
        for key, ok, what in checks:
            if not ok:
                raise ConfigError(f"config key {key!r} must be {what}, got {getattr(self, key)!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def backbones_in_use(self) -> dict[str, str]:
        """The `BACKBONE_WEIGHTS` entries this config really builds (weights key -> architecture
        key): what the driver checks and the plan line names. A method whose backbone hangs on
        another key narrows it (DFSC with its PDN teacher builds no timm backbone)."""
        return dict(self.BACKBONE_WEIGHTS)


def _parse_value(key: str, raw: Any, annotation: Any) -> Any:
    """Parse `raw` (often a CLI string) into the field's type; ConfigError if it does not fit."""
    origin = typing.get_origin(annotation)
    try:
        if annotation is bool:
            if isinstance(raw, str):
                lowered = raw.strip().lower()
                if lowered not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(raw)
                return lowered in ("true", "1", "yes")
            return bool(raw)
        if annotation is int:
            if isinstance(raw, float) and not raw.is_integer():
                raise ValueError(raw)
            return int(raw) if not isinstance(raw, str) else int(raw.strip())
        if annotation is float:
            return float(raw)
        if annotation is str:
            return str(raw)
        if origin is tuple:
            (item_type, *_) = typing.get_args(annotation)
            items = raw.split(",") if isinstance(raw, str) else list(raw)
            return tuple(_parse_value(key, item, item_type) for item in items)
    except (TypeError, ValueError):
        name = getattr(annotation, "__name__", str(annotation))
        raise ConfigError(f"config key {key!r} expects {name}, got {raw!r}") from None
    return raw


class Collective:
    """Reductions a method uses for statistics; one process: identity.

    The training pipeline hands a torch.distributed-backed subclass to every worker so
    that N workers compute exactly what one process computes on all the data.
    """

    world_size: int = 1

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Element-wise sum of `tensor` over workers."""
        return tensor

    def cat(self, tensor: torch.Tensor) -> torch.Tensor:
        """Concatenation over workers along dim 0 (rows may differ in number per worker)."""
        return tensor


@dataclass
class Stage:
    """One training stage: what it optimises, how, on which data, and for how many steps.

    `optimizer` (and `extra_optimizers`, e.g. a GAN discriminator's) are all stepped
    after the one backward of the step's `loss`; each owns disjoint parameters.
    `data` names a training-set view from `logicad.data.views` (e.g. simulated
    anomalies) as a plain dict, so the method stays free of data-loading code.
    """

    name: str
    steps: int
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
    extra_optimizers: list[torch.optim.Optimizer] = field(default_factory=list)
    extra_schedulers: list[torch.optim.lr_scheduler.LRScheduler | None] = field(default_factory=list)
    #: images per worker per step in this stage (None: the config's `batch_size`)
    batch_size: int | None = None
    #: training-set view spec: {"view": NAME, **options} (see logicad.data.views); None: plain images
    data: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def optimizers(self) -> list[torch.optim.Optimizer]:
        return [self.optimizer, *self.extra_optimizers]

    @property
    def schedulers(self) -> list[torch.optim.lr_scheduler.LRScheduler | None]:
        extra = list(self.extra_schedulers) + [None] * (len(self.extra_optimizers) - len(self.extra_schedulers))
        return [self.scheduler, *extra]


class Method(nn.Module):
    """Base class of every detector. Subclasses set `name` and `config_cls`."""

    name: ClassVar[str] = ""
    config_cls: ClassVar[type[MethodConfig]] = MethodConfig
    #: DDP must look for unused parameters (several stages, or branches a step skips)
    find_unused_parameters: ClassVar[bool] = False
    #: split whose normal images `finalize` reads: "validation" (default) or "train" (GLCF)
    finalize_split: ClassVar[str] = "validation"
    #: the training step may be captured by torch.compile / CUDA graphs (off for steps with
    #: data-dependent Python control flow or host reads)
    compilable_step: ClassVar[bool] = False
    #: False for a method that is statistics only (`stages()` is []; `max_steps` unused)
    trains: ClassVar[bool] = True

    def __init__(self, config: MethodConfig) -> None:
        super().__init__()
        self.config = config

    # --- life cycle -------------------------------------------------------------
    def prepare(self, loader: Iterable[dict], collective: Collective = Collective()) -> None:
        """Statistics needed before training (default: none)."""

    def stages(self) -> list[Stage]:
        """The training stages in order; [] for a method that is statistics only."""
        raise NotImplementedError

    def training_step(self, batch: dict[str, torch.Tensor], stage: str) -> dict[str, torch.Tensor]:
        """Losses for one batch; key `loss` is back-propagated."""
        raise NotImplementedError

    def training_views(self) -> list[dict[str, Any]]:
        """Every training-set view spec (`Stage.data`) this model learnt from, known without building
        the stages (the loop checks that its stages' views are listed): the tuning objective leaves
        out the synthetic anomaly families a model learnt from."""
        return []

    def start_stage(self, stage: str) -> None:
        """Hook before a stage's first step, and when a run resumes inside it (e.g. freeze an
        encoder that the previous stage trained); default nothing."""

    def after_step(self, stage: str) -> None:
        """Hook after each optimizer step (EMA updates); default nothing."""

    def optimizer(self, cls: type[torch.optim.Optimizer], params, **kwargs: Any) -> torch.optim.Optimizer:
        """`cls(params, **kwargs)` with the fastest implementation for where the parameters
        live: fused kernels on CUDA where the optimizer offers them, else foreach."""
        params = list(params)
        on_cuda = bool(params) and all(
            (p["params"][0] if isinstance(p, dict) else p).is_cuda for p in params)
        import inspect

        accepted = inspect.signature(cls.__init__).parameters
        if on_cuda and "fused" in accepted:
            kwargs.setdefault("fused", True)
        elif "foreach" in accepted:
            kwargs.setdefault("foreach", True)
        return cls(params, **kwargs)

    def finalize(self, loader: Iterable[dict], collective: Collective = Collective()) -> None:
        """Statistics after training on the normal images of `finalize_split` (default: none)."""

    @torch.no_grad()
    def anomaly_map(self, images: torch.Tensor) -> torch.Tensor:
        """B x 3 x H x W normalised images -> B x 1 x H x W anomaly map at input size."""
        raise NotImplementedError

    @torch.no_grad()
    def image_score(self, maps: torch.Tensor) -> torch.Tensor:
        """B x 1 x H x W maps -> B image scores (default: the map's maximum)."""
        return maps.flatten(1).amax(dim=1)

    @torch.no_grad()
    def score(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B x 1 x H x W maps, B image scores): what evaluation, prediction and serving call.
        Default `image_score(anomaly_map(images))`; a method whose image score is not a function
        of its map (a fusion of members' own scores) overrides this and `scores_from_parts`."""
        maps = self.anomaly_map(images)
        return maps, self.image_score(maps)

    @torch.no_grad()
    def scores_from_parts(self, parts: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(maps, image scores) from cached `score_parts` under the current config (score-only sweeps)."""
        maps = self.maps_from_parts(parts)
        return maps, self.image_score(maps)

    @torch.no_grad()
    def image_scores_from_parts(self, parts: dict[str, torch.Tensor]) -> torch.Tensor:
        """B image scores from cached `score_parts`: all a score-only trial needs. Default
        `scores_from_parts`; a method whose image score needs no map (a fusion) skips the maps."""
        return self.scores_from_parts(parts)[1]

    @torch.no_grad()
    def score_parts(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Everything `maps_from_parts` needs, per image (dim 0 = batch), computed by the
        networks once; a sweep over `SCORE_ONLY` keys caches these. Default: the map."""
        return {"map": self.anomaly_map(images)}

    @torch.no_grad()
    def maps_from_parts(self, parts: dict[str, torch.Tensor]) -> torch.Tensor:
        """B x 1 x H x W maps from cached `score_parts` under the current config."""
        return parts["map"]

    def forward(self, batch: dict[str, torch.Tensor], stage: str = "") -> dict[str, torch.Tensor]:
        """Training forward pass (so DDP's gradient hooks see it): `training_step`."""
        return self.training_step(batch, stage)

    def describe(self) -> list[str]:
        """Lines worth logging once (e.g. 'random-init teacher'); default none."""
        return []


METHODS: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    """Class decorator: make a method available by its `name`."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    METHODS[cls.name] = cls
    return cls


def method_class(name: str) -> type[Method]:
    """The registered class for `name`, or ConfigError listing the registered names."""
    _import_builtin_methods()
    if name not in METHODS:
        raise ConfigError(f"unknown method {name!r}; registered methods: {', '.join(sorted(METHODS))}")
    return METHODS[name]


def build_method(name: str, config: MethodConfig | None = None, **overrides: Any) -> Method:
    cls = method_class(name)
    if config is None:
        config = cls.config_cls.build(overrides)
    elif overrides:
        config = config.replace(**overrides)
    return cls(config)


_BUILTIN = ("dfsc", "glcf", "slsg", "fod", "patchcore", "global_gaussian", "fusion")


def _import_builtin_methods() -> None:
    import importlib
    import importlib.util

    for module in _BUILTIN:
        name = f"{__package__}.{module}"
        if importlib.util.find_spec(name) is not None:  # a method folder not yet in this install is skipped
            importlib.import_module(name)

