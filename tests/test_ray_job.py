"""End to end on a real Ray head (`ray start --head`), as a cluster user drives it:
`ray job submit -- logicad train`, `ray job submit -- logicad tune`, and the script that
`ray submit cluster.yaml scripts/ray_submit.py ...` uploads, run as `ray submit` runs it
(`python <file> args` from another directory). The head is stopped by the pids of the
processes it started."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from servers import free_port

RAY = str(Path(sys.executable).parent / "ray")


def _head_pids(temp_dir: str) -> list[int]:
    found = subprocess.run(["pgrep", "-f", temp_dir], capture_output=True, text=True).stdout.split()
    return [int(pid) for pid in found if int(pid) != os.getpid()]


REPO = Path(__file__).resolve().parents[1]
TINY = ["--set", "image_size=64", "--set", "batch_size=2", "--set", "precision=32"]


@pytest.fixture(scope="module")
def ray_head():
    temp_dir = tempfile.mkdtemp(prefix="rayhead_", dir="/tmp")  # short: Ray's socket paths have a length limit
    port, dashboard = free_port(), free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    subprocess.run([RAY, "start", "--head", "--num-cpus", "2", "--port", str(port), "--dashboard-host", "127.0.0.1",
                    "--dashboard-port", str(dashboard), "--temp-dir", temp_dir, "--disable-usage-stats",
                    "--include-dashboard", "true"], check=True, env=env, capture_output=True, timeout=120)
    try:
        yield f"http://127.0.0.1:{dashboard}", {**env, "RAY_GCS_ADDRESS_FOR_TESTS": f"127.0.0.1:{port}"}
    finally:
        for pid in _head_pids(temp_dir):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        time.sleep(2)
        for pid in _head_pids(temp_dir):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(temp_dir, ignore_errors=True)


def _job_submit(address: str, env: dict, workdir: Path, *command: str) -> subprocess.CompletedProcess:
    """`ray job submit --working-dir DIR -- COMMAND`, retried while the head's job agent starts."""
    workdir.mkdir(exist_ok=True)
    argv = [RAY, "job", "submit", "--address", address, "--working-dir", str(workdir), "--", *command]
    deadline = time.time() + 120
    while True:  # the head's job agent may still be starting on a loaded machine
        result = subprocess.run(argv, capture_output=True, text=True, env={**env, "PATH": os.environ["PATH"]},
                                timeout=600)
        if "No available agent" not in result.stdout + result.stderr or time.time() > deadline:
            return result
        time.sleep(3)


def test_ray_job_submit_trains_on_a_running_head(ray_head, small_loco, category, tmp_path):
    address, env = ray_head
    out = tmp_path / "out"
    result = _job_submit(address, env, tmp_path / "job",
                         "logicad", "train", "--data", str(small_loco), "--category", category, "--workers", "2",
                         *TINY, "--max-steps", "4", "--output", str(out), "--storage", str(tmp_path / "ray"),
                         "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    assert "succeeded" in result.stdout
    record = json.loads((out / "latest" / "metrics.json").read_text())  # the run's own folder
    assert record["replica_divergence"] == 0.0 and record["n_test"] == 9
    assert "image_auroc_logical" in result.stdout


def test_ray_submit_script_runs_logicad_train_on_the_head(ray_head, small_loco, category, tmp_path):
    """As `ray submit` does it: the uploaded file run with python from the user's home
    directory, joining the running cluster (RAY_ADDRESS; "auto" on a real head node)."""
    _, env = ray_head
    script = tmp_path / "home" / "ray_submit.py"
    script.parent.mkdir()
    shutil.copy(REPO / "scripts" / "ray_submit.py", script)
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, str(script), "--", "train", "--data", str(small_loco), "--category", category,
         "--workers", "1", *TINY, "--max-steps", "3", "--output", str(out), "--storage", str(tmp_path / "ray"),
         "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"],
        cwd=script.parent, capture_output=True, text=True, timeout=600,
        env={**env, "RAY_ADDRESS": env["RAY_GCS_ADDRESS_FOR_TESTS"]})
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    assert "Connected to Ray cluster" in result.stdout + result.stderr  # joined, did not start its own
    record = json.loads((out / "latest" / "metrics.json").read_text())  # the run's own folder
    assert record["n_test"] == 9


TUNE_SPACE = """
method: dfsc
metric: objective
mode: max
objective: synthetic
fixed: {image_size: 64, batch_size: 2, max_steps: 4, precision: "32"}
space:
  margin: {uniform: [0.0, 2.0]}
scheduler: {type: fifo}
budget: {num_samples: 2, max_concurrent: 1, cpu_per_trial: 1, report_every: 2}
"""


def test_ray_job_submit_runs_a_tiny_sweep_on_the_head(ray_head, small_loco, category, tmp_path):
    address, env = ray_head
    workdir = tmp_path / "job"
    workdir.mkdir()
    (workdir / "space.yaml").write_text(TUNE_SPACE)
    out = tmp_path / "out"
    result = _job_submit(address, env, workdir,
                         "logicad", "tune", "--space", "space.yaml", "--data", str(small_loco), "--category",
                         category, "--storage", str(tmp_path / "ray"), "--name", "cluster-sweep",
                         "--output", str(out), "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    assert "succeeded" in result.stdout
    assert "best trial of cluster-sweep" in result.stdout
    assert list(out.rglob("best_config.yaml"))
