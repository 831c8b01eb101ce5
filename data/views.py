"""Training-set views: what a training stage sees instead of the plain images.

A method's `Stage.data` names a view as a plain dict (`{"view": NAME, **options}`), so
models stay free of data-loading code and the training loop stays free of method
code: the loop calls `training_view(train_set, stage.data, seed)` and iterates the
result. A view wraps an `AnomalyDataset` (decoded uint8 images in memory, see
`dataset.py`) and serves items with at least the keys of `make_item`.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, Mapping

from torch.utils.data import Dataset

from .errors import DatasetError

ViewBuilder = Callable[[Dataset, Mapping[str, Any], int], Dataset]
VIEWS: dict[str, ViewBuilder] = {}
#: the synthetic structural anomaly families (keys of anomaly_synthesis.STRUCTURAL_FAMILIES) a
#: view's items are made of: a model trained on them is not scored on them by the objective
VIEW_SYNTHESIS: dict[str, tuple[str, ...]] = {}
#: modules that register the project's own views when imported
_BUILTIN_VIEW_MODULES: tuple[str, ...] = ("simulation",)


def register_view(name: str, synthesises: tuple[str, ...] = ()) -> Callable[[ViewBuilder], ViewBuilder]:
    """Decorator: make `builder(dataset, options, seed) -> Dataset` available as `name`;
    `synthesises`: the anomaly families its items are made of (see VIEW_SYNTHESIS)."""

    def decorate(builder: ViewBuilder) -> ViewBuilder:
        VIEWS[name] = builder
        VIEW_SYNTHESIS[name] = tuple(synthesises)
        return builder

    return decorate


def _import_builtin_views() -> None:
    for module in _BUILTIN_VIEW_MODULES:
        importlib.import_module(f"{__package__}.{module}")


def synthesis_families(spec: Mapping[str, Any] | None) -> tuple[str, ...]:
    """The synthetic anomaly families a training-set view spec trains on (none for plain images)."""
    if not spec:
        return ()
    _import_builtin_views()
    return VIEW_SYNTHESIS.get(spec.get("view"), ())


def training_view(dataset: Dataset, spec: Mapping[str, Any] | None, seed: int = 0) -> Dataset:
    """`dataset` itself for no spec, else the named view over it (options from the spec)."""
    if not spec:
        return dataset
    _import_builtin_views()
    options = dict(spec)
    name = options.pop("view", None)
    if name not in VIEWS:
        raise DatasetError(f"unknown training-set view {name!r}; registered views: "
                           f"{', '.join(sorted(VIEWS)) or 'none'}")
    return VIEWS[name](dataset, options, seed)
