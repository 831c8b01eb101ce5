"""Real servers for tests, started as processes and stopped by their own pid."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_http(url: str, timeout: float, process: subprocess.Popen) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server for {url} exited with code {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(f"{url} did not answer within {timeout} s")


def stop(process: subprocess.Popen) -> None:
    """Stop the server's whole process group (mlflow forks workers) by its pid."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@contextmanager
def mlflow_server(workdir: Path, artifacts: str | None = None, env: dict[str, str] | None = None) -> Iterator[str]:
    """`mlflow server` on 127.0.0.1 with a sqlite store; artifacts proxied (local dir or s3://)."""
    port = free_port()
    artifacts = artifacts or (workdir / "artifacts").as_uri()
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{workdir / 'mlflow.db'}",
               "--artifacts-destination", artifacts, "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    log = open(workdir / "mlflow-server.log", "w")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
                               start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/health", 90, process)
        yield url
    finally:
        stop(process)
        log.close()
