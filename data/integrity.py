"""Every image and mask of a dataset decoded once, in parallel, before training starts.

A corrupt file then fails in one line naming it, instead of deep inside a Ray worker.
The result is remembered as a marker file keyed by the dataset's fingerprint (relative
paths, sizes and modification times), so a second run on unchanged data does not pay again.
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

from .errors import DatasetError
from .images import read_image_rgb, read_mask
from .layouts import Sample


def files_of(samples: Sequence[Sample]) -> list[tuple[Path, str]]:
    """(path, "image" | "mask") of every file the samples read."""
    files = [(s.path, "image") for s in samples]
    files += [(m, "mask") for s in samples for m in s.mask_paths]
    return files


def fingerprint(files: Sequence[tuple[Path, str]], root: Path) -> str:
    digest = hashlib.sha1()
    for path, _ in sorted(files):
        stat = path.stat()
        digest.update(f"{os.path.relpath(path, root)}:{stat.st_size}:{stat.st_mtime_ns};".encode())
    return digest.hexdigest()[:20]


def _decode(item: tuple[Path, str]) -> None:
    path, kind = item
    try:
        (read_image_rgb if kind == "image" else read_mask)(path)
    except DatasetError as exc:
        expected = "a complete RGB or grayscale image" if kind == "image" else "a complete single-channel mask"
        raise DatasetError(f"{exc}; expected {expected} (every file is decoded before training)") from None


def verify_decodable(samples: Sequence[Sample], root: Path, marker_dir: Path | None, threads: int = 8) -> int:
    """Decode every image and mask of `samples` (DatasetError naming the first bad file); the
    number of files decoded, 0 when a marker says this exact data was verified before."""
    files = files_of(samples)
    marker = marker_dir / f"{fingerprint(files, root)}.ok" if marker_dir else None
    if marker is not None and marker.is_file():
        return 0
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        for _ in pool.map(_decode, files):
            pass
    if marker is not None:
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(f"{len(files)} files decoded under {root}\n")
    return len(files)
