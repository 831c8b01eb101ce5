"""S3-backed storage: Ray run storage, artifacts and datasets on any S3-compatible endpoint.

One place knows how to talk to S3 so that every command fails the same way: a bad URI,
an unreachable endpoint, a missing bucket or credentials that cannot list and write under
the prefix are reported as one `StorageError` line (naming the URI, the endpoint and what
was expected) before any training starts. Transfers share one listing and one parallel
copy helper; downloads are atomic (temporary file, then rename), so an interrupted sync
never leaves half files behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import socket
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, NamedTuple, Sequence
from urllib.parse import urlparse

import boto3
import botocore.exceptions as boto_errors
from boto3.exceptions import Boto3Error, S3UploadFailedError
from boto3.exceptions import RetriesExceededError as TransferRetriesExceeded
from boto3.s3.transfer import TransferConfig
from botocore.config import Config

DEFAULT_REGION = "us-east-1"
CONNECT_TIMEOUT_S = 3
READ_TIMEOUT_S = 10
PREFLIGHT_ATTEMPTS = 2  # botocore "standard" mode counts the first try: one retry
TRANSFER_ATTEMPTS = 5
THREADS = 8
MARKER = ".synced"  # written last by sync_dataset: the cache holds a complete copy
LOCK_SUFFIX = ".sync-lock"
PART = ".part-"  # temporary download names: .<name>.part-<random>
ENDPOINT_HINT = "set --s3-endpoint-url or AWS_ENDPOINT_URL"
CREDENTIALS_HINT = "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE or an instance role"
_BUCKET = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{1,61}[A-Za-z0-9]")
_DENIED = {"403", "AccessDenied", "AllAccessDisabled", "InvalidAccessKeyId", "SignatureDoesNotMatch",
           "InvalidToken", "ExpiredToken", "TokenRefreshRequired", "InvalidSecurity"}
_WRONG_REGION = {"301", "PermanentRedirect", "AuthorizationHeaderMalformed", "IllegalLocationConstraintException"}


class StorageError(ValueError):
    """Storage that cannot be used: the message is one line naming the URI and what was expected."""


# --- locations and settings ------------------------------------------------------------------
class S3Location(NamedTuple):
    """`s3://bucket/prefix` split into bucket and key prefix (no leading or trailing '/')."""

    bucket: str
    prefix: str

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}".rstrip("/")

    def key(self, relative: str) -> str:
        """The object key of a path relative to the prefix."""
        return f"{self.prefix}/{relative}" if self.prefix else relative

    def list_prefix(self) -> str:
        """The listing prefix: ends with '/' so that `data` does not also match `data2/`."""
        return f"{self.prefix}/" if self.prefix else ""


def parse_s3_uri(uri: str) -> S3Location:
    """Split `s3://bucket/prefix/x` into `(bucket, "prefix/x")`; anything else is a StorageError."""
    parsed = urlparse(uri)
    prefix = parsed.path.strip("/")
    if parsed.scheme != "s3" or not _BUCKET.fullmatch(parsed.netloc) or "//" in parsed.path or parsed.query:
        raise StorageError(f"{uri!r} is not an S3 URI; expected s3://bucket/prefix "
                           "(bucket: 3-63 letters, digits, '.', '-' or '_'; prefix optional)")
    return S3Location(parsed.netloc, prefix)


@dataclass(frozen=True)
class S3Settings:
    """Where S3 is and who we are. Credentials left unset come from boto3's default chain
    (environment, shared config/profile, instance role), resolved when a client is made."""

    endpoint_url: str | None = None
    region: str = DEFAULT_REGION
    profile: str | None = None
    access_key: str | None = None
    secret_key: str | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        endpoint = urlparse(self.endpoint_url or "https://aws")
        if endpoint.scheme not in ("http", "https") or not endpoint.netloc:
            raise StorageError(f"S3 endpoint {self.endpoint_url!r} is not a URL; expected http(s)://host[:port] "
                               f"({ENDPOINT_HINT})")

    @classmethod
    def from_env(cls, endpoint_url: str | None = None, profile: str | None = None) -> "S3Settings":
        """`--s3-endpoint-url` wins over AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL, MLFLOW_S3_ENDPOINT_URL."""
        env = os.environ
        endpoint = endpoint_url or env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") \
            or env.get("MLFLOW_S3_ENDPOINT_URL")
        region = env.get("AWS_DEFAULT_REGION") or env.get("AWS_REGION") or DEFAULT_REGION
        return cls(endpoint_url=endpoint or None, region=region, profile=profile or env.get("AWS_PROFILE"))

    @property
    def endpoint(self) -> str:
        """The endpoint as messages name it."""
        return self.endpoint_url or f"https://s3.{self.region}.amazonaws.com (AWS default)"

    def session(self) -> boto3.Session:
        """A boto3 session with the explicit keys, else the profile / default credential chain."""
        try:
            return boto3.Session(aws_access_key_id=self.access_key, aws_secret_access_key=self.secret_key,
                                 aws_session_token=self.session_token, region_name=self.region,
                                 profile_name=None if self.access_key else self.profile)
        except boto_errors.ProfileNotFound as err:
            raise StorageError(f"AWS profile {self.profile!r} not found ({err}); expected a profile "
                               "in ~/.aws/config or credentials from the environment") from None

    def client(self, attempts: int = PREFLIGHT_ATTEMPTS) -> Any:
        """An S3 client with short timeouts, so a bad endpoint fails in seconds, not minutes."""
        config = Config(connect_timeout=CONNECT_TIMEOUT_S, read_timeout=READ_TIMEOUT_S,
                        retries={"max_attempts": attempts, "mode": "standard"}, max_pool_connections=2 * THREADS,
                        s3={"addressing_style": "path"} if self.endpoint_url else None)
        return self.session().client("s3", endpoint_url=self.endpoint_url, config=config)


# --- errors ------------------------------------------------------------------------------
def _unreachable_reason(err: Exception) -> str:
    """A few words on why the endpoint did not answer (refused, timed out, unknown host, TLS)."""
    if isinstance(err, boto_errors.ConnectTimeoutError):
        return f"no connection within {CONNECT_TIMEOUT_S} s"
    if isinstance(err, boto_errors.ReadTimeoutError):
        return f"no answer within {READ_TIMEOUT_S} s"
    if isinstance(err, boto_errors.SSLError):
        return "TLS error"
    cause: BaseException | None = getattr(err, "kwargs", {}).get("error") or err.__cause__
    while cause is not None:
        if isinstance(cause, ConnectionRefusedError):
            return "connection refused"
        if isinstance(cause, socket.gaierror):
            return "host name not found"
        cause = cause.__cause__ or cause.__context__
    return type(err).__name__


def _client_error(err: boto_errors.ClientError, uri: str, settings: S3Settings, action: str) -> StorageError:
    """The one-line StorageError for an S3 error answer."""
    error = err.response.get("Error", {})
    code, bucket = str(error.get("Code", "?")), parse_s3_uri(uri).bucket
    if code.isdigit() and code not in _DENIED | _WRONG_REGION and err.operation_name == "ListObjectsV2":
        return StorageError(f"{uri}: endpoint {settings.endpoint} answered HTTP {code} without an S3 error "
                            f"document; expected an S3 API there ({ENDPOINT_HINT})")
    if code == "NoSuchBucket":
        return StorageError(f"{uri}: bucket {bucket!r} does not exist at endpoint {settings.endpoint}; "
                            f"expected an existing bucket (create it first, e.g. `aws s3 mb s3://{bucket}`)")
    if code in _DENIED:
        return StorageError(f"{uri}: access denied with the given credentials ({code}) while {action} at "
                            f"endpoint {settings.endpoint}; expected credentials that may list, read and write "
                            f"under the prefix ({CREDENTIALS_HINT})")
    if code in _WRONG_REGION:
        return StorageError(f"{uri}: bucket {bucket!r} answered {code} for region {settings.region}; expected "
                            "the bucket's region in AWS_DEFAULT_REGION or AWS_REGION")
    message = str(error.get("Message", "")).replace("\n", " ")
    return StorageError(f"{uri}: S3 error {code} ({message}) while {action} at endpoint {settings.endpoint}")


def _storage_error(err: Exception, uri: str, settings: S3Settings, action: str) -> StorageError | None:
    """The one-line StorageError for a boto3/botocore failure, or None for anything else."""
    if isinstance(err, S3UploadFailedError) and err.__context__ is not None:
        err = err.__context__  # boto3 re-raises a ClientError of an upload as a string
    if isinstance(err, TransferRetriesExceeded):
        err = err.last_exception
    if isinstance(err, (boto_errors.ConnectionError, boto_errors.HTTPClientError)):
        return StorageError(f"{uri}: cannot reach S3 endpoint {settings.endpoint} ({_unreachable_reason(err)}); "
                            f"expected a reachable S3 API ({ENDPOINT_HINT})")
    if isinstance(err, (boto_errors.NoCredentialsError, boto_errors.PartialCredentialsError,
                        boto_errors.CredentialRetrievalError)):
        return StorageError(f"{uri}: no usable AWS credentials ({type(err).__name__}); expected {CREDENTIALS_HINT}")
    if isinstance(err, boto_errors.ClientError):
        return _client_error(err, uri, settings, action)
    return None


@contextlib.contextmanager
def s3_errors(uri: str, settings: S3Settings, action: str) -> Iterator[None]:
    """Turn boto3's and botocore's exceptions inside the block into one-line StorageErrors."""
    try:
        yield
    except (boto_errors.BotoCoreError, boto_errors.ClientError, Boto3Error) as err:
        mapped = _storage_error(err, uri, settings, action)
        if mapped is None:
            raise
        raise mapped from None


# --- preflight and Ray storage -------------------------------------------------------------
def preflight_s3(uri: str, settings: S3Settings) -> None:
    """Check, before any training, that the bucket exists and that we may list and write under
    the prefix (run storage writes checkpoints). ListObjectsV2 is used instead of HeadBucket:
    it needs the same permission (s3:ListBucket), but a HEAD answer has no body, so a 403
    could not say whether the key is unknown, the secret wrong, or the policy denies."""
    location = parse_s3_uri(uri)
    client = settings.client()
    with s3_errors(uri, settings, "listing the bucket"):
        client.list_objects_v2(Bucket=location.bucket, Prefix=location.list_prefix(), MaxKeys=1)
    marker = location.key(f".logicad-preflight-{uuid.uuid4().hex}")
    with s3_errors(uri, settings, "writing and deleting a test object under the prefix"):
        client.put_object(Bucket=location.bucket, Key=marker, Body=b"")
        client.delete_object(Bucket=location.bucket, Key=marker)


def ray_storage(uri: str, settings: S3Settings | None = None) -> tuple[str, Any]:
    """`(storage_path, storage_filesystem)` for `ray.train.RunConfig`: `("bucket/prefix",
    pyarrow S3FileSystem)` for `s3://` (Ray wants no scheme when a filesystem is given), or
    `(absolute path, None)` for a local directory."""
    if not uri.startswith("s3://"):
        return str(Path(uri.removeprefix("file://")).expanduser().absolute()), None
    from pyarrow import fs

    location, settings = parse_s3_uri(uri), settings or S3Settings.from_env()
    options: dict[str, Any] = {"region": settings.region}
    if settings.endpoint_url:
        endpoint = urlparse(settings.endpoint_url)
        options.update(endpoint_override=endpoint.netloc + endpoint.path.rstrip("/"),
                       scheme=endpoint.scheme or "https")
    with s3_errors(uri, settings, "resolving credentials"):
        credentials = settings.session().get_credentials()
    if credentials is not None:
        frozen = credentials.get_frozen_credentials()
        options.update(access_key=frozen.access_key, secret_key=frozen.secret_key, session_token=frozen.token)
    return f"{location.bucket}/{location.prefix}".rstrip("/"), fs.S3FileSystem(**options)


# --- listing and transfers (shared by sync_dataset, download_dir and upload_dir) ---------------
class FileInfo(NamedTuple):
    """What decides whether a copy is current: size and modification time (POSIX seconds)."""

    size: int
    mtime: float


def _list_remote(client: Any, location: S3Location) -> dict[str, FileInfo]:
    """Objects under the prefix by relative path ('folder' placeholder keys skipped)."""
    found: dict[str, FileInfo] = {}
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=location.bucket, Prefix=location.list_prefix())
    for page in pages:
        for obj in page.get("Contents", []):
            relative = obj["Key"][len(location.list_prefix()):]
            if relative and not relative.endswith("/"):
                found[relative] = FileInfo(obj["Size"], obj["LastModified"].timestamp())
    return found


def _list_local(root: Path) -> dict[str, FileInfo]:
    """Files under root by relative POSIX path, without the sync marker and lock files."""
    found: dict[str, FileInfo] = {}
    for path in root.rglob("*") if root.is_dir() else ():
        if path.is_file() and path.name != MARKER and not path.name.endswith(LOCK_SUFFIX):
            stat = path.stat()
            found[path.relative_to(root).as_posix()] = FileInfo(stat.st_size, stat.st_mtime)
    return found


def _stale(source: FileInfo, copy: FileInfo | None) -> bool:
    """A copy is current when it has the source's size and is not older than it (downloads get
    the object's LastModified as mtime, uploads are newer than the local file)."""
    return copy is None or copy.size != source.size or int(copy.mtime) < int(source.mtime)


def _parallel(tasks: Sequence[Callable[[], None]], threads: int = THREADS) -> None:
    """Run the copies on a small thread pool; the first failure cancels the rest and is raised."""
    with ThreadPoolExecutor(max_workers=max(1, min(threads, len(tasks)))) as pool:
        futures = [pool.submit(task) for task in tasks]
        try:
            for future in futures:
                future.result()
        except BaseException:
            for future in futures:
                future.cancel()
            raise


_TRANSFER = TransferConfig(max_concurrency=4)


def _download_one(client: Any, bucket: str, key: str, path: Path, mtime: float) -> None:
    """Download to a temporary name beside the target, stamp the object's time, then rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}{PART}{uuid.uuid4().hex[:8]}")
    try:
        client.download_file(bucket, key, str(tmp), Config=_TRANSFER)
        os.utime(tmp, (mtime, mtime))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


class TransferStats(NamedTuple):
    """What a transfer found and did."""

    objects: int
    transferred: int
    bytes: int


def _download_tree(uri: str, dest: Path, settings: S3Settings, prune: bool) -> TransferStats:
    """Mirror the objects under `uri` into `dest`, copying only stale files; with `prune`, local
    files that are not objects (left-over temporary files too) are removed."""
    location, client = parse_s3_uri(uri), settings.client(TRANSFER_ATTEMPTS)
    with s3_errors(uri, settings, "listing objects under the prefix"):
        remote = _list_remote(client, location)
    if not remote:
        raise StorageError(f"no objects under {uri}/ at endpoint {settings.endpoint}; "
                           "expected the dataset or artifacts uploaded under that prefix")
    local = _list_local(dest)
    todo = [rel for rel, info in remote.items() if _stale(info, local.get(rel))]
    with s3_errors(uri, settings, "downloading objects"):
        _parallel([lambda rel=rel: _download_one(client, location.bucket, location.key(rel), dest / rel,
                                                 remote[rel].mtime) for rel in todo])
    if prune:
        for rel in set(local) - set(remote):
            (dest / rel).unlink(missing_ok=True)
    return TransferStats(len(remote), len(todo), sum(info.size for info in remote.values()))


def download_dir(uri: str, local: str | Path, settings: S3Settings) -> Path:
    """Copy everything under `uri` into `local` (files already there and current are kept;
    other local files are left alone). Returns `local`."""
    dest = Path(local)
    _download_tree(uri, dest, settings, prune=False)
    return dest


def upload_dir(local: str | Path, uri: str, settings: S3Settings) -> TransferStats:
    """Copy every file under `local` to `uri/<relative path>`, skipping objects that already
    have the file's size and are newer than it."""
    source, location, client = Path(local), parse_s3_uri(uri), settings.client(TRANSFER_ATTEMPTS)
    files = _list_local(source)
    if not files:
        raise StorageError(f"{source}: no files to upload to {uri}; expected a non-empty directory")
    with s3_errors(uri, settings, "listing objects under the prefix"):
        remote = _list_remote(client, location)
    todo = [rel for rel, info in files.items() if _stale(info, remote.get(rel))]
    with s3_errors(uri, settings, "uploading files"):
        _parallel([lambda rel=rel: client.upload_file(str(source / rel), location.bucket, location.key(rel),
                                                      Config=_TRANSFER) for rel in todo])
    return TransferStats(len(files), len(todo), sum(info.size for info in files.values()))


# --- datasets -------------------------------------------------------------------------------
@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock between processes of one node (Ray workers syncing the same dataset)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def dataset_cache_dir(uri: str, cache_root: str | Path) -> Path:
    """Where `sync_dataset` keeps `s3://bucket/prefix`: `cache_root/bucket/prefix`."""
    location = parse_s3_uri(uri)
    return Path(cache_root, location.bucket, *location.prefix.split("/")) if location.prefix \
        else Path(cache_root, location.bucket)


def read_marker(dest: Path) -> dict[str, Any] | None:
    """The `.synced` record of the last complete sync into `dest`, or None."""
    try:
        return json.loads((dest / MARKER).read_text())
    except (OSError, ValueError):
        return None


def _write_marker(dest: Path, uri: str, stats: TransferStats) -> None:
    """Write the marker atomically, last: its presence means the cache is complete."""
    tmp = dest / f"{MARKER}{PART}{uuid.uuid4().hex[:8]}"
    tmp.write_text(json.dumps({"uri": uri, "objects": stats.objects, "bytes": stats.bytes,
                               "downloaded": stats.transferred}))
    os.replace(tmp, dest / MARKER)


def sync_dataset(uri: str, cache_root: str | Path, settings: S3Settings) -> Path:
    """Mirror a dataset under `s3://bucket/prefix` into `cache_root/bucket/prefix` once per node
    and return that directory. A later call lists the prefix (one request per 1000 objects)
    and downloads only objects that changed; files that are no longer objects are removed,
    so the cache never holds more images than the bucket. Concurrent calls on one node wait
    for each other; the `.synced` marker (object count, bytes, last download count) is
    removed while a sync runs and written when it has finished."""
    dest = dataset_cache_dir(uri, cache_root)
    with _file_lock(dest.parent / f".{dest.name}{LOCK_SUFFIX}"):
        (dest / MARKER).unlink(missing_ok=True)
        stats = _download_tree(uri.rstrip("/"), dest, settings, prune=True)
        _write_marker(dest, uri.rstrip("/"), stats)
    return dest
