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

@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module: small convolutions gain nothing from two, and two threads
    stall badly when another process holds a core (shared CI machines)."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


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


@pytest.fixture(scope="module")
def s3_endpoint(tmp_path_factory) -> str:
    """A real S3 API (moto's server mode) on 127.0.0.1 for this module; stopped by its pid."""
    from s3_server import moto_server

    with moto_server(tmp_path_factory.mktemp("moto")) as url:
        yield url


@pytest.fixture()
def s3_settings(s3_endpoint):
    from logicad.pipelines.storage import S3Settings
    from s3_server import ACCESS_KEY, REGION, SECRET_KEY

    return S3Settings(endpoint_url=s3_endpoint, region=REGION, access_key=ACCESS_KEY, secret_key=SECRET_KEY)


@pytest.fixture()
def bucket(s3_endpoint) -> str:
    """A fresh, empty bucket per test."""
    import uuid

    from s3_server import client

    name = f"test-{uuid.uuid4().hex[:12]}"
    client(s3_endpoint).create_bucket(Bucket=name)
    return name


@pytest.fixture()
def s3_env(s3_endpoint) -> dict[str, str]:
    """Environment for a process that talks to the test S3 server as it would to MinIO or AWS."""
    from s3_server import ACCESS_KEY, REGION, SECRET_KEY

    return {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_DEFAULT_REGION": REGION,
            "AWS_ENDPOINT_URL": s3_endpoint, "MLFLOW_S3_ENDPOINT_URL": s3_endpoint}
