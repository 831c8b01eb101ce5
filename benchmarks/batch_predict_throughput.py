"""Ray Data batch scoring throughput (`logicad predict --workers N`) at 1 and 2 workers.

Generates a folder of small images and a small statistics-only model (global Gaussian on a
random-init backbone: its weights do not change the cost of scoring), then scores the folder
with `run_batch_predict` once per worker count into a fresh output folder, without overlays.
Two rates per count:
- `images_per_s`: all images over the whole run's wall time (listing, plan, actor start-up and
  model loading included: what a user waits for);
- `steady_images_per_s`: images of the shards written after the first `workers` shards, over the
  time between that shard and the last (start-up excluded).

    python benchmarks/batch_predict_throughput.py [--images 300] [--size 96] [--image-size 64]

Writes `benchmarks/results/batch_predict.json`. Measured on a local Ray runtime with as many
CPUs as the machine has (`--cpus`); on a shared 2-core machine the figures are rough.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

sys.path.insert(0, str(Path(__file__).resolve().parent))
from speed_runner import write_json  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "batch_predict.json"


def make_images(root: Path, count: int, size: int) -> Path:
    """`count` PNGs of `size` px (noise with a bright square), in 4 subfolders."""
    import cv2
    import numpy as np

    rng = np.random.default_rng(0)
    for i in range(count):
        image = rng.integers(0, 200, (size, size, 3), dtype=np.uint8)
        row, col = rng.integers(0, size // 2, 2)
        image[row:row + size // 4, col:col + size // 4] = 255
        target = root / f"part{i % 4}" / f"img{i:05d}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(target), image)
    return root


def make_payload(image_size: int) -> dict[str, Any]:
    """A fitted global Gaussian's model-file payload (fitted on 8 generated images)."""
    import torch

    from logicad.models.base import build_method
    from logicad.pipelines.train.checkpoints import read_model_file, save_model

    torch.manual_seed(0)
    method = build_method("global_gaussian", image_size=image_size, backbone_weights="random")
    images = torch.rand(8, 3, image_size, image_size)
    method.prepare([{"image": images, "index": torch.arange(8), "label": torch.zeros(8)}])
    with tempfile.TemporaryDirectory() as tmp:
        return read_model_file(save_model(Path(tmp) / "model.pt", method.eval(), {"threshold": 0.0}))


def measure(payload: dict[str, Any], folder: Path, out: Path, workers: int, shard_size: int) -> dict[str, Any]:
    """One run into a fresh folder; both rates (see the module docstring)."""
    from logicad.pipelines.registry.batch_predict import run_batch_predict

    start = time.perf_counter()
    result = run_batch_predict(payload, "benchmark", str(folder), out, workers=workers, shard_size=shard_size,
                               overlays=False)
    wall = time.perf_counter() - start
    times = result.shard_seconds
    steady_images = (result.images - shard_size * workers) if len(times) > workers else 0
    steady_time = times[-1] - times[workers - 1] if len(times) > workers else 0.0
    return {"workers": workers, "images": result.images, "shards": len(times), "wall_s": round(wall, 2),
            "images_per_s": round(result.images / wall, 2),
            "steady_images_per_s": round(steady_images / steady_time, 2) if steady_time > 0 else None,
            "first_shard_s": round(times[0], 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--size", type=int, default=96, help="generated image side (px)")
    parser.add_argument("--image-size", type=int, default=64, help="the model's input size (px)")
    parser.add_argument("--shard-size", type=int, default=20)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--cpus", type=int, default=os.cpu_count())
    args = parser.parse_args()

    import ray

    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            folder = make_images(Path(tmp) / "images", args.images, args.size)
            payload = make_payload(args.image_size)
            runs = [measure(payload, folder, Path(tmp) / f"out-{n}", n, args.shard_size) for n in args.workers]
    finally:
        ray.shutdown()
    record = {"benchmark": "batch_predict_throughput", "method": "global_gaussian (random-init backbone)",
              "image_size": args.image_size, "generated_px": args.size, "shard_size": args.shard_size,
              "cpus": args.cpus, "machine": platform.processor() or platform.machine(),
              "load_average_1m": round(os.getloadavg()[0], 1), "runs": runs}
    write_json(RESULTS, record)
    print(f"{'workers':>7} {'images':>6} {'wall s':>7} {'images/s':>9} {'steady images/s':>16}")
    for run in runs:
        print(f"{run['workers']:>7} {run['images']:>6} {run['wall_s']:>7} {run['images_per_s']:>9} "
              f"{run['steady_images_per_s']!s:>16}")
    print(f"written to {RESULTS}")


if __name__ == "__main__":
    main()
