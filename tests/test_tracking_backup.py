"""The head's MLflow metadata survives losing the head: a real `mlflow server` started the way
the head starts it (scripts/mlflow_head.sh: restore, then serve; artifacts in a real S3 API),
the backup loop the head runs, a crash of the server, its local store deleted, and a new server
started the same way that serves the same registry, aliases and runs."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest

from servers import free_port, stop, wait_http

REPO = Path(__file__).resolve().parents[1]
HEAD_SCRIPT = REPO / "scripts" / "mlflow_head.sh"
MODEL = "logicad-dfsc-pushpins"


def head_env(workdir: Path, bucket: str, s3_env: dict[str, str], port: int) -> dict[str, str]:
    """What the head's systemd unit gives scripts/mlflow_head.sh, on loopback for the test."""
    return {**os.environ, **s3_env, "PYTHON": sys.executable, "HOME": str(workdir),
            "LOGICAD_MLFLOW_DB": str(workdir / "mlflow.db"),
            "LOGICAD_MLFLOW_ARTIFACTS": f"s3://{bucket}/mlflow-artifacts",
            "LOGICAD_MLFLOW_BACKUP": f"s3://{bucket}/mlflow-backup",
            "LOGICAD_MLFLOW_HOST": "127.0.0.1", "LOGICAD_MLFLOW_PORT": str(port), "LOGICAD_MLFLOW_WORKERS": "1"}


@contextmanager
def head_mlflow(workdir: Path, bucket: str, s3_env: dict[str, str]) -> Iterator[tuple[str, subprocess.Popen]]:
    """scripts/mlflow_head.sh as a process group of its own; stopped by its pid at the end."""
    port = free_port()
    log = open(workdir / f"mlflow-{port}.log", "w")
    process = subprocess.Popen(["bash", str(HEAD_SCRIPT)], env=head_env(workdir, bucket, s3_env, port),
                               stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/health", 120, process)
        yield url, process
    finally:
        stop(process)
        log.close()


def backup_command(action: str, workdir: Path, bucket: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "logicad.pipelines.registry.backup", action, "--db", str(workdir / "mlflow.db"),
            "--to", f"s3://{bucket}/mlflow-backup", *extra]


def fill_registry(url: str) -> dict[str, str]:
    """A run with a param, a metric and an artifact; a registered model, its version, the
    champion alias and a tag: what the promotion gate depends on."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=url)
    experiment = client.create_experiment("logicad")
    run = client.create_run(experiment, run_name="dfsc-pushpins")
    client.log_param(run.info.run_id, "margin", "0.1")
    client.log_metric(run.info.run_id, "image_auroc", 0.91)
    client.log_text(run.info.run_id, "weights", "model/weights.txt")
    client.set_terminated(run.info.run_id)
    client.create_registered_model(MODEL)
    version = client.create_model_version(MODEL, source=f"{run.info.artifact_uri}/model", run_id=run.info.run_id)
    client.set_registered_model_alias(MODEL, "champion", version.version)
    client.set_model_version_tag(MODEL, version.version, "gate", "passed")
    return {"run_id": run.info.run_id, "version": str(version.version), "experiment": experiment}


def test_registry_survives_a_lost_head(tmp_path, bucket, s3_env):
    from mlflow.tracking import MlflowClient

    head = tmp_path / "head"
    head.mkdir()
    env = {**os.environ, **s3_env}
    with head_mlflow(head, bucket, s3_env) as (url, server):
        # the head's backup loop (a long interval: the shutdown backup must carry the changes)
        loop_log = open(head / "backup-loop.log", "w")
        backup_loop = subprocess.Popen(backup_command("loop", head, bucket, "--interval", "3600"), env=env,
                                       stdout=loop_log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            made = fill_registry(url)
            os.kill(backup_loop.pid, signal.SIGTERM)  # what systemd does when the head shuts down
            assert backup_loop.wait(timeout=60) == 0
        finally:
            stop(backup_loop)
            loop_log.close()
        assert "stopped after a final backup" in (head / "backup-loop.log").read_text()
        os.killpg(server.pid, signal.SIGKILL)  # the head dies
        server.wait(timeout=30)
    for path in head.glob("mlflow.db*"):  # a new head: no local store, no backup state
        path.unlink()

    with head_mlflow(head, bucket, s3_env) as (url, _):
        assert any("restored" in log.read_text().splitlines() for log in head.glob("mlflow-*.log"))
        client = MlflowClient(tracking_uri=url)
        champion = client.get_model_version_by_alias(MODEL, "champion")
        assert champion.version == made["version"] and champion.run_id == made["run_id"]
        assert champion.tags.get("gate") == "passed"
        run = client.get_run(made["run_id"])
        assert run.data.params["margin"] == "0.1" and run.data.metrics["image_auroc"] == pytest.approx(0.91)
        assert [r.info.run_id for r in client.search_runs([made["experiment"]])] == [made["run_id"]]
        downloaded = client.download_artifacts(made["run_id"], "model/weights.txt", str(tmp_path))
        assert Path(downloaded).read_text() == "weights"


def test_restore_never_replaces_a_local_store_and_a_fresh_store_never_overwrites_a_backup(
        tmp_path, bucket, s3_settings):
    from logicad.pipelines.registry import backup as b
    from s3_server import client

    uri = f"s3://{bucket}/mlflow-backup"
    client(s3_settings.endpoint_url).put_object(Bucket=bucket, Key="mlflow-backup/mlflow.db", Body=b"good backup")
    db = tmp_path / "mlflow.db"
    sqlite3.connect(db).close()  # a store that did not come from the backup (e.g. a failed restore)
    assert b.restore(db, uri, s3_settings) == "kept"
    with pytest.raises(b.BackupError, match="refusing to overwrite"):
        b.backup(db, uri, s3_settings)
    body = client(s3_settings.endpoint_url).get_object(Bucket=bucket, Key="mlflow-backup/mlflow.db")["Body"].read()
    assert body == b"good backup"
    db.unlink()
    with pytest.raises(b.BackupError, match="not a readable sqlite database|no MLflow tables"):
        b.restore(db, uri, s3_settings)  # a damaged backup is never moved into place
    assert not db.exists()


def test_a_new_cluster_starts_empty_and_then_backs_up(tmp_path, bucket, s3_settings):
    from logicad.pipelines.registry import backup as b

    uri = f"s3://{bucket}/mlflow-backup"
    db = tmp_path / "mlflow.db"
    assert b.restore(db, uri, s3_settings) == "none" and not db.exists()
    connection = sqlite3.connect(db)  # the tables MLflow creates, reduced to what the check reads
    connection.executescript("CREATE TABLE experiments(id); CREATE TABLE runs(id); CREATE TABLE registered_models(n);")
    connection.close()
    assert b.backup(db, uri, s3_settings) is True
    assert b.backup(db, uri, s3_settings) is False  # unchanged: no second upload
