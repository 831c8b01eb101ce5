"""Where a command's data comes from: --data (a folder or an s3:// root, synced once into the
node's cache) or, without it, the embedded synthetic dataset (generated once). Shared by the
verbs below the command line, which therefore never import it."""

from __future__ import annotations

import argparse
import os
from pathlib import Path


def cache_dir() -> Path:
    """Where the synthetic default dataset is generated (`LOGICAD_CACHE`, else ~/.cache/logicad)."""
    return Path(os.environ.get("LOGICAD_CACHE", Path.home() / ".cache" / "logicad"))


def synthetic_default(seed: int = 0) -> tuple[Path, str]:
    """The embedded default dataset (generated once) and its first category."""
    from logicad.data.synthetic import CATEGORIES, SyntheticSpec, make_synthetic

    root = cache_dir() / f"synthetic-seed{seed}"
    marker = root / ".complete"
    if not marker.exists():
        print(f"generating the synthetic MVTec LOCO-format dataset into {root}", flush=True)
        make_synthetic(root, SyntheticSpec(seed=seed))
        marker.write_text("ok\n")
    return root, CATEGORIES[0]


def resolve_data(args: argparse.Namespace) -> tuple[str, str | None, bool]:
    """(local dataset root, category, is the synthetic default); s3:// roots are synced once
    into the local cache, no --data generates the synthetic dataset."""
    if args.data is None:
        data, default_category = synthetic_default()
        return str(data), args.category or default_category, True
    if args.data.startswith("s3://"):
        from .storage import S3Settings, sync_dataset

        settings = S3Settings.from_env(getattr(args, "s3_endpoint_url", None))
        return str(sync_dataset(args.data, cache_dir() / "s3", settings)), args.category, False
    return args.data, args.category, False


def remote_data(args: argparse.Namespace) -> dict[str, str | None]:
    """TrainJob fields that make every worker sync an s3:// --data into its own node cache."""
    if not (args.data or "").startswith("s3://"):
        return {}
    return {"data_uri": args.data, "s3_endpoint_url": args.s3_endpoint_url}
