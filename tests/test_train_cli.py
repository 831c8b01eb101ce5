"""`logicad train` as a user runs it, on a real local Ray: s3:// data synced on every worker's
node, run directories that are never overwritten, and a non-finite loss stopping in one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from logicad.pipelines.cli import main

TINY = ["--set", "image_size=64", "--set", "batch_size=2", "--set", "precision=32", "--max-steps", "2"]


@pytest.fixture(scope="module")
def worker_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("worker-cache")


@pytest.fixture(scope="module")
def ray_runtime(worker_cache, s3_endpoint):
    """Workers see the S3 keys and their own node cache (LOGICAD_CACHE), as cluster nodes would."""
    import ray

    from s3_server import ACCESS_KEY, REGION, SECRET_KEY

    env = {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_DEFAULT_REGION": REGION,
           "LOGICAD_CACHE": str(worker_cache)}
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=300 * 2**20, log_to_driver=False,
             runtime_env={"env_vars": env})
    yield
    ray.shutdown()


def _train(tmp: Path, data: str, category: str, *extra: str) -> list[str]:
    return ["train", "--data", data, "--category", category, *TINY, "--output", str(tmp / "outputs"),
            "--storage", str(tmp / "ray"), "--tracking-uri", f"sqlite:///{tmp / 'mlflow.db'}", "--cpu", *extra]


def test_s3_data_is_synced_by_every_worker_into_its_own_node_cache(ray_runtime, worker_cache, small_loco, category,
                                                                   s3_endpoint, bucket, s3_env, tmp_path,
                                                                   monkeypatch, capsys):
    from s3_server import client

    s3 = client(s3_endpoint)
    for path in sorted((small_loco / category).rglob("*")):
        if path.is_file():
            s3.upload_file(str(path), bucket, f"loco/{category}/{path.relative_to(small_loco / category)}")
    for key, value in {**s3_env, "LOGICAD_CACHE": str(tmp_path / "driver-cache")}.items():
        monkeypatch.setenv(key, value)
    assert not any(worker_cache.iterdir())
    code = main(_train(tmp_path, f"s3://{bucket}/loco", category, "--workers", "2", "--s3-endpoint-url",
                       s3_endpoint))
    assert code == 0, capsys.readouterr().err[-2000:]
    synced = worker_cache / "s3" / bucket / "loco" / category
    driver_copy = tmp_path / "driver-cache" / "s3" / bucket / "loco" / category
    assert sorted(p.relative_to(synced) for p in synced.rglob("*.png")) == sorted(
        p.relative_to(driver_copy) for p in driver_copy.rglob("*.png"))
    assert len(list((synced / "train" / "good").glob("*.png"))) == 6


def test_each_run_gets_its_own_directory_and_latest_points_at_the_newest(ray_runtime, small_loco, category,
                                                                        tmp_path, capsys):
    assert main(_train(tmp_path, str(small_loco), category, "--checkpoint-every", "1", "--keep-checkpoints",
                       "1")) == 0
    assert main(_train(tmp_path, str(small_loco), category)) == 0
    out = capsys.readouterr().out
    assert "plan: dfsc for 2 steps at 64 px, batch 2 x 1 worker(s), precision 32, on CPU" in out
    assert "results: run " in out and (" KB)" in out or " MB)" in out)
    assert all(len([c for c in run.glob("checkpoint_*") if c.is_dir()]) == 1 for run in (tmp_path / "ray").iterdir())
    group = tmp_path / "outputs" / "dfsc" / category
    runs = sorted(p for p in group.iterdir())
    assert len(runs) == 2 and all((r / "model" / "model.pt").is_file() and (r / "metrics.json").is_file()
                                  for r in runs)
    newest = json.loads((tmp_path / "outputs" / "latest" / "metrics.json").read_text())
    assert (tmp_path / "outputs" / "latest").resolve() == Path(newest["run_dir"]).resolve()
    assert (tmp_path / "outputs" / "latest.txt").read_text().strip() == f"dfsc/{category}/{newest['run_name']}"
    assert runs[1].name == newest["run_name"]
    capsys.readouterr()
    assert main(_train(tmp_path, str(small_loco), category, "--run-name", runs[0].name)) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"run {runs[0].name!r} already exists" in err and "--resume" in err


def test_a_non_finite_loss_stops_training_in_one_line_without_a_retry(ray_runtime, small_loco, category, tmp_path,
                                                                     capsys):
    from mlflow.tracking import MlflowClient

    code = main(_train(tmp_path, str(small_loco), category, "--set", "lr=1e12", "--checkpoint-every", "1",
                       "--max-failures", "3"))
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0
    assert err.startswith("logicad: error: dfsc:") and "non-finite loss at step" in err and "term '" in err
    runs = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").search_runs(["1"])
    assert [r.info.status for r in runs] == ["FAILED"]
    assert not (tmp_path / "outputs").exists()
