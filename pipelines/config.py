"""Turning command-line settings (`--set k=v`, `--config FILE`, `--preset`) into a method config."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

import yaml

from logicad.models.base import ConfigError, MethodConfig, method_class


def parse_sets(items: Iterable[str]) -> dict[str, str]:
    """['margin=0.5', 'lr=1e-4'] -> {'margin': '0.5', 'lr': '1e-4'}."""
    values: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects key=value, got {item!r}")
        values[key.strip()] = value.strip()
    return values


def read_yaml_mapping(path: Path, expected: str) -> dict[str, Any]:
    """A YAML file's top-level mapping; ConfigError naming the file and `expected` otherwise."""
    if not path.is_file():
        raise ConfigError(f"{path}: file not found; expected {expected}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc.__class__.__name__}); expected {expected}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: holds a {type(data).__name__}; expected {expected}")
    return data


def read_config_file(path: str | Path) -> dict[str, Any]:
    """A YAML mapping of config keys (what `logicad tune` writes as the best config).

    A file with a top-level `config:` mapping (plus e.g. `method:`) is accepted too.
    """
    path = Path(path)
    data = read_yaml_mapping(path, "a YAML mapping of config keys")
    return data["config"] if isinstance(data.get("config"), dict) else data


def resolve_config(
    method: str,
    sets: Iterable[str] = (),
    config_file: str | Path | None = None,
    preset: str | None = None,
) -> MethodConfig:
    """Defaults <- preset <- config file <- --set, validated against the method's keys."""
    overrides: dict[str, Any] = {}
    if config_file:
        overrides.update(read_config_file(config_file))
    overrides.update(parse_sets(sets))
    return method_class(method).config_cls.build(overrides, preset=preset)


def score_only_settings(config: MethodConfig, sets: Iterable[str] = (), config_file: str | Path | None = None
                        ) -> dict[str, Any]:
    """The `--set`/`--config` values a trained model can be scored with: score-only keys
    (`SCORE_ONLY`, e.g. GLCF's fusion weights). A key that would change trained weights is refused
    in one line, unless it equals the model's own value (as in a sweep's full best_config.yaml)."""
    given: dict[str, Any] = {}
    if config_file:
        given.update(read_config_file(config_file))
    given.update(parse_sets(sets))
    allowed = type(config).SCORE_ONLY
    current = config.to_dict()
    changed = sorted(k for k, v in given.items() if k not in allowed
                     and config.replace(**{k: v}).to_dict()[k] != current[k])
    if changed:
        raise ConfigError(f"{changed} change trained weights, so a trained model cannot be scored with other "
                          f"values; score-only keys: {', '.join(allowed) or 'none'} (retrain with logicad train "
                          f"--config FILE to change the others)")
    return {k: v for k, v in given.items() if k in allowed}


def resolve_tune_config(space, sets: Iterable[str] = (), config_file: str | Path | None = None,
                        preset: str | None = None) -> tuple[MethodConfig, list[str]]:
    """A sweep's base config, in train's order with the space in it: defaults <- preset (--preset,
    else the space's) <- the space's `fixed` keys <- --config <- --set. Searched keys given on the
    command line with --set are dropped from the search (pinned); returns (config, pinned keys)."""
    if preset is not None:
        space.preset = None if preset == "none" else preset
    given: dict[str, Any] = {}
    if config_file:
        given.update(read_config_file(config_file))
    given.update(parse_sets(sets))
    config = method_class(space.method).config_cls.build({**space.fixed, **given}, preset=space.preset)
    pinned = sorted(key for key in parse_sets(sets) if key in space.space)  # a --config file is only a base
    for key in pinned:
        space.space.pop(key)
    return config, pinned


def flatten(prefix: str, value: Any) -> dict[str, Any]:
    """Nested dicts -> {'a.b': v} for MLflow params."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(flatten(f"{prefix}.{key}" if prefix else str(key), item))
        return out
    return {prefix: value}
