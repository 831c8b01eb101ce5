"""A real S3 API on 127.0.0.1 for tests: moto's server mode in its own process.

The server runs as a subprocess (Ray workers and other processes reach it over HTTP) and is
stopped by its own process group at the end. Nothing global is set: tests get the endpoint
URL and pass credentials (`testing`/`testing`, region us-east-1) explicitly. This module is
also importable by Ray workers (put `tests/` on their PYTHONPATH), so it holds the tiny train
loop the storage test runs.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from servers import free_port, stop, wait_http

ACCESS_KEY = "testing"
SECRET_KEY = "testing"
REGION = "us-east-1"


@contextmanager
def moto_server(log_dir: Path | None = None) -> Iterator[str]:
    """Start `python -m moto.server` on a free loopback port, wait until it answers, yield its
    URL (`http://127.0.0.1:PORT`), and stop it by its pid when the block ends."""
    port = free_port()
    log = open(log_dir / f"moto-{port}.log", "w") if log_dir else subprocess.DEVNULL
    process = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                               stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/moto-api/data.json", 30, process)
        yield url
    finally:
        stop(process)
        if log_dir:
            log.close()


def client(endpoint: str, service: str = "s3", access_key: str = ACCESS_KEY, secret_key: str = SECRET_KEY) -> Any:
    """A plain boto3 client for the test server (for arranging and checking, not under test)."""
    import boto3

    return boto3.client(service, endpoint_url=endpoint, region_name=REGION, aws_access_key_id=access_key,
                        aws_secret_access_key=secret_key)


def iam_keys(endpoint: str, user: str, actions: list[str]) -> dict[str, str]:
    """Create an IAM user allowed `actions` on every resource; return its access key pair."""
    iam = client(endpoint, "iam")
    iam.create_user(UserName=user)
    policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": actions, "Resource": "*"}]}
    iam.put_user_policy(UserName=user, PolicyName=f"{user}-policy", PolicyDocument=json.dumps(policy))
    key = iam.create_access_key(UserName=user)["AccessKey"]
    return {"access_key": key["AccessKeyId"], "secret_key": key["SecretAccessKey"]}


def enforce_auth(endpoint: str) -> None:
    """From now on the server checks every request's signature against its IAM users and
    their policies (moto's INITIAL_NO_AUTH_ACTION_COUNT, set to 0 through its admin API)."""
    request = urllib.request.Request(f"{endpoint}/moto-api/reset-auth", data=b"0", method="POST",
                                     headers={"Content-Type": "text/plain"})
    with urllib.request.urlopen(request, timeout=10) as answer:
        assert json.loads(answer.read())["status"] == "ok"


def train_loop_one_checkpoint(config: dict) -> None:
    """A Ray Train loop that reports one metric and one small checkpoint directory."""
    import ray.train

    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "weights.txt").write_text(f"step 1 of rank {ray.train.get_context().get_world_rank()}\n")
        ray.train.report({"step": 1}, checkpoint=ray.train.Checkpoint.from_directory(tmp))
