"""Bookkeeping of a batch scoring run: the input list, its shards, the plan and the merge.

A run's output folder holds `plan.json` (written first: model, inputs, shard size, the input
list's fingerprint), `shards/part-NNNNN.csv` (one per finished shard of K images, written
atomically: its presence means the shard is done), optional `shards/part-NNNNN.skipped.csv`
(unreadable images of that shard, written before the part file) and, at the end, `scores.csv`
and `skipped.csv` merged in input order. `--resume` checks the plan and scores only the shards
whose part file is missing, so nothing finished is scored twice.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import uuid
from dataclasses import asdict, dataclass
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from logicad.data.errors import DatasetError
from logicad.data.images import IMAGE_SUFFIXES
from logicad.data.layouts import images_below

PLAN_FILE = "plan.json"
SHARDS_DIR = "shards"
PLAN_FORMAT = "logicad-batch-plan-v1"
HEADER = ("path", "score", "verdict")


class BatchPlanError(DatasetError):
    """An output folder that cannot take this run (not empty, or a plan that differs); one line."""


# --- the input list ---------------------------------------------------------------------------
def list_inputs(images: str, settings: Any = None) -> list[str]:
    """The sorted image list: local paths below a folder (recursive), or `s3://bucket/key` URIs of
    the image objects under a prefix, listed through the S3 API (nothing is downloaded here)."""
    if not images.startswith("s3://"):
        return [str(path) for path in images_below(Path(images))]
    from ..storage import S3Settings, parse_s3_uri, s3_errors

    settings = settings or S3Settings.from_env()
    location, client = parse_s3_uri(images), settings.client()
    keys: list[str] = []
    with s3_errors(images, settings, "listing the images under the prefix"):
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=location.bucket,
                                                                     Prefix=location.list_prefix()):
            keys += [obj["Key"] for obj in page.get("Contents", []) if _is_image_key(obj["Key"])]
    if not keys:
        raise DatasetError(f"{images}: no images found (.png/.jpg/.bmp/.tif) under the prefix at endpoint "
                           f"{settings.endpoint}; expected image objects below it")
    return sorted(f"s3://{location.bucket}/{key}" for key in keys)


def _is_image_key(key: str) -> bool:
    """Same rule as a local folder: an image suffix, no hidden file, no folder placeholder."""
    name = key.rsplit("/", 1)[-1]
    return bool(name) and not name.startswith(".") and Path(name).suffix.lower() in IMAGE_SUFFIXES


def relative_name(item: str, images: str) -> str:
    """An input's path relative to the folder or prefix it was listed under (POSIX)."""
    if images.startswith("s3://"):
        return item[len(images.rstrip("/")) + 1:]
    return Path(item).relative_to(Path(images)).as_posix()


def fingerprint(items: Sequence[str]) -> str:
    """A short digest of the sorted input list: a resumed run must score the same images."""
    return hashlib.sha256("\n".join(items).encode()).hexdigest()[:16]


def shards_of(count: int, size: int) -> list[range]:
    """Index ranges of consecutive shards of `size` images (the last may be shorter)."""
    return [range(start, min(start + size, count)) for start in range(0, count, size)]


# --- the plan ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Plan:
    """What a run scores and with what: a resumed run must match it field for field."""

    model: str
    model_digest: str
    images: str
    count: int
    fingerprint: str
    shard_size: int
    threshold: float | None
    overlays: bool
    format: str = PLAN_FORMAT

    @property
    def shard_count(self) -> int:
        return len(shards_of(self.count, self.shard_size))

    def differences(self, other: Plan) -> list[str]:
        """`field: was X, now Y` for every field that differs (the model's URI itself may change,
        e.g. an alias that still names the same weights: its digest decides)."""
        mine, theirs = asdict(self), asdict(other)
        return [f"{key}: was {mine[key]!r}, now {theirs[key]!r}" for key in mine
                if key != "model" and mine[key] != theirs[key]]


def model_digest(payload: dict[str, Any]) -> str:
    """A digest of what scores: method, config and every tensor of the state dict (so a moved
    alias that names other weights is caught, and one that names the same weights is not)."""
    import torch

    digest = hashlib.sha256()
    digest.update(json.dumps([payload.get("method"), payload.get("config")], sort_keys=True, default=str).encode())
    for key in sorted(payload.get("state_dict", {})):
        tensor = payload["state_dict"][key]
        digest.update(key.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def shard_path(out: Path, index: int) -> Path:
    return out / SHARDS_DIR / f"part-{index:05d}.csv"


def skipped_path(out: Path, index: int) -> Path:
    return out / SHARDS_DIR / f"part-{index:05d}.skipped.csv"


def open_output(out: Path, plan: Plan, resume: bool) -> list[int]:
    """Make `out` ready for `plan` and return the indices of shards still to score. A new run
    needs an empty or new folder (nothing is overwritten); `resume` needs the same plan there."""
    plan_file = out / PLAN_FILE
    if not resume:
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise BatchPlanError(f"{out}: output folder is not empty; expected a new or empty folder "
                                 "(or --resume to continue the run written there)")
        (out / SHARDS_DIR).mkdir(parents=True, exist_ok=True)
        write_atomic(plan_file, json.dumps(asdict(plan), indent=1) + "\n")
        return list(range(plan.shard_count))
    if not plan_file.is_file():
        raise BatchPlanError(f"{out}: nothing to resume ({PLAN_FILE} not found); expected the output folder "
                             "of an earlier batch run (drop --resume to start a new run in an empty folder)")
    previous = read_plan(plan_file)
    changed = previous.differences(plan)
    if changed:
        raise BatchPlanError(f"{out}: cannot resume, the run there had another plan ({'; '.join(changed)}); "
                             "expected the same model, images, shard size, threshold and overlay setting")
    (out / SHARDS_DIR).mkdir(parents=True, exist_ok=True)
    return [i for i in range(plan.shard_count) if not shard_path(out, i).is_file()]


def read_plan(path: Path) -> Plan:
    try:
        fields = json.loads(path.read_text())
        if fields.get("format") != PLAN_FORMAT:
            raise ValueError(f"format {fields.get('format')!r}")
        return Plan(**fields)
    except (OSError, ValueError, TypeError) as exc:
        raise BatchPlanError(f"{path}: not a batch plan ({exc}); expected the {PLAN_FILE} a batch run writes") \
            from None


# --- writing --------------------------------------------------------------------------------
def write_atomic(path: Path, data: str | bytes) -> None:
    """Write to a temporary name beside `path`, then rename: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        tmp.write_bytes(data if isinstance(data, bytes) else data.encode())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def csv_text(rows: Iterable[Sequence[Any]]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer).writerows(rows)
    return buffer.getvalue()


def write_shard(out: Path, index: int, rows: list[tuple[str, str, str]], skipped: list[tuple[str, str]]) -> None:
    """A finished shard: its skipped list (if any) first, then the part file that marks it done."""
    if skipped:
        write_atomic(skipped_path(out, index), csv_text([("path", "reason"), *skipped]))
    write_atomic(shard_path(out, index), csv_text([HEADER, *rows]))


def merge(out: Path, shard_count: int) -> tuple[list[str], int]:
    """Write `scores.csv` (and `skipped.csv` when some image was skipped) from the part files in
    input order; returns (verdicts, number skipped) for the summary line."""
    rows: list[list[str]] = []
    skipped: list[list[str]] = []
    for index in range(shard_count):
        rows += _rows(shard_path(out, index))
        if skipped_path(out, index).is_file():
            skipped += _rows(skipped_path(out, index))
    write_atomic(out / "scores.csv", csv_text([HEADER, *rows]))
    if skipped:
        write_atomic(out / "skipped.csv", csv_text([("path", "reason"), *skipped]))
    return [row[2] for row in rows], len(skipped)


def _rows(path: Path) -> list[list[str]]:
    with open(path, newline="") as handle:
        return list(csv.reader(handle))[1:]
