"""Search-space files (`tune_spaces/<method>.yaml`): distributions over config keys, the
metric, scheduler, search algorithm and budget, validated before any trial starts.

    method: dfsc
    metric: objective        # reported by every trial (see pipelines/objective.py)
    mode: max
    objective: synthetic     # or "test" (leaks the test set; paper-style reproduction only)
    preset: cpu-synthetic    # optional base preset for every trial
    fixed: {max_steps: 200}  # config keys every trial shares
    space:
      margin: {uniform: [0.0, 2.0]}
      lr: {loguniform: [5.0e-5, 5.0e-4]}
      quantile: {choice: [0.99, 0.995, 0.999]}
    scheduler: {type: asha, grace_period: 1, reduction_factor: 2}
    search: {algorithm: random}   # or optuna (TPE)
    budget: {num_samples: 8, max_concurrent: 2, cpu_per_trial: 1, gpu_per_trial: auto, report_every: 50}

`gpu_per_trial: auto` (or leaving it out) asks for 1 GPU per trial when the cluster has GPUs
or can autoscale GPU nodes; `--gpus-per-trial` on the command line overrides it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from logicad.models.base import ConfigError, method_class

from ..config import read_yaml_mapping
from .objective import OBJECTIVES

DISTRIBUTIONS = ("uniform", "loguniform", "choice", "randint", "grid")
SPACES_DIR = Path(__file__).resolve().parents[2] / "tune_spaces"  # the repository's tune_spaces/
TOP_KEYS = ("method", "metric", "mode", "objective", "preset", "fixed", "space", "scheduler", "search", "budget")


@dataclass
class SearchSpace:
    method: str
    space: dict[str, dict[str, Any]]
    metric: str = "objective"
    mode: str = "max"
    objective: str = "synthetic"
    preset: str | None = None
    fixed: dict[str, Any] = field(default_factory=dict)
    scheduler: dict[str, Any] = field(default_factory=lambda: {"type": "asha"})
    search: dict[str, Any] = field(default_factory=lambda: {"algorithm": "random"})
    budget: dict[str, Any] = field(default_factory=dict)

    def budget_value(self, key: str, default: Any) -> Any:
        return self.budget.get(key, default)


def default_space_file(method: str) -> Path:
    return SPACES_DIR / f"{method}.yaml"


def load_space(path: str | Path | None, method: str) -> SearchSpace:
    """Read and validate a search-space file (default: the method's own)."""
    path = Path(path) if path else default_space_file(method)
    data = read_yaml_mapping(path, "a search-space file like tune_spaces/<method>.yaml")
    unknown = sorted(set(data) - set(TOP_KEYS))
    if unknown:
        raise ConfigError(f"{path}: unknown keys {unknown}; valid keys: {', '.join(TOP_KEYS)}")
    if data.get("method", method) != method:
        raise ConfigError(f"{path}: a space for method {data['method']!r}, not {method!r}")
    space = SearchSpace(**{**data, "method": method})
    validate_space(space, path)
    return space


def validate_space(space: SearchSpace, path: Path) -> None:
    """Every key a config key, every distribution well-formed, mode/objective/algorithm known."""
    cls = method_class(space.method).config_cls
    valid = cls.keys()
    for key in [*space.space, *space.fixed]:
        if key not in valid:
            raise ConfigError(f"{path}: unknown config key {key!r}; valid keys: {', '.join(valid)}")
    for key, dist in space.space.items():
        _check_distribution(path, key, dist)
    cls.build(space.fixed, preset=space.preset)  # fixed values parse and validate
    if space.mode not in ("max", "min"):
        raise ConfigError(f"{path}: mode must be max or min, got {space.mode!r}")
    if space.objective not in OBJECTIVES:
        raise ConfigError(f"{path}: objective must be one of {list(OBJECTIVES)}, got {space.objective!r}")
    if space.search.get("algorithm", "random") not in ("random", "optuna"):
        raise ConfigError(f"{path}: search.algorithm must be random or optuna")
    if space.scheduler.get("type", "asha") not in ("asha", "fifo"):
        raise ConfigError(f"{path}: scheduler.type must be asha or fifo")


def _check_distribution(path: Path, key: str, dist: Any) -> None:
    if not isinstance(dist, dict) or len(dist) != 1 or next(iter(dist)) not in DISTRIBUTIONS:
        raise ConfigError(f"{path}: space.{key} must be one of {{{', '.join(DISTRIBUTIONS)}: ...}}, got {dist!r}")
    (kind, args), = dist.items()
    if kind in ("uniform", "loguniform", "randint"):
        if not (isinstance(args, list) and len(args) == 2 and float(args[0]) < float(args[1])):
            raise ConfigError(f"{path}: space.{key}: {kind} expects [low, high] with low < high, got {args!r}")
        if kind == "loguniform" and float(args[0]) <= 0:
            raise ConfigError(f"{path}: space.{key}: loguniform needs low > 0, got {args!r}")
    elif not (isinstance(args, list) and args):
        raise ConfigError(f"{path}: space.{key}: {kind} expects a non-empty list, got {args!r}")


def to_tune(space: SearchSpace) -> dict[str, Any]:
    """The space as Ray Tune sampling objects."""
    from ray import tune

    makers = {
        "uniform": lambda a: tune.uniform(float(a[0]), float(a[1])),
        "loguniform": lambda a: tune.loguniform(float(a[0]), float(a[1])),
        "randint": lambda a: tune.randint(int(a[0]), int(a[1])),
        "choice": tune.choice,
        "grid": tune.grid_search,
    }
    return {key: makers[kind](args) for key, dist in space.space.items() for kind, args in dist.items()}
