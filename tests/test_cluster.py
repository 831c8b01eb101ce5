"""cluster.yaml is a launcher config that Ray's own validation accepts and that comes up, loses
nothing and lets no one in: a current GPU image named explicitly, instance profiles for head and
workers, the region written once, a CPU worker type that keeps CPU work off GPU nodes, control
ports closed (each one's binding and who reaches it stated in the file), least-privilege S3
policies, and the head's MLflow server restored from and backed up to the bucket.

Each rule is a function that lists what is wrong, so the same rule is shown to pass on the
shipped file and to fail on a broken copy."""

from __future__ import annotations

import asyncio
import copy
import functools
import json
import os
import re
import subprocess
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "cluster.yaml"
IAM = REPO / "deploy" / "iam"
DLAMI_PARAMETER = "/aws/service/deeplearning/ami/x86_64/base-oss-nvidia-driver-gpu-ubuntu-22.04/latest/ami-id"
REGION = re.compile(r"\b(?:us|eu|ap|sa|ca|me|af|il|mx)-(?:gov-)?[a-z]+-\d\b")
CONTROL_PORTS = {8265: "Ray dashboard + Jobs API", 10001: "Ray client", 6379: "Ray GCS", 5000: "MLflow"}
PORT_LINE = re.compile(r"^# port (\d+) \(([^)]*)\): bind ([^;]+); reached by ([^;]+)(.*)$")
HEAD_PROFILE, WORKER_PROFILE = "logicad-head", "logicad-worker"
POLICIES = {"head": ["head-autoscaler-policy.json", "head-s3-policy.json"], "worker": ["worker-s3-policy.json"]}
PREFIXES = {"head": {"read": {"data"}, "write": {"ray_results", "mlflow-artifacts", "mlflow-backup"}},
            "worker": {"read": {"data"}, "write": {"ray_results"}}}


@pytest.fixture(scope="module")
def text() -> str:
    return CLUSTER.read_text()


@pytest.fixture(scope="module")
def cluster(text) -> dict:
    return yaml.safe_load(text)


def workers(config: dict) -> dict[str, dict]:
    types = config["available_node_types"]
    return {name: spec for name, spec in types.items() if name != config["head_node_type"]}


def strings(node: Any) -> Iterator[str]:
    """Every string value in the parsed config (commands included), depth first."""
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for value in node.values():
            yield from strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from strings(value)


# --- the rules ------------------------------------------------------------------------------------
def image_problems(config: dict) -> list[str]:
    """Every node type names the current Deep Learning Base GPU image (its SSM parameter, or a
    pinned ami- id), never Ray's `latest_dlami` (a fixed 2021 image with Python 3.6), and all
    node types use the same one (Ray needs one Python version cluster-wide)."""
    problems, images = [], set()
    for name, spec in config["available_node_types"].items():
        image = str(spec.get("node_config", {}).get("ImageId", ""))
        images.add(image)
        if image != f"resolve:ssm:{DLAMI_PARAMETER}" and not re.fullmatch(r"ami-[0-9a-f]{8,17}", image):
            problems.append(f"{name}: ImageId {image!r} is neither resolve:ssm:{DLAMI_PARAMETER} nor an ami- id")
    if len(images) > 1:
        problems.append(f"node types use different images: {sorted(images)}")
    return problems


def profile_problems(config: dict) -> list[str]:
    """The head has its own profile (Ray's autoscaler rights + S3) and every worker type has the
    S3-only worker profile: the names deploy/iam/create_profiles.sh creates."""
    problems = []
    head = config["available_node_types"][config["head_node_type"]]["node_config"].get("IamInstanceProfile")
    if head != {"Name": HEAD_PROFILE}:
        problems.append(f"head: IamInstanceProfile {head!r}, expected {{'Name': {HEAD_PROFILE!r}}}")
    for name, spec in workers(config).items():
        profile = spec.get("node_config", {}).get("IamInstanceProfile")
        if profile != {"Name": WORKER_PROFILE}:
            problems.append(f"{name}: IamInstanceProfile {profile!r}, expected {{'Name': {WORKER_PROFILE!r}}}")
    return problems


def region_problems(config: dict) -> list[str]:
    """The region is written once, in provider.region; nodes read theirs from EC2 metadata."""
    found = [match for value in strings(config) for match in REGION.findall(value)]
    if found != [config["provider"]["region"]]:
        return [f"region written {len(found)} times ({found}); expected once, in provider.region"]
    return []


def scheduler(config: dict) -> Callable[[list[dict[str, float]]], dict[str, int]]:
    """Ray's own autoscaler decision: which node types it starts for resource demands."""
    from ray.autoscaler._private.node_provider_availability_tracker import NodeAvailabilitySummary
    from ray.autoscaler._private.resource_demand_scheduler import _default_utilization_scorer, get_nodes_for
    from ray.autoscaler._private.util import prepare_config

    prepared = prepare_config(copy.deepcopy(config))
    scorer = functools.partial(_default_utilization_scorer, node_availability_summary=NodeAvailabilitySummary({}))

    def start(demands: list[dict[str, float]]) -> dict[str, int]:
        added, _ = get_nodes_for(prepared["available_node_types"], {}, prepared["head_node_type"],
                                 prepared["max_workers"], demands, scorer)
        return dict(added)

    return start


def cpu_worker_problems(config: dict) -> list[str]:
    """A CPU worker type exists (from 0), and Ray's autoscaler starts no GPU node for any amount
    of CPU-only demand (score-only sweeps, fusion, evaluation) but does for GPU demand."""
    gpu_types = {n for n, s in workers(config).items() if s.get("resources", {}).get("GPU", 0) > 0}
    cpu_types = {n for n, s in workers(config).items()
                 if s.get("resources", {}).get("CPU", 0) > 0 and n not in gpu_types}
    if not cpu_types:
        return ["no CPU worker type: CPU-only work would start GPU instances"]
    problems = [f"{n}: min_workers {workers(config)[n].get('min_workers')}, expected 0" for n in cpu_types
                if workers(config)[n].get("min_workers") != 0]
    start = scheduler(config)
    flood = start([{"CPU": 1}] * 200)
    if set(flood) & gpu_types:
        problems.append(f"CPU-only demand starts GPU nodes: {flood}")
    if gpu_types and not set(start([{"CPU": 1, "GPU": 1}] * 2)) & gpu_types:
        problems.append("GPU demand starts no GPU node")
    return problems


def port_table(text: str) -> dict[int, dict[str, str | None]]:
    """The `# port N (what): bind X; reached by Y[; why 0.0.0.0: Z]` lines of cluster.yaml."""
    table = {}
    for line in text.splitlines():
        match = PORT_LINE.match(line.strip())
        if match:
            port, what, bind, who, rest = match.groups()
            why = re.search(r"; why 0\.0\.0\.0: (.+)", rest)
            table[int(port)] = {"what": what, "bind": bind.strip(), "who": who.strip(), "why": why and why.group(1)}
    return table


def actual_binds(config: dict) -> dict[int, str]:
    """Where the head's commands bind each control port ('127.0.0.1', '0.0.0.0', 'head private IP')."""
    head = " ".join(config["head_start_ray_commands"])
    dashboard = re.search(r"--dashboard-host[= ](\S+)", head)
    binds = {8265: dashboard.group(1) if dashboard else "127.0.0.1",  # Ray's default
             10001: "head private IP",  # Ray binds its client server to the node's IP
             6379: "0.0.0.0"}  # Ray's GCS listens on all interfaces
    mlflow = re.search(r"head_services\.sh\s+(\"[^\"]*\"|\S+)", head)
    if mlflow is None:
        binds[5000] = "not started"
    else:
        host = mlflow.group(1)
        binds[5000] = "head private IP" if "hostname -I" in host else host.strip('"')
    if re.search(r"--host[= ]0\.0\.0\.0", head):
        binds[5000] = "0.0.0.0"
    return binds


def port_problems(config: dict, text: str) -> list[str]:
    """Each control port is listed with its binding and who reaches it; the binding matches the
    commands; 0.0.0.0 only with a stated reason."""
    table, binds, problems = port_table(text), actual_binds(config), []
    for port, what in CONTROL_PORTS.items():
        row = table.get(port)
        if row is None:
            problems.append(f"port {port} ({what}): no `# port {port} (...): bind ...; reached by ...` line")
            continue
        if row["bind"].split(" (")[0] != binds[port]:
            problems.append(f"port {port}: the file says bind {row['bind']!r}, the commands bind {binds[port]!r}")
        if binds[port] == "0.0.0.0" and not row["why"]:
            problems.append(f"port {port} ({what}) is bound to 0.0.0.0 without a stated reason")
    return problems


def rendered_policy(name: str, bucket: str = "bkt", account: str = "123456789012") -> dict:
    """A policy template with its placeholders filled in, as create_profiles.sh does."""
    return json.loads((IAM / name).read_text().replace("${BUCKET}", bucket).replace("${ACCOUNT_ID}", account))


def s3_grants(policy: dict, bucket: str = "bkt") -> dict[str, set[str]]:
    """Prefixes readable / writable under the bucket; raises on grants beyond the bucket's objects."""
    grants: dict[str, set[str]] = {"read": set(), "write": set()}
    for statement in policy["Statement"]:
        actions = [statement["Action"]] if isinstance(statement["Action"], str) else statement["Action"]
        resources = [statement["Resource"]] if isinstance(statement["Resource"], str) else statement["Resource"]
        s3_actions = [a for a in actions if a.startswith("s3:")]
        if not s3_actions:
            continue
        assert statement["Effect"] == "Allow" and not any("*" in a for a in s3_actions), statement
        for resource in resources:
            if resource == f"arn:aws:s3:::{bucket}":
                assert set(s3_actions) <= {"s3:ListBucket", "s3:GetBucketLocation"}, statement
                continue
            match = re.fullmatch(rf"arn:aws:s3:::{bucket}/([a-z_-]+)/\*", resource)
            assert match, f"S3 resource beyond one prefix of the bucket: {resource}"
            if "s3:GetObject" in s3_actions:
                grants["read"].add(match.group(1))
            if {"s3:PutObject", "s3:DeleteObject"} & set(s3_actions):
                grants["write"].add(match.group(1))
    return grants


# --- tests on the shipped file ----------------------------------------------------------------------------
def test_cluster_yaml_passes_rays_config_validation(cluster):
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(copy.deepcopy(cluster)))  # raises on an invalid config


@pytest.mark.parametrize("rule", [image_problems, profile_problems, region_problems, cpu_worker_problems])
def test_cluster_rules_hold(cluster, rule):
    assert rule(cluster) == []


def test_control_ports_are_closed_and_each_says_who_reaches_it(cluster, text):
    assert port_problems(cluster, text) == []
    table = port_table(text)
    assert table[8265]["bind"] == "127.0.0.1" and "ray dashboard cluster.yaml" in table[8265]["who"]
    assert table[5000]["bind"] == "head private IP" and "cluster's nodes only" in table[5000]["who"]


# --- the rules fail on broken copies -----------------------------------------------------------------------
def _broken(cluster: dict, change: Callable[[dict], None]) -> dict:
    config = copy.deepcopy(cluster)
    change(config)
    return config


def _set_image(config: dict, image: str) -> None:
    config["available_node_types"]["gpu_worker"]["node_config"]["ImageId"] = image


def _drop_worker_profile(config: dict) -> None:
    del config["available_node_types"]["gpu_worker"]["node_config"]["IamInstanceProfile"]


def _second_region(config: dict) -> None:
    config["setup_commands"].append("echo 'export AWS_DEFAULT_REGION=us-east-1' >> ~/logicad.env")


def _no_cpu_worker(config: dict) -> None:
    del config["available_node_types"]["cpu_worker"]


def _small_cpu_worker(config: dict) -> None:  # CPU demand beyond it would spill onto GPU nodes
    config["available_node_types"]["cpu_worker"]["max_workers"] = 1


@pytest.mark.parametrize("rule, change", [
    (image_problems, lambda c: _set_image(c, "latest_dlami")),
    (image_problems, lambda c: _set_image(c, "ami-0123456789abcdef0")),  # differs from the other types
    (profile_problems, _drop_worker_profile),
    (region_problems, _second_region),
    (cpu_worker_problems, _no_cpu_worker),
    (cpu_worker_problems, _small_cpu_worker),
], ids=["latest_dlami", "mixed-images", "no-worker-profile", "two-regions", "no-cpu-worker", "cpu-spills-to-gpu"])
def test_cluster_rules_catch_a_broken_config(cluster, rule, change):
    assert rule(_broken(cluster, change))


@pytest.mark.parametrize("replace, expect", [
    (("--dashboard-host=127.0.0.1", "--dashboard-host=0.0.0.0"), "the commands bind '0.0.0.0'"),
    (("head_services.sh \"$(hostname -I | awk '{print $1}')\"", "head_services.sh 0.0.0.0"), "port 5000"),
    (("# port 6379 (Ray GCS): bind 0.0.0.0; reached by the cluster's nodes only; why 0.0.0.0:",
      "# port 6379 (Ray GCS): bind 0.0.0.0; reached by the cluster's nodes only; because:"),
     "6379 (Ray GCS) is bound to 0.0.0.0 without a stated reason"),
], ids=["dashboard-public", "mlflow-public", "no-reason"])
def test_port_rule_catches_an_open_control_port(text, replace, expect):
    old, new = replace
    assert old in text
    broken = text.replace(old, new)
    problems = port_problems(yaml.safe_load(broken), broken)
    assert any(expect in p for p in problems), problems


# --- setup, image and torch ---------------------------------------------------------------------------
def test_setup_checks_the_driver_then_installs_a_matched_torch_pair_before_logicad(cluster, text):
    commands = cluster["setup_commands"]
    driver = next(i for i, c in enumerate(commands) if "nvidia-smi" in c and "580" in c)
    pair = next(i for i, c in enumerate(commands) if "torch==" in c and "torchvision==" in c)
    logicad = next(i for i, c in enumerate(commands) if "pip install" in c and "logicad" in c)
    assert driver < pair < logicad
    assert "Python 3.10" in text and "NVIDIA driver 595" in text  # the one place that says what the image has
    assert f"--name {DLAMI_PARAMETER}" in text  # the command that finds the image's id


def test_head_serves_mlflow_from_a_restored_store_and_backs_it_up(cluster, text):
    head = " ".join(cluster["head_start_ray_commands"])
    assert "ray start --head" in head and "--dashboard-host=127.0.0.1" in head
    assert head.index("head_services.sh") < head.index("ray start --head")
    workers_ = " ".join(cluster["worker_start_ray_commands"])
    assert "MLFLOW_TRACKING_URI=http://$RAY_HEAD_IP:5000" in workers_
    script = (REPO / "scripts" / "mlflow_head.sh").read_text()
    assert "backup restore" in script and '--artifacts-destination "$LOGICAD_MLFLOW_ARTIFACTS"' in script
    assert '--host "$LOGICAD_MLFLOW_HOST"' in script and "0.0.0.0" not in script


def test_head_services_restore_before_serving_and_back_up_last_at_shutdown(tmp_path):
    env = {**os.environ, "HOME": str(tmp_path), "AWS_DEFAULT_REGION": "eu-west-1", "LOGICAD_UNIT_DIR": str(tmp_path),
           "LOGICAD_MLFLOW_ARTIFACTS": "s3://b/mlflow-artifacts", "LOGICAD_MLFLOW_BACKUP": "s3://b/mlflow-backup"}
    subprocess.run(["bash", str(REPO / "scripts" / "head_services.sh"), "10.0.0.5", "5000"], env=env, check=True,
                   capture_output=True)
    server = (tmp_path / "logicad-mlflow.service").read_text()
    loop = (tmp_path / "logicad-mlflow-backup.service").read_text()
    assert "ExecStartPre=" in server and "backup restore --db" in server  # `systemctl start` fails with it
    assert "After=network-online.target logicad-mlflow-backup.service" in server  # stops before the loop
    assert "backup loop --db" in loop and "--interval 300" in loop and "After=network-online.target" in loop
    assert "LOGICAD_MLFLOW_HOST=10.0.0.5" in (tmp_path / "mlflow-server.env").read_text()
    managed = {**env, "LOGICAD_MLFLOW_BACKEND_URI": "postgresql://u@db/mlflow", "LOGICAD_UNIT_DIR": str(tmp_path / "m")}
    (tmp_path / "m").mkdir()
    subprocess.run(["bash", str(REPO / "scripts" / "head_services.sh"), "10.0.0.5"], env=managed, check=True,
                   capture_output=True)
    assert [p.name for p in (tmp_path / "m").glob("*.service")] == ["logicad-mlflow.service"]


# --- IAM ------------------------------------------------------------------------------------------------
def test_policies_exist_and_are_referenced(text):
    script = (IAM / "create_profiles.sh").read_text()
    for files in POLICIES.values():
        for name in files:
            assert (IAM / name).is_file() and name in script and f"deploy/iam/{name}" in text
    assert f"role {HEAD_PROFILE} " in script and f"role {WORKER_PROFILE} " in script


@pytest.mark.parametrize("who", ["head", "worker"])
def test_s3_policies_grant_only_logicads_prefixes(who):
    grants: dict[str, set[str]] = {"read": set(), "write": set()}
    for name in POLICIES[who]:
        for kind, prefixes in s3_grants(rendered_policy(name)).items():
            grants[kind] |= prefixes
    expected = PREFIXES[who]
    assert grants["write"] == expected["write"]
    assert grants["read"] == expected["read"] | expected["write"]


def test_head_keeps_the_autoscalers_rights_and_passes_only_the_worker_role(cluster):
    policy = rendered_policy("head-autoscaler-policy.json")
    actions = {a for s in policy["Statement"] for a in ([s["Action"]] if isinstance(s["Action"], str) else s["Action"])}
    assert {"ec2:RunInstances", "ec2:TerminateInstances", "ec2:CreateTags", "ec2:Describe*", "iam:PassRole"} <= actions
    passrole = next(s for s in policy["Statement"] if s["Action"] == "iam:PassRole")
    assert passrole["Resource"] == f"arn:aws:iam::123456789012:role/{WORKER_PROFILE}"
    own = next(s for s in policy["Statement"] if "ec2:TerminateInstances" in s["Action"])
    assert own["Condition"]["StringEquals"]["ec2:ResourceTag/ray-cluster-name"] == cluster["cluster_name"]
    worker_actions = {a for s in rendered_policy("worker-s3-policy.json")["Statement"]
                      for a in ([s["Action"]] if isinstance(s["Action"], str) else s["Action"])}
    assert all(a.startswith("s3:") for a in worker_actions)


def test_the_buckets_prefixes_in_the_cluster_match_the_policies():
    node_env = (REPO / "scripts" / "node_env.sh").read_text()
    for prefix in ("mlflow-artifacts", "mlflow-backup"):
        assert f"s3://$BUCKET/{prefix}" in node_env and prefix in PREFIXES["head"]["write"]


# --- the MLflow UI relay ------------------------------------------------------------------------------------
def test_tcp_relay_forwards_http(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("tcp_relay", REPO / "scripts" / "tcp_relay.py")
    relay = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(relay)

    class Hello(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"mlflow")

        def log_message(self, *args):
            pass

    from servers import free_port

    upstream = ThreadingHTTPServer(("127.0.0.1", 0), Hello)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    port, loop, ready, tasks = free_port(), asyncio.new_event_loop(), threading.Event(), []

    async def run() -> None:
        started = asyncio.Event()
        tasks.append(asyncio.ensure_future(relay.serve(f"127.0.0.1:{port}", f"127.0.0.1:{upstream.server_port}",
                                                       started)))
        await started.wait()
        ready.set()
        try:
            await tasks[0]
        except asyncio.CancelledError:
            pass

    thread = threading.Thread(target=lambda: loop.run_until_complete(run()), daemon=True)
    thread.start()
    try:
        assert ready.wait(10)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as answer:
            assert answer.read() == b"mlflow"
    finally:
        loop.call_soon_threadsafe(tasks[0].cancel)
        thread.join(10)
        upstream.shutdown()


def test_node_env_takes_the_region_from_instance_metadata_and_sources_cleanly(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake_curl = bin_dir / "curl"  # EC2's instance metadata service, as curl would answer it
    fake_curl.write_text('#!/bin/sh\ncase "$*" in *api/token*) echo token ;; *placement/region*) echo eu-west-1 ;; '
                         '*) exit 22 ;; esac\n')
    fake_curl.chmod(0o755)
    env = {**os.environ, "HOME": str(tmp_path), "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    subprocess.run(["bash", str(REPO / "scripts" / "node_env.sh"), "my-bucket"], env=env, check=True,
                   capture_output=True)
    shown = subprocess.run(["bash", "-c", "source ~/logicad.env && echo $AWS_DEFAULT_REGION $LOGICAD_MLFLOW_BACKUP"],
                           env=env, check=True, capture_output=True, text=True).stdout.split()
    assert shown == ["eu-west-1", "s3://my-bucket/mlflow-backup"]
    (tmp_path / "logicad.local.env").write_text("export LOGICAD_MLFLOW_APP=basic-auth\n")
    shown = subprocess.run(["bash", "-c", "source ~/logicad.env && echo $LOGICAD_MLFLOW_APP"], env=env, check=True,
                           capture_output=True, text=True).stdout.strip()
    assert shown == "basic-auth"
