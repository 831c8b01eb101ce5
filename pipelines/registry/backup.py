"""Durable MLflow tracking metadata for a cluster head: sqlite store <-> one S3 object.

The head's MLflow server keeps runs, metrics and the model registry (versions, aliases, tags)
in a sqlite file on the head's root volume, which `ray down` or a lost head destroys. This
module keeps a copy in the bucket:

- `backup`: a consistent snapshot with sqlite's online backup API (safe while the server
  writes), checked with `PRAGMA integrity_check`, uploaded as `<uri>/mlflow.db` (one PUT:
  readers see the old or the new object, never half of one). Unchanged snapshots are not
  uploaded again.
- `restore`: when the head starts and the local file is missing, download the object,
  check it, and move it into place; an existing local file is never replaced.
- `loop`: `backup` every `--interval` seconds and once more on SIGTERM/SIGINT (the head runs it
  as a systemd service, so machine shutdown stops it, and so takes a last backup, while the
  network is still up). At most one interval of changes is lost when the head dies hard.

A guard keeps a fresh, empty store from overwriting a good backup: `backup` uploads only when
the local store came from `restore` (or was created where no backup existed), recorded in a
small state file beside the database (`<db>.backup.json`).

    python -m logicad.pipelines.registry.backup restore --db ~/mlflow.db --to s3://B/mlflow-backup
    python -m logicad.pipelines.registry.backup loop --db ~/mlflow.db --to s3://B/mlflow-backup
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import signal
import sqlite3
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from ..storage import S3Settings, StorageError, parse_s3_uri, s3_errors

OBJECT = "mlflow.db"
DEFAULT_INTERVAL_S = 300
log = logging.getLogger("logicad.mlflow_backup")


class BackupError(RuntimeError):
    """A backup or restore that must not go ahead; the message says why and what to do."""


@dataclass(frozen=True)
class Target:
    """Where the copy lives: `s3://bucket/prefix` -> bucket and the object key of the db."""

    bucket: str
    key: str

    @classmethod
    def parse(cls, uri: str) -> "Target":
        location = parse_s3_uri(uri.rstrip("/"))
        return cls(location.bucket, location.key(OBJECT))

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


# --- local sqlite ----------------------------------------------------------------------------
def snapshot(db: Path, dest: Path) -> None:
    """Copy `db` into `dest` with sqlite's online backup API: a consistent copy even while
    the MLflow server writes (plain file copies can catch a half-written page)."""
    source = sqlite3.connect(db, timeout=30)  # read-write: it may have to roll back a crash's journal
    target = sqlite3.connect(dest)
    try:
        source.backup(target)
    finally:
        target.close()
        source.close()


def check_integrity(db: Path) -> None:
    """Raise BackupError unless sqlite calls the file sound and it holds MLflow's tables."""
    try:
        connection = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        try:
            result = connection.execute("PRAGMA integrity_check").fetchone()[0]
            tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        finally:
            connection.close()
    except sqlite3.DatabaseError as exc:
        raise BackupError(f"{db}: not a readable sqlite database ({exc})") from None
    if result != "ok":
        raise BackupError(f"{db}: sqlite integrity check failed ({result})")
    if not {"experiments", "runs", "registered_models"} <= tables:
        raise BackupError(f"{db}: no MLflow tables (experiments, runs, registered_models)")


def digest(path: Path) -> str:
    """sha256 of a file, to skip uploading a snapshot identical to the last one."""
    sha = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()


# --- state beside the db: where it came from, what was uploaded last ----------------------------
def state_path(db: Path) -> Path:
    return db.with_name(db.name + ".backup.json")


def read_state(db: Path) -> dict[str, Any] | None:
    try:
        return json.loads(state_path(db).read_text())
    except (OSError, ValueError):
        return None


def write_state(db: Path, **fields: Any) -> None:
    """Write the state file atomically (rename), merged with what it held."""
    state = {**(read_state(db) or {}), **fields}
    tmp = state_path(db).with_suffix(".tmp")
    tmp.write_text(json.dumps(state, sort_keys=True))
    os.replace(tmp, state_path(db))


# --- S3 ---------------------------------------------------------------------------------------
def _exists(client: Any, target: Target, settings: S3Settings) -> bool:
    """True when the backup object exists; a 404 means absent, any other failure is a StorageError."""
    import botocore.exceptions as boto_errors

    try:
        client.head_object(Bucket=target.bucket, Key=target.key)
        return True
    except boto_errors.ClientError as err:
        if err.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return False
        with s3_errors(target.uri, settings, "looking for the tracking backup"):
            raise


# --- backup and restore ---------------------------------------------------------------------------
def backup(db: Path, uri: str, settings: S3Settings | None = None) -> bool:
    """Upload a consistent snapshot of `db` to `<uri>/mlflow.db`; False when unchanged since
    the last upload. Refuses (BackupError) to overwrite a backup with a store that was not
    restored from it: that store would be a fresh, empty one after a failed restore."""
    db, settings = Path(db).expanduser(), settings or S3Settings.from_env()
    target, client = Target.parse(uri), settings.client()
    if not db.is_file():
        raise BackupError(f"{db}: no MLflow store to back up (the server creates it at its first start)")
    state = read_state(db)
    if state is None and _exists(client, target, settings):
        raise BackupError(f"{db} was not restored from {target.uri}, which exists; refusing to overwrite it. "
                          f"Run `restore` (after moving {db} away), or delete the object to start over")
    with tempfile.TemporaryDirectory(dir=db.parent, prefix=".mlflow-backup-") as tmp:
        copy = Path(tmp, OBJECT)
        snapshot(db, copy)
        check_integrity(copy)
        sha = digest(copy)
        if state and state.get("uploaded_sha256") == sha:
            return False
        with s3_errors(target.uri, settings, "uploading the tracking backup"):
            client.upload_file(str(copy), target.bucket, target.key)
    write_state(db, source=target.uri, uploaded_sha256=sha, uploaded_at=time.time())
    return True


def restore(db: Path, uri: str, settings: S3Settings | None = None) -> str:
    """Bring back `db` from `<uri>/mlflow.db` when the local file is missing. Returns what
    happened: 'kept' (a local store exists; it is never replaced), 'restored', or 'none' (no
    backup yet: a new cluster; the server will create an empty store)."""
    db, settings = Path(db).expanduser(), settings or S3Settings.from_env()
    target, client = Target.parse(uri), settings.client()
    if db.exists():
        if read_state(db) is None and not _exists(client, target, settings):
            write_state(db, source=target.uri)  # a store of its own, and nothing to clobber
        return "kept"
    db.parent.mkdir(parents=True, exist_ok=True)
    if not _exists(client, target, settings):
        state_path(db).unlink(missing_ok=True)
        write_state(db, source=target.uri)
        return "none"
    with tempfile.TemporaryDirectory(dir=db.parent, prefix=".mlflow-restore-") as tmp:
        copy = Path(tmp, OBJECT)
        with s3_errors(target.uri, settings, "downloading the tracking backup"):
            client.download_file(target.bucket, target.key, str(copy))
        check_integrity(copy)
        sha = digest(copy)
        state_path(db).unlink(missing_ok=True)  # the state first: a store that appears has its origin
        write_state(db, source=target.uri, uploaded_sha256=sha, restored_at=time.time())
        os.replace(copy, db)
    return "restored"


# --- the loop the head runs ------------------------------------------------------------------------
def _backup_logged(db: Path, uri: str, settings: S3Settings) -> None:
    """One scheduled backup; errors are logged, not raised, so the loop keeps its schedule."""
    try:
        if backup(db, uri, settings):
            log.info("backed up %s to %s", db, Target.parse(uri).uri)
    except (BackupError, StorageError, OSError, sqlite3.Error) as exc:
        log.error("backup failed: %s", exc)


def loop(db: Path, uri: str, interval: float = DEFAULT_INTERVAL_S, settings: S3Settings | None = None,
         stop: threading.Event | None = None) -> None:
    """Back up now and every `interval` seconds until SIGTERM/SIGINT (or `stop`), then once more."""
    settings, stop = settings or S3Settings.from_env(), stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stop.set())
    log.info("backing up %s to %s every %g s and at shutdown", db, Target.parse(uri).uri, interval)
    while True:
        if Path(db).expanduser().is_file():
            _backup_logged(Path(db).expanduser(), uri, settings)
        if stop.wait(interval):
            break
    if Path(db).expanduser().is_file():
        _backup_logged(Path(db).expanduser(), uri, settings)
    log.info("stopped after a final backup")


# --- command line ------------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m logicad.pipelines.registry.backup",
                                     description="Back up / restore the MLflow sqlite store to / from S3.")
    parser.add_argument("action", choices=["backup", "restore", "loop"])
    parser.add_argument("--db", type=Path, required=True, help="the MLflow sqlite file (e.g. ~/mlflow.db)")
    parser.add_argument("--to", dest="uri", required=True, help="s3://bucket/prefix that holds mlflow.db")
    parser.add_argument("--interval", type=float, default=DEFAULT_INTERVAL_S, help="seconds between backups (loop)")
    parser.add_argument("--s3-endpoint-url", default=None, help="S3-compatible endpoint (default: AWS)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    settings = S3Settings.from_env(endpoint_url=args.s3_endpoint_url)
    try:
        if args.action == "loop":
            loop(args.db, args.uri, args.interval, settings)
        elif args.action == "backup":
            print("uploaded" if backup(args.db, args.uri, settings) else "unchanged")
        else:
            print(restore(args.db, args.uri, settings))
    except (BackupError, StorageError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
