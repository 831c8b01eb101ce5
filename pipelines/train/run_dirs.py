"""Every run (and every sweep) writes into its own directory; nothing is overwritten.

    <output>/<method>/<category>/<run>/     metrics.json, model/ (model.pt, plots), ...
    <output>/latest -> <method>/<category>/<run>     (a symlink where the file system allows)
    <output>/latest.txt                              (the same relative path, always written)

A name already used (a run directory or the Ray storage of that name) is refused unless
the run resumes; default names carry a timestamp, with a suffix if two runs share a second.
"""

from __future__ import annotations

import filecmp
import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from logicad.models.base import ConfigError

LATEST = "latest"
LATEST_FILE = "latest.txt"


class RunExistsError(ConfigError):
    """A run or sweep name that is taken; the message says how to continue it or pick another."""


def timestamped(prefix: str, taken: set[str], utc: bool = False) -> str:
    """`<prefix>-YYYYmmdd-HHMMSS` (local time, or UTC), with `-2`, `-3`, ... if that name is taken."""
    name = f"{prefix}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime() if utc else time.localtime())}"
    candidate, n = name, 1
    while candidate in taken:
        n += 1
        candidate = f"{name}-{n}"
    return candidate


def latest_with_prefix(prefix: str, names: set[str]) -> str | None:
    found = sorted(name for name in names if name.startswith(prefix + "-"))
    return found[-1] if found else None


def refuse_reuse(name: str, taken: set[str], resume: bool, what: str, flag: str, where: str) -> None:
    """RunExistsError when `name` is taken and this is not a resume."""
    if name in taken and not resume:
        raise RunExistsError(f"{what} {name!r} already exists ({where}); pass --resume to continue it or choose "
                             f"another {flag}")


def new_timestamped_folder(parent: Path, prefix: str, utc: bool = False) -> Path:
    """`<parent>/<prefix>-<time>`, a name nothing in `parent` has yet (the folder is not made)."""
    parent = Path(parent)
    taken = {p.name for p in parent.iterdir()} if parent.is_dir() else set()
    return parent / timestamped(prefix, taken, utc)


def existing_names(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir() if p.is_dir()} if folder.is_dir() else set()


def point_latest(root: Path, target: Path) -> None:
    """Make `<root>/latest` (symlink) and `<root>/latest.txt` name `target` (atomically replaced)."""
    relative = os.path.relpath(target, root)
    tmp = root / f".{LATEST_FILE}.{os.getpid()}"
    tmp.write_text(relative + "\n")
    tmp.replace(root / LATEST_FILE)
    link = root / f".{LATEST}.{os.getpid()}"
    try:
        if link.is_symlink():
            link.unlink()
        link.symlink_to(relative, target_is_directory=True)
        link.replace(root / LATEST)
    except OSError:  # no symlinks here (some Windows or network file systems): latest.txt says it
        if link.is_symlink():
            link.unlink()


def files_below(path: Path) -> list[Path]:
    """The regular files at or below `path` (symlinks not followed)."""
    if path.is_file() and not path.is_symlink():
        return [path]
    return sorted(p for p in path.rglob("*") if p.is_file() and not p.is_symlink()) if path.is_dir() else []


def link_identical(source: Path, copies: Iterable[Path]) -> list[Path]:
    """Replace each file in `copies` that is byte-identical to `source` and on the same file
    system by a hard link to it, so the bytes are on disk once; the copies now linked.

    A hard link, not a symlink: whichever tool later deletes one name (Ray pruning checkpoints,
    `mlflow gc`, a user removing outputs/) leaves the others whole. The linked file is made
    read-only, so an in-place write to one name cannot silently change the others (logicad
    itself rewrites model files through a new name). A copy that differs, lives on another
    file system or cannot be linked stays as it is."""
    linked = []
    for copy in copies:
        tmp = copy.with_name(f".{copy.name}.link-{os.getpid()}")
        try:
            if not copy.samefile(source):
                if copy.stat().st_dev != source.stat().st_dev or not filecmp.cmp(source, copy, shallow=False):
                    continue
                os.link(source, tmp)
                tmp.replace(copy)
            linked.append(copy)
        except OSError:  # no hard links on this file system, or the file went away
            tmp.unlink(missing_ok=True)
    if linked:
        source.chmod(source.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    return linked


@dataclass
class Place:
    """One place a run wrote to: its own bytes (None: not measurable from here) and the bytes of
    hard links to files already counted at an earlier place."""

    what: str
    where: str
    own: int | None
    linked: int = 0

    def text(self) -> str:
        size = "size unknown" if self.own is None else human_bytes(self.own)
        return f"{self.what} {self.where} ({size}" + (f" + {human_bytes(self.linked)} linked" if self.linked else
                                                      "") + ")"


def _local_bytes(path: Path, seen: set[tuple[int, int]]) -> tuple[int, int]:
    """(bytes of files not in `seen`, bytes of those already seen); adds to `seen`."""
    own = linked = 0
    for file in files_below(path):
        info = file.stat()
        key = (info.st_dev, info.st_ino)
        if key in seen:
            linked += info.st_size
        else:
            seen.add(key)
            own += info.st_size
    return own, linked


def _filesystem_bytes(filesystem, path: str) -> int:
    from pyarrow import fs

    infos = filesystem.get_file_info(fs.FileSelector(path, recursive=True, allow_not_found=True))
    return sum(info.size or 0 for info in infos if info.type == fs.FileType.File)


def measure_places(paths: dict[str, str | None], filesystem=None, tracking_uri: str | None = None) -> list[Place]:
    """Size every place: a local path on disk (a hard-linked file counts once, at the first place
    that holds it), an MLflow artifact URI through MLflow, any other path on `filesystem` (the
    Ray storage's S3 bucket). Places given as None are left out."""
    seen: set[tuple[int, int]] = set()
    places = []
    for what, where in paths.items():
        if not where:
            continue
        own: int | None
        linked = 0
        try:
            if Path(where).exists():
                own, linked = _local_bytes(Path(where), seen)
            elif ":/" in where:
                from ..registry import tracking

                own = tracking.artifact_bytes(tracking_uri or tracking.default_tracking_uri(), where)
            else:
                own = _filesystem_bytes(filesystem, where) if filesystem is not None else None
        except Exception:  # a store that cannot be listed from here: named without a size
            own = None
        places.append(Place(what, where, own, linked))
    return places


def human_bytes(size: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TB"
