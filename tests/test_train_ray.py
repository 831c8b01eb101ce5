"""Training on a real local Ray runtime: DDP replicas, all-reduced statistics, surviving a
killed worker, resuming an interrupted run, and the registered MLflow model scoring alone."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from logicad.pipelines.train.checkpoints import read_model_file
from logicad.pipelines.config import resolve_config
from logicad.pipelines.train.driver import TrainJob, run_train

from registry_check import assert_registered_model_scores_alike

TINY = ["image_size=64", "batch_size=2", "max_steps=6", "precision=32"]


@pytest.fixture(scope="module")
def ray_runtime():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=300 * 2**20, log_to_driver=False)
    yield
    ray.shutdown()


def _job(tmp: Path, data: Path, category: str, name: str, **kw) -> TrainJob:
    sets = kw.pop("sets", TINY)
    return TrainJob("dfsc", resolve_config("dfsc", sets), "mvtec_loco", str(data), category,
                    output_dir=str(tmp / name), storage_path=str(tmp / "ray"), run_name=name,
                    tracking_uri=f"sqlite:///{tmp / 'mlflow.db'}", log_every=2, **kw)


@pytest.fixture(scope="module")
def runs(ray_runtime, small_loco, category, tmp_path_factory):
    """One 2-worker run whose last worker is killed at step 4 (checkpoints every 3 steps),
    and one single-worker run on the same data and seed."""
    tmp = tmp_path_factory.mktemp("train")
    two = run_train(_job(tmp, small_loco, category, "two", workers=2, checkpoint_every=3, max_failures=1,
                         fault_at_step=4))
    one = run_train(_job(tmp, small_loco, category, "one", workers=1))
    return tmp, one, two


def test_two_workers_keep_identical_replicas(runs):
    _, _, two = runs
    assert two["replica_divergence"] == 0.0


def test_prepare_statistics_of_two_workers_equal_one_workers(runs):
    _, one, two = runs
    one = read_model_file(Path(one["run_dir"]) / "model")["state_dict"]
    two = read_model_file(Path(two["run_dir"]) / "model")["state_dict"]
    stats = [k for k in one if "teacher_mean" in k or "teacher_std" in k]
    assert stats
    for key in stats:
        torch.testing.assert_close(one[key], two[key], rtol=1e-5, atol=1e-6)


def test_a_killed_worker_is_survived_by_resuming_from_the_checkpoint(runs):
    _, _, two = runs
    training = read_model_file(Path(two["run_dir"]) / "model")["training"]
    assert training["finished"] and training["resumed_from"] == {"stage": 0, "step": 3}


def test_results_contract_is_written_with_metrics_and_artifacts(runs):
    tmp, one, _ = runs
    record = json.loads((Path(one["run_dir"]) / "metrics.json").read_text())
    for key in ("method", "dataset", "category", "image_auroc", "image_auroc_logical", "image_auroc_structural",
                "pixel_auroc", "spro_0.05", "aupro_0.3", "n_test", "train_seconds", "infer_ms_per_image"):
        assert key in record
    assert 0.0 <= record["image_auroc"] <= 1.0 and record["n_test"] == 9
    model_dir = Path(one["run_dir"]) / "model"
    assert {"heatmaps.png", "roc_curves.png", "model.pt"} <= {p.name for p in model_dir.iterdir()}


def test_mlflow_run_holds_params_metrics_and_artifacts(runs):
    from mlflow.tracking import MlflowClient

    tmp, one, _ = runs
    client = MlflowClient(f"sqlite:///{tmp / 'mlflow.db'}")
    run = client.get_run(one["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["margin"] == "1.0" and run.data.params["method"] == "dfsc"
    assert "image_auroc" in run.data.metrics and "train/loss" in run.data.metrics
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    # the model is logged once, as the run's MLflow model (runs:/ID/model), not a second model.pt
    assert {"heatmaps.png", "roc_curves.png", "metrics.json"} <= artifacts and "model.pt" not in artifacts


def test_registered_model_reloads_in_a_fresh_process_with_the_same_scores(runs, small_loco, category):
    tmp, one, _ = runs
    assert_registered_model_scores_alike(one["model_uri"], Path(one["run_dir"]) / "model", tmp / "mlflow.db",
                                         small_loco, category)


def test_resume_continues_an_interrupted_run_from_its_saved_step(ray_runtime, small_loco, category, tmp_path):
    interrupted = _job(tmp_path, small_loco, category, "resume", checkpoint_every=3, max_failures=0,
                       fault_at_step=4, register=False)
    with pytest.raises(Exception):
        run_train(interrupted)
    resumed = _job(tmp_path, small_loco, category, "resume", checkpoint_every=3, resume=True, register=False)
    record = run_train(resumed)
    training = read_model_file(Path(record["run_dir"]) / "model")["training"]
    assert training["resumed_from"] == {"stage": 0, "step": 3} and training["step"] == 6
