"""`logicad distill-teacher`: distil a PDN-S teacher for DFSC from a timm backbone on any image folder."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

# torch and the data modules are imported where used: building the CLI parser must stay light


def image_folder_dataset(root: Path, image_size: int, max_images: int):
    """Every image below `root` (recursively, sorted), at most `max_images`, decoded once."""
    from logicad.data import AnomalyDataset, Sample
    from logicad.data.layouts import images_below
    from logicad.data.transforms import train_transform

    paths = images_below(root)[:max_images]
    return AnomalyDataset([Sample(p, 0, "good", "good") for p in paths], image_size, train_transform(augment=True))


def _synthetic_root() -> Path:
    """The synthetic default dataset's root (generated on first use)."""
    from ..data_source import synthetic_default

    return synthetic_default()[0]


def cmd_distill_teacher(args: argparse.Namespace) -> int:
    import torch
    from torch.utils.data import DataLoader

    from logicad.models.distill import distill_teacher, save_teacher

    from .progress import Progress, format_seconds

    root = Path(args.images) if args.images else _synthetic_root()
    dataset = image_folder_dataset(root, 2 * args.image_size, args.max_images)
    loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=True, drop_last=len(dataset) > args.batch_size)
    device = torch.device("cuda" if torch.cuda.is_available() and not args.cpu else "cpu")
    print(f"distilling a PDN-S teacher from {args.backbone} on {len(dataset)} images of {root} "
          f"for {args.steps} steps on {device}; first the target's channel mean/std over up to 100 batches",
          flush=True)
    start = time.perf_counter()
    every = args.log_every or max(args.steps // 20, 1)
    progress: list[Progress] = []  # started at the first step: the feature statistics pass is not a step

    def on_step(step: int, loss: float) -> None:
        if not progress:
            progress.append(Progress("distill-teacher", args.steps, start=step - 1))
        progress[0].update(step, {"loss": loss}, every)

    teacher, history = distill_teacher(loader, args.backbone, args.backbone_weights, args.steps, args.image_size,
                                       device=device, on_step=on_step)
    path = save_teacher(args.out, teacher, {"images": str(root)})
    print(f"teacher written to {path} (final loss {history[-1]:.4f}, "
          f"{format_seconds(time.perf_counter() - start)}); use it with --set teacher_weights={path}")
    return 0


def add_distill_teacher(sub) -> None:
    p = sub.add_parser("distill-teacher", help="distil a PDN-S teacher for DFSC from a timm backbone")
    p.add_argument("--images", default=None, help="folder of images, searched recursively (default: synthetic)")
    p.add_argument("--backbone", default="wide_resnet101_2", help="any timm model with features_only")
    p.add_argument("--backbone-weights", default=None, help="a shipped source (imagenet-lite0), a local weight file, or 'hub' (default: random init)")
    p.add_argument("--steps", type=int, default=60000, help="distillation steps (EfficientAD: 60000)")
    p.add_argument("--image-size", type=int, default=256,
                   help="the PDN's input size (the backbone sees twice this, as in EfficientAD)")
    p.add_argument("--batch-size", type=int, default=8, help="images per step")
    p.add_argument("--max-images", type=int, default=20000, help="use at most this many images of --images")
    p.add_argument("--out", "--output", dest="out", default="teacher.pth", help="the teacher file written")
    p.add_argument("--log-every", type=int, default=0,
                   help="print step, loss and ETA every N steps (default: 20 lines per run)")
    p.add_argument("--cpu", action="store_true", help="distil on the CPU even where a GPU is available")
    p.set_defaults(func=cmd_distill_teacher)
