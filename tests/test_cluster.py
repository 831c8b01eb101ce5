"""cluster.yaml is a launcher config that Ray's own validation accepts, with what a GPU
cluster for logicad needs: a CPU head, GPU workers from 0, matched torch/torchvision,
the dashboard for jobs and an MLflow server with S3 artifacts."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

CLUSTER = Path(__file__).resolve().parents[1] / "cluster.yaml"


@pytest.fixture(scope="module")
def cluster() -> dict:
    return yaml.safe_load(CLUSTER.read_text())


def test_cluster_yaml_passes_rays_config_validation(cluster):
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(cluster))  # raises on an invalid config


def test_gpu_workers_autoscale_from_zero_and_declare_their_gpus(cluster):
    types = cluster["available_node_types"]
    gpu_types = [t for t in types.values() if t.get("resources", {}).get("GPU", 0) > 0]
    assert gpu_types and all(t["min_workers"] == 0 and t["max_workers"] >= 1 for t in gpu_types)
    assert types[cluster["head_node_type"]]["resources"].get("GPU", 0) == 0


def test_setup_installs_a_matched_torch_pair_before_logicad(cluster):
    commands = cluster["setup_commands"]
    pair = next(i for i, c in enumerate(commands) if "torch==" in c and "torchvision==" in c)
    logicad = next(i for i, c in enumerate(commands) if "pip install" in c and "logicad" in c)
    assert pair < logicad


def test_head_starts_the_dashboard_and_an_mlflow_server_with_s3_artifacts(cluster):
    head = " ".join(cluster["head_start_ray_commands"])
    assert "ray start --head" in head and "--dashboard-host=0.0.0.0" in head
    assert "mlflow server" in head and "--artifacts-destination s3://" in head
    workers = " ".join(cluster["worker_start_ray_commands"])
    assert "MLFLOW_TRACKING_URI=http://$RAY_HEAD_IP:5000" in workers
