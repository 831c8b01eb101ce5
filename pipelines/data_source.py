"""Where a command's data comes from: --data (a folder or an s3:// root, synced once into the
node's cache) or, without it, the embedded synthetic dataset (generated once); and the flags
verbs share (--data/--dataset/--category, --model's help, positive integers). Shared by the
verbs below the command line, which therefore never import it."""

from __future__ import annotations

import argparse
import os
from pathlib import Path


#: help of a verb's --model flag (evaluate, export, threshold)
MODEL_HELP = "models:/NAME/VERSION, models:/NAME@ALIAS, runs:/ID/model, or a model.pt file or its folder"


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (e.g. --workers 0 is refused before anything starts)."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


def add_data_args(p: argparse.ArgumentParser, category_help: str | None = None) -> None:
    """--data, --dataset and --category, as `resolve_data` reads them."""
    p.add_argument("--data", default=None, help="dataset root (default: the synthetic dataset, generated once)")
    p.add_argument("--dataset", default="mvtec_loco", choices=["mvtec_loco", "mvtec_ad", "folder"],
                   help="layout of --data (default mvtec_loco; folder: a plain folder of normal images)")
    default_help = "category folder under --data (e.g. pushpins); default with the synthetic data: its first"
    p.add_argument("--category", default=None, help=category_help or default_help)


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
