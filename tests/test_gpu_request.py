"""GPU requests: auto uses GPUs the cluster has or can autoscale, CPU is said in one line,
and a request no node can meet fails in one line before any work (a real local Ray)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from logicad.pipelines.train.resources import (ClusterGpus, NodeType, ResourceRequestError, decide_gpus,
                                               node_types_from_bootstrap)

CPU_ONLY = ClusterGpus([0.0], [NodeType("head", 0, 0), NodeType("cpu_worker", 0, 4)])
AUTOSCALED = ClusterGpus([0.0], [NodeType("head", 0, 0), NodeType("gpu_worker", 1, 4)])


def test_auto_asks_for_a_gpu_when_a_node_has_one():
    decision = decide_gpus(None, 2, ClusterGpus([0.0, 1.0, 1.0]))
    assert decision.per_unit == 1.0 and decision.use_gpu and "--gpus-per-worker 0" in decision.line


def test_auto_asks_for_a_gpu_when_gpu_nodes_start_at_zero_but_can_autoscale():
    decision = decide_gpus(None, 2, AUTOSCALED)
    assert decision.per_unit == 1.0 and "gpu_worker (1 GPU x up to 4)" in decision.line


def test_auto_on_a_cpu_cluster_says_so_in_one_line_naming_the_flag():
    decision = decide_gpus(None, 2, CPU_ONLY)
    assert decision.per_unit == 0 and "\n" not in decision.line
    assert decision.line.startswith("training runs on CPU") and "--gpus-per-worker N" in decision.line


def test_a_gpu_node_type_with_max_zero_cannot_autoscale():
    assert decide_gpus(None, 1, ClusterGpus([0.0], [NodeType("gpu", 1, 0)])).per_unit == 0


@pytest.mark.parametrize("cluster", [CPU_ONLY, ClusterGpus([1.0]), AUTOSCALED])
def test_an_impossible_request_fails_in_one_line(cluster):
    requested, workers = (1, 1) if cluster is CPU_ONLY else (2, 1) if cluster.node_gpus == [1.0] else (1, 5)
    with pytest.raises(ResourceRequestError) as err:
        decide_gpus(requested, workers, cluster)
    assert "\n" not in str(err.value) and f"--gpus-per-worker {requested}" in str(err.value)


def test_explicit_fractional_and_zero_requests_are_kept():
    assert decide_gpus(0.5, 2, ClusterGpus([1.0])).per_unit == 0.5
    assert decide_gpus(0, 2, ClusterGpus([8.0])).per_unit == 0
    assert decide_gpus(1, 3, AUTOSCALED).per_unit == 1


def test_tune_requests_name_the_tune_flag():
    with pytest.raises(ResourceRequestError, match="--gpus-per-trial 1 .* per trial|--gpus-per-trial 1"):
        decide_gpus(1, 1, CPU_ONLY, unit="trial", flag="--gpus-per-trial")


def test_node_types_are_read_from_a_cluster_launcher_config():
    config = yaml.safe_load((Path(__file__).parent.parent / "cluster.yaml").read_text())
    types = node_types_from_bootstrap(config)
    assert any(t.gpus > 0 and t.max_nodes > 0 for t in types)  # cluster.yaml's GPU workers start at 0 nodes
    assert decide_gpus(None, 2, ClusterGpus([0.0], types)).use_gpu


@pytest.fixture(scope="module")
def ray_cpu_runtime():
    import ray

    ray.init(num_cpus=2, num_gpus=0, include_dashboard=False, object_store_memory=300 * 2**20,
             log_to_driver=False)
    yield
    ray.shutdown()


def test_cli_gpu_request_on_a_cpu_ray_fails_in_one_line_before_any_work(ray_cpu_runtime, small_loco, category,
                                                                       tmp_path, capsys):
    from logicad.pipelines.cli import main

    code = main(["train", "--data", str(small_loco), "--category", category, "--gpus-per-worker", "1",
                 "--workers", "2", "--max-steps", "2", "--set", "image_size=64", "--output", str(tmp_path / "o"),
                 "--storage", str(tmp_path / "ray"), "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0
    assert err.startswith("logicad: error: --gpus-per-worker 1 asks for 2 GPU") and "no GPU" in err
    assert not (tmp_path / "o").exists() and not (tmp_path / "ray").exists()
