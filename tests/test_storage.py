"""S3 storage against a real S3 API (moto's server, a separate process on 127.0.0.1):
preflight failures, Ray run storage, dataset sync and artifact transfers."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from logicad.pipelines.storage import (MARKER, S3Settings, StorageError, download_dir, parse_s3_uri, preflight_s3,
                                       ray_storage, read_marker, sync_dataset, upload_dir)
from s3_server import ACCESS_KEY, REGION, SECRET_KEY, client, enforce_auth, iam_keys, moto_server
from servers import free_port


# --- fixtures: s3_endpoint, s3_settings and bucket live in conftest.py -----------------------
@pytest.fixture(scope="module")
def auth_server(tmp_path_factory):
    """A second moto server that checks signatures and IAM policies: one bucket, a read-write
    key and a read-only key (created before enforcement is switched on)."""
    with moto_server(tmp_path_factory.mktemp("moto-auth")) as url:
        client(url).create_bucket(Bucket="secured")
        keys = {"rw": iam_keys(url, "writer", ["s3:*"]),
                "ro": iam_keys(url, "reader", ["s3:ListBucket", "s3:GetObject"])}
        enforce_auth(url)
        yield url, keys


def _settings(endpoint: str, access_key: str, secret_key: str) -> S3Settings:
    return S3Settings(endpoint_url=endpoint, region=REGION, access_key=access_key, secret_key=secret_key)


def _keys(endpoint: str, bucket: str, prefix: str = "") -> list[str]:
    pages = client(endpoint).get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return sorted(obj["Key"] for page in pages for obj in page.get("Contents", []))


def _one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message
    return message


# --- URIs and settings --------------------------------------------------------------------
def test_parse_s3_uri_splits_bucket_and_prefix():
    assert parse_s3_uri("s3://bucket/prefix/x") == ("bucket", "prefix/x")
    assert parse_s3_uri("s3://bucket/prefix/") == ("bucket", "prefix")
    assert parse_s3_uri("s3://bucket") == ("bucket", "")
    assert parse_s3_uri("s3://bucket/a/b").uri == "s3://bucket/a/b"


@pytest.mark.parametrize("uri", ["bucket/prefix", "s3:/bucket/x", "s3://", "s3:///x", "s3://b/x",
                                 "s3://bad bucket/x", "gs://bucket/x", "s3://bucket//x"])
def test_parse_s3_uri_rejects_bad_uris_naming_the_uri_and_expected_form(uri):
    with pytest.raises(StorageError) as err:
        parse_s3_uri(uri)
    assert repr(uri) in _one_line(err) and "expected s3://bucket/prefix" in str(err.value)
    assert isinstance(err.value, ValueError)


def test_settings_take_endpoint_from_flag_then_environment(monkeypatch):
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://env:9000")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    assert S3Settings.from_env().endpoint_url == "http://env:9000"
    assert S3Settings.from_env("http://flag:9000").endpoint_url == "http://flag:9000"
    assert S3Settings.from_env().region == "eu-west-1"
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    monkeypatch.setenv("MLFLOW_S3_ENDPOINT_URL", "http://mlflow:9000")
    assert S3Settings.from_env().endpoint_url == "http://mlflow:9000"
    with pytest.raises(StorageError, match="S3 endpoint '127.0.0.1:9000' is not a URL; expected http"):
        S3Settings.from_env("127.0.0.1:9000")


# --- preflight ------------------------------------------------------------------------------
def test_preflight_passes_on_a_writable_bucket_and_leaves_nothing_behind(s3_settings, bucket, s3_endpoint):
    preflight_s3(f"s3://{bucket}/runs", s3_settings)
    assert _keys(s3_endpoint, bucket) == []


def test_preflight_on_unreachable_endpoint_fails_fast_naming_the_endpoint():
    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    start = time.monotonic()
    with pytest.raises(StorageError) as err:
        preflight_s3("s3://bucket/prefix", _settings(endpoint, ACCESS_KEY, SECRET_KEY))
    assert time.monotonic() - start < 15
    assert _one_line(err) == (f"s3://bucket/prefix: cannot reach S3 endpoint {endpoint} (connection refused); "
                              "expected a reachable S3 API (set --s3-endpoint-url or AWS_ENDPOINT_URL)")


def test_preflight_on_an_http_server_that_is_not_s3_says_so():
    import http.server
    import threading

    class NotFound(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), NotFound)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        with pytest.raises(StorageError) as err:
            preflight_s3("s3://bucket/prefix", _settings(endpoint, ACCESS_KEY, SECRET_KEY))
    finally:
        server.shutdown()
        server.server_close()
    assert _one_line(err) == (f"s3://bucket/prefix: endpoint {endpoint} answered HTTP 404 without an S3 error "
                              "document; expected an S3 API there (set --s3-endpoint-url or AWS_ENDPOINT_URL)")


def test_preflight_names_the_missing_bucket(s3_settings, s3_endpoint):
    with pytest.raises(StorageError) as err:
        preflight_s3("s3://nobucket/x", s3_settings)
    assert _one_line(err).startswith(f"s3://nobucket/x: bucket 'nobucket' does not exist at endpoint {s3_endpoint}")


def test_preflight_passes_with_valid_keys_on_a_server_that_checks_signatures(auth_server):
    url, keys = auth_server
    preflight_s3("s3://secured/runs", _settings(url, **keys["rw"]))


def test_preflight_rejects_an_unknown_access_key(auth_server):
    url, _ = auth_server
    with pytest.raises(StorageError) as err:
        preflight_s3("s3://secured/runs", _settings(url, "AKIAUNKNOWN000000000", "whatever"))
    assert _one_line(err).startswith("s3://secured/runs: access denied with the given credentials "
                                     f"(InvalidAccessKeyId) while listing the bucket at endpoint {url}")


def test_preflight_rejects_a_wrong_secret_key(auth_server):
    url, keys = auth_server
    with pytest.raises(StorageError) as err:
        preflight_s3("s3://secured/runs", _settings(url, keys["rw"]["access_key"], "wrong-secret"))
    assert "access denied with the given credentials (SignatureDoesNotMatch)" in _one_line(err)


def test_preflight_rejects_read_only_keys_because_run_storage_writes(auth_server):
    url, keys = auth_server
    with pytest.raises(StorageError) as err:
        preflight_s3("s3://secured/runs", _settings(url, **keys["ro"]))
    assert "(AccessDenied) while writing and deleting a test object under the prefix" in _one_line(err)


# --- Ray run storage --------------------------------------------------------------------------
def test_ray_storage_of_a_local_path_is_absolute_without_filesystem(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert ray_storage("ray_results") == (str(tmp_path / "ray_results"), None)


def test_ray_storage_filesystem_writes_into_the_bucket(s3_settings, bucket, s3_endpoint):
    path, filesystem = ray_storage(f"s3://{bucket}/runs/", s3_settings)
    assert path == f"{bucket}/runs"
    with filesystem.open_output_stream(f"{path}/exp/hello.txt") as out:
        out.write(b"hello")
    assert _keys(s3_endpoint, bucket) == ["runs/exp/hello.txt"]
    assert [info.path for info in filesystem.get_file_info(_selector(f"{path}/exp"))] == [f"{path}/exp/hello.txt"]


def _selector(base: str):
    from pyarrow.fs import FileSelector

    return FileSelector(base, recursive=True)


@pytest.mark.timeout(180)
def test_ray_train_checkpoint_lands_in_the_bucket(s3_settings, bucket, s3_endpoint):
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from s3_server import train_loop_one_checkpoint

    path, filesystem = ray_storage(f"s3://{bucket}/ray", s3_settings)
    tests_dir = str(Path(__file__).parent)
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=300 * 2**20, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join(filter(None, [tests_dir,
                                                                                    os.environ.get("PYTHONPATH")]))}})
    try:
        trainer = TorchTrainer(train_loop_one_checkpoint, scaling_config=ScalingConfig(num_workers=1),
                               run_config=RunConfig(name="one", storage_path=path, storage_filesystem=filesystem))
        result = trainer.fit()
    finally:
        ray.shutdown()
    assert result.checkpoint is not None and result.checkpoint.path.startswith(f"{path}/one/")
    keys = _keys(s3_endpoint, bucket, "ray/one/")
    assert any(key.endswith("/weights.txt") and "/checkpoint_" in key for key in keys), keys


# --- datasets and artifacts ------------------------------------------------------------------
def _png_tree(root: Path) -> dict[str, bytes]:
    """A few small PNG files in an MVTec-LOCO-like layout."""
    import io

    import numpy as np
    from PIL import Image

    files = {}
    for i, rel in enumerate(["train/good/000.png", "train/good/001.png", "test/logical_anomalies/000.png",
                             "ground_truth/logical_anomalies/000/000.png"]):
        buffer = io.BytesIO()
        Image.fromarray(np.full((8, 8, 3), 40 * i, dtype=np.uint8)).save(buffer, format="PNG")
        files[rel] = buffer.getvalue()
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(files[rel])
    return files


def _upload(endpoint: str, bucket: str, prefix: str, files: dict[str, bytes]) -> None:
    s3 = client(endpoint)
    for rel, body in files.items():
        s3.put_object(Bucket=bucket, Key=f"{prefix}/{rel}", Body=body)


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """(inode, mtime_ns) of every file: a rewritten or replaced file changes one of them."""
    return {p.relative_to(root).as_posix(): (p.stat().st_ino, p.stat().st_mtime_ns)
            for p in root.rglob("*") if p.is_file() and p.name != MARKER}


def test_sync_dataset_downloads_once_and_mirrors_the_tree(s3_settings, bucket, s3_endpoint, tmp_path):
    files = _png_tree(tmp_path / "src")
    _upload(s3_endpoint, bucket, "data/loco", files)
    client(s3_endpoint).put_object(Bucket=bucket, Key="data/loco2/other.png", Body=b"x")  # sibling prefix
    root = sync_dataset(f"s3://{bucket}/data/loco", tmp_path / "cache", s3_settings)
    assert root == tmp_path / "cache" / bucket / "data" / "loco"
    assert {rel: (root / rel).read_bytes() for rel in _snapshot(root)} == files
    assert read_marker(root) == {"uri": f"s3://{bucket}/data/loco", "objects": 4,
                                 "bytes": sum(map(len, files.values())), "downloaded": 4}
    before = _snapshot(root)
    assert sync_dataset(f"s3://{bucket}/data/loco/", tmp_path / "cache", s3_settings) == root
    assert _snapshot(root) == before and read_marker(root)["downloaded"] == 0


def test_sync_dataset_fetches_changed_objects_and_drops_removed_ones(s3_settings, bucket, s3_endpoint, tmp_path):
    files = _png_tree(tmp_path / "src")
    _upload(s3_endpoint, bucket, "data", files)
    root = sync_dataset(f"s3://{bucket}/data", tmp_path / "cache", s3_settings)
    s3 = client(s3_endpoint)
    s3.put_object(Bucket=bucket, Key="data/train/good/000.png", Body=b"new bytes")
    s3.delete_object(Bucket=bucket, Key="data/train/good/001.png")
    sync_dataset(f"s3://{bucket}/data", tmp_path / "cache", s3_settings)
    assert (root / "train/good/000.png").read_bytes() == b"new bytes"
    assert not (root / "train/good/001.png").exists() and read_marker(root)["downloaded"] == 1


def test_sync_dataset_after_an_interrupted_sync_completes_and_removes_partial_files(s3_settings, bucket,
                                                                                    s3_endpoint, tmp_path):
    files = _png_tree(tmp_path / "src")
    _upload(s3_endpoint, bucket, "data", files)
    root = tmp_path / "cache" / bucket / "data"
    (root / "train/good").mkdir(parents=True)
    (root / "train/good/.000.png.part-deadbeef").write_bytes(b"half a file")  # what a kill leaves behind
    sync_dataset(f"s3://{bucket}/data", tmp_path / "cache", s3_settings)
    assert {rel: (root / rel).read_bytes() for rel in _snapshot(root)} == files
    assert read_marker(root)["objects"] == 4


def test_sync_dataset_of_an_empty_prefix_names_the_uri(s3_settings, bucket, tmp_path):
    with pytest.raises(StorageError) as err:
        sync_dataset(f"s3://{bucket}/nothing", tmp_path / "cache", s3_settings)
    assert _one_line(err).startswith(f"no objects under s3://{bucket}/nothing/")


def test_upload_dir_and_download_dir_round_trip(s3_settings, bucket, s3_endpoint, tmp_path):
    files = _png_tree(tmp_path / "artifacts")
    (tmp_path / "artifacts" / "best_config.yaml").write_text("margin: 0.5\n")
    files["best_config.yaml"] = b"margin: 0.5\n"
    stats = upload_dir(tmp_path / "artifacts", f"s3://{bucket}/runs/r1", s3_settings)
    assert stats.transferred == 5 and _keys(s3_endpoint, bucket) == sorted(f"runs/r1/{rel}" for rel in files)
    assert upload_dir(tmp_path / "artifacts", f"s3://{bucket}/runs/r1", s3_settings).transferred == 0
    back = download_dir(f"s3://{bucket}/runs/r1", tmp_path / "back", s3_settings)
    assert {p.relative_to(back).as_posix(): p.read_bytes() for p in back.rglob("*") if p.is_file()} == files


def test_transfers_to_a_missing_bucket_fail_with_one_line(s3_settings, tmp_path):
    (tmp_path / "a.txt").write_text("a")
    with pytest.raises(StorageError) as err:
        upload_dir(tmp_path, "s3://nobucket/x", s3_settings)
    assert "bucket 'nobucket' does not exist" in _one_line(err)
    with pytest.raises(StorageError) as err:
        download_dir("s3://nobucket/x", tmp_path / "d", s3_settings)
    assert "bucket 'nobucket' does not exist" in _one_line(err)

