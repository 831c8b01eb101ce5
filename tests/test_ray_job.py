"""End to end on a real Ray head: `ray start --head`, then `ray job submit -- logicad train`,
as a cluster user would; the head is stopped by the pids of the processes it started."""

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


@pytest.fixture()
def ray_head():
    temp_dir = tempfile.mkdtemp(prefix="rayhead_", dir="/tmp")  # short: Ray's socket paths have a length limit
    port, dashboard = free_port(), free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    subprocess.run([RAY, "start", "--head", "--num-cpus", "2", "--port", str(port), "--dashboard-host", "127.0.0.1",
                    "--dashboard-port", str(dashboard), "--temp-dir", temp_dir, "--disable-usage-stats",
                    "--include-dashboard", "true"], check=True, env=env, capture_output=True, timeout=120)
    try:
        yield f"http://127.0.0.1:{dashboard}", env
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


def test_ray_job_submit_trains_on_a_running_head(ray_head, small_loco, category, tmp_path):
    address, env = ray_head
    workdir = tmp_path / "job"
    workdir.mkdir()
    out = tmp_path / "out"
    command = [RAY, "job", "submit", "--address", address, "--working-dir", str(workdir), "--",
               "logicad", "train", "--data", str(small_loco), "--category", category, "--workers", "2",
               "--set", "image_size=64", "--set", "batch_size=2", "--set", "precision=32", "--max-steps", "4",
               "--output", str(out), "--storage", str(tmp_path / "ray"),
               "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"]
    deadline = time.time() + 120
    while True:  # the head's job agent may still be starting on a loaded machine
        result = subprocess.run(command, capture_output=True, text=True, env={**env, "PATH": os.environ["PATH"]},
                                timeout=600)
        if "No available agent" not in result.stdout + result.stderr or time.time() > deadline:
            break
        time.sleep(3)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    assert "succeeded" in result.stdout
    record = json.loads((out / "metrics.json").read_text())
    assert record["replica_divergence"] == 0.0 and record["n_test"] == 9
    assert "image_auroc_logical" in result.stdout
