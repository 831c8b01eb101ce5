"""`logicad tune` on a real local Ray: ASHA sweep with nested MLflow runs, best config that
`logicad train --config` accepts, and a sweep that resumes after its driver was killed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from logicad.models.base import ConfigError
from logicad.pipelines.config import resolve_config
from logicad.pipelines.tune.search_space import load_space

SPACE = """
method: dfsc
metric: objective
mode: max
objective: synthetic
fixed: {image_size: 64, batch_size: 2, max_steps: %(steps)d, precision: "32"}
space:
  margin: {uniform: [0.0, 2.0]}
  lr: {loguniform: [5.0e-5, 5.0e-4]}
scheduler: {type: asha, grace_period: 1, reduction_factor: 2}
budget: {num_samples: 4, max_concurrent: 2, cpu_per_trial: 1, report_every: 2}
"""


def _space(tmp: Path, steps: int = 6) -> Path:
    path = tmp / "space.yaml"
    path.write_text(SPACE % {"steps": steps})
    return path


def _tune(tmp: Path, data: Path, category: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "logicad.pipelines.cli", "tune", "--space", str(tmp / "space.yaml"),
            "--data", str(data), "--category", category, "--storage", str(tmp / "ray"), "--name", "sweep",
            "--output", str(tmp / "out"), "--tracking-uri", f"sqlite:///{tmp / 'mlflow.db'}", *extra]


def _child_runs(tmp: Path):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("logicad").experiment_id
    runs = client.search_runs([experiment])
    parents = [r for r in runs if r.data.tags.get("logicad.sweep") == "sweep"]
    return parents, [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]


def test_space_keys_are_checked_before_any_trial(tmp_path):
    path = _space(tmp_path)
    path.write_text(path.read_text().replace("margin:", "margn:"))
    with pytest.raises(ConfigError, match="margn.*valid keys"):
        load_space(path, "dfsc")


def test_the_shipped_dfsc_space_searches_margin_alpha_quantile_and_lr():
    space = load_space(None, "dfsc")
    assert {"margin", "alpha", "quantile", "lr"} <= set(space.space)
    assert space.space["margin"] == {"uniform": [0.0, 2.0]} and space.objective == "synthetic"


def test_sweep_tracks_trials_and_writes_a_trainable_best_config(small_loco, category, tmp_path):
    """--max-steps overrides the space's fixed keys; a trial whose loss goes non-finite ends as
    errored while the sweep goes on; the best trial is chosen by each trial's last report, in
    the printout, best_config.yaml and the registered version's tags alike."""
    from mlflow.tracking import MlflowClient

    path = _space(tmp_path, steps=100000)  # --max-steps below must win, or this test times out
    path.write_text(path.read_text().replace("lr: {loguniform: [5.0e-5, 5.0e-4]}", "lr: {grid: [2.0e-4, 1.0e+12]}"))
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    result = subprocess.run(_tune(tmp_path, small_loco, category, "--max-steps", "6", "--num-samples", "2"),
                            capture_output=True, text=True, env=env, timeout=400)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "selection: each trial's last report" in out
    assert out.count("errored: ") == 2 and "non-finite loss at step" in out
    parents, children = _child_runs(tmp_path)
    assert len(parents) == 1 and parents[0].data.tags["objective"] == "synthetic"
    assert len(children) == 4 and sorted(r.info.status for r in children).count("FAILED") == 2
    ok = [r for r in children if r.info.status != "FAILED"]
    assert all("objective" in r.data.metrics and "margin" in r.data.params for r in ok)
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    for run in ok:  # objectives logged at the training step they were measured at
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "objective")]
        assert steps == sorted(steps) and len(set(steps)) == len(steps) and steps[-1] <= 6
    best_value = max(r.data.metrics["objective"] for r in ok)  # MLflow's latest value = the last report
    best = yaml.safe_load((tmp_path / "out" / "sweep" / "best_config.yaml").read_text())
    assert best["objective"] == pytest.approx(best_value) and f"objective {best_value:.4f}" in out
    assert best["selection"] == "each trial's last report" and best["config"]["max_steps"] == 6
    assert best["method"] == "dfsc" and "budget per trial" in (tmp_path / "out" / "sweep" / "best_config.yaml").read_text()
    version = client.get_model_version(f"logicad-dfsc-{category}", "1")
    assert float(version.tags["best_objective"]) == pytest.approx(best_value) and "last report" in version.tags[
        "selection"]
    config = resolve_config("dfsc", config_file=tmp_path / "out" / "latest" / "best_config.yaml")
    assert config.margin == best["config"]["margin"] and config.image_size == 64
    kept = [c for c in (tmp_path / "ray" / "sweep").glob("*/checkpoint_*") if c.is_dir()]
    assert len(kept) == 1  # only the best trial's final checkpoint
    assert "results: sweep " in out


def test_zero_samples_is_rejected_in_one_line(capsys, tmp_path):
    from logicad.pipelines.cli import main

    assert main(["tune", "--num-samples", "0", "--data", str(tmp_path), "--category", "c"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "logicad: error: --num-samples 0: expected 1 or more trials"


def test_tune_set_and_config_override_the_space_and_pin_searched_keys(tmp_path):
    from logicad.pipelines.config import resolve_tune_config

    space = load_space(_space(tmp_path), "dfsc")
    best = tmp_path / "best.yaml"
    best.write_text("method: dfsc\nconfig: {batch_size: 4, margin: 0.3}\n")
    config, pinned = resolve_tune_config(space, ["max_steps=30", "lr=1e-4"], best, None)
    assert (config.max_steps, config.batch_size, config.lr, config.image_size) == (30, 4, 1e-4, 64)
    assert pinned == ["lr"] and "lr" not in space.space and "margin" in space.space


def _objects(endpoint: str, bucket: str, prefix: str) -> dict[str, Any]:
    """{key: last modified} of the objects under `prefix`."""
    from s3_server import client

    pages = client(endpoint).get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return {item["Key"]: item["LastModified"] for page in pages for item in page.get("Contents", [])}


def _keys(endpoint: str, bucket: str, prefix: str) -> list[str]:
    return list(_objects(endpoint, bucket, prefix))


def _state_saved_after_a_third_checkpoint(endpoint: str, bucket: str) -> bool:
    """A trial's third checkpoint is in the bucket, and Tune's experiment state was written after
    it (Tune syncs its state on a timer: killed before that, a resumed sweep knows no checkpoint)."""
    objects = _objects(endpoint, bucket, "sweeps")
    third = [t for k, t in objects.items() if "checkpoint_000002/" in k]
    states = [t for k, t in objects.items() if "experiment_state" in k]
    return bool(third) and bool(states) and max(states) > min(third)


def test_an_interrupted_s3_sweep_resumes_from_the_bucket(small_loco, category, tmp_path, s3_endpoint, bucket,
                                                         s3_env):
    _space(tmp_path, steps=24)
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", **s3_env}
    s3 = ["--storage", f"s3://{bucket}/sweeps", "--s3-endpoint-url", s3_endpoint]
    log = open(tmp_path / "first.log", "w")
    first = subprocess.Popen(_tune(tmp_path, small_loco, category, *s3), stdout=log, stderr=subprocess.STDOUT,
                             env=env, start_new_session=True)
    deadline = time.time() + 300
    # kill once Tune's experiment state is saved after a trial's third checkpoint (step 6 of 24):
    # the state then records a checkpoint, and the trial is still far from done
    while time.time() < deadline and not _state_saved_after_a_third_checkpoint(s3_endpoint, bucket):
        assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
        time.sleep(1)
    os.killpg(first.pid, signal.SIGKILL)  # the driver and its local Ray die mid-sweep
    first.wait()
    log.close()
    result = subprocess.run(_tune(tmp_path, small_loco, category, *s3, "--resume", "--keep-trial-checkpoints"),
                            capture_output=True, text=True, env=env, timeout=400)
    assert result.returncode == 0, result.stderr[-3000:]
    parents, children = _child_runs(tmp_path)
    assert len(parents) == 1 and len(children) == 4  # the same parent run; no trial tracked twice
    # a trial cut off mid-way continues from its last checkpoint instead of starting over
    assert "resumed from checkpoint at stage 0 step" in result.stdout + result.stderr
    keys = _keys(s3_endpoint, bucket, "sweeps/sweep/")
    trials = {k.split("/")[2] for k in keys if "/checkpoint_" in k}
    assert len(trials) == 4 and any(k.endswith("experiment_state.json") or "experiment_state" in k for k in keys)
    assert not (tmp_path / "ray").exists()  # nothing went to local storage


@pytest.mark.parametrize("storage, words", [("s3://no-such-bucket/sweeps", "does not exist"),
                                            ("s3://some-bucket/sweeps", "cannot reach S3 endpoint")])
def test_bad_s3_storage_fails_in_one_line_before_any_trial(storage, words, s3_endpoint, capsys, tmp_path,
                                                           monkeypatch):
    import ray

    from logicad.pipelines.cli import main
    from s3_server import ACCESS_KEY, SECRET_KEY

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    endpoint = s3_endpoint if "no-such" in storage else "http://127.0.0.1:1"
    code = main(["tune", "--storage", storage, "--s3-endpoint-url", endpoint, "--data", str(tmp_path),
                 "--category", "c", "--output", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and words in err
    assert not ray.is_initialized() and not (tmp_path / "out").exists()


def test_a_used_sweep_name_is_refused_without_resume(small_loco, category, tmp_path, capsys):
    import ray

    from logicad.pipelines.cli import main

    _space(tmp_path)
    (tmp_path / "ray" / "sweep").mkdir(parents=True)  # what an earlier sweep of that name left
    code = main(_tune(tmp_path, small_loco, category)[3:])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0
    assert "sweep 'sweep' already exists" in err and "--resume" in err and not ray.is_initialized()
