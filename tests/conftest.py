"""Shared fixtures: small generated datasets, quiet offline environment."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

import logicad.models  # noqa: E402,F401  (torchvision op schemas before anything imports timm)

import sys
sys.path.insert(0, str(Path(__file__).parent))  # test helpers (servers) importable

SMALL = dict(size=96, n_train=6, n_validation=3, n_test_good=3, n_test_logical=3, n_test_structural=3)


@pytest.fixture(scope="session")
def small_loco(tmp_path_factory) -> Path:
    """A small synthetic MVTec LOCO tree (all categories), generated once per session."""
    from logicad.data.synthetic import SyntheticSpec, make_synthetic

    root = tmp_path_factory.mktemp("loco")
    make_synthetic(root, SyntheticSpec(seed=0, **SMALL))
    return root


@pytest.fixture()
def loco_copy(small_loco, tmp_path) -> Path:
    """A private copy of the small tree that a test may damage."""
    dest = tmp_path / "loco"
    shutil.copytree(small_loco, dest)
    return dest


@pytest.fixture(scope="session")
def category() -> str:
    from logicad.data.synthetic import CATEGORIES

    return CATEGORIES[0]
