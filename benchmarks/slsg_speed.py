"""SLSG speed: inference ms/image at batch 1, images/s (and ms/image) at batch 16, training
steps/s of each stage (GPT-Net at gpt_batch_size, SegNet at batch 4 + 4), and anomaly
simulation images/s on one CPU core; on the CPU (and on CUDA when present).

    python benchmarks/slsg_speed.py --out benchmarks/results/slsg_speed.json [--image-size 256] [--threads 2]

Paper anchor (GTX 1080 Ti, 256 px): 54.2 ms/image at batch 1, 18.5 ms/image at batch 16.
Timings on a shared machine move with the load: the file records a matrix-multiply
calibration (GFLOP/s at the same thread count) and the load average before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import torch  # noqa: E402

import logicad.models  # noqa: E402,F401  (torchvision op schemas before timm)
from logicad.models.base import build_method  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from speed_runner import calibrate, timed  # noqa: E402

ANCHOR = {"infer_ms_per_image_batch1": 54.2, "infer_ms_per_image_batch16": 18.5,
          "what": "SLSG paper, GTX 1080 Ti, 256 px"}


def inference(method, size: int, device: torch.device, repeats: int) -> dict:
    out = {}
    for batch in (1, 16):
        images = torch.randn(batch, 3, size, size, device=device)
        seconds = timed(lambda: method.image_score(method.anomaly_map(images)).cpu(), repeats, device=device)
        out[f"batch{batch}_ms_per_image"] = 1000 * seconds / batch
        out[f"batch{batch}_images_per_s"] = batch / seconds
    return out


def training(method, size: int, device: torch.device, repeats: int) -> dict:
    c = method.config
    stages = {s.name: s for s in method.stages()}
    out = {}
    for name in ("gpt", "seg"):
        stage = stages[name]
        n = stage.batch_size or c.batch_size
        batch = {"image": torch.randn(n, 3, size, size, device=device),
                 "simulated": torch.randn(n, 3, size, size, device=device),
                 "simulated_mask": (torch.rand(n, size, size, device=device) > 0.9).float()}
        method.start_stage(name)
        method.train()

        def step():
            losses = method(batch, stage=name)
            for opt in stage.optimizers:
                opt.zero_grad(set_to_none=True)
            losses["loss"].backward()
            for opt in stage.optimizers:
                opt.step()

        seconds = timed(step, repeats, device=device)
        out[f"{name}_steps_per_s"] = 1 / seconds
        out[f"{name}_batch"] = n if name == "gpt" else f"{n} + {n}"
    return out


def simulation(size: int, seconds: float = 10.0) -> dict:
    """Simulated images/s on one core over the synthetic default's training images."""
    import cv2

    from logicad.data import load_split
    from logicad.data.transforms import train_transform
    from logicad.data.views import training_view
    from logicad.pipelines.data_source import synthetic_default

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    try:
        root, category = synthetic_default()
        view = training_view(load_split("mvtec_loco", root, category, "train", size, train_transform()),
                             {"view": "anomaly_simulation"}, 0)
        view[0]
        count, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            view[(count * 7919) % len(view)]
            count += 1
        return {"simulated_pairs_per_s_1_core": count / (time.perf_counter() - start), "image_size": size}
    finally:
        torch.set_num_threads(threads)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/slsg_speed.json")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-simulation", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    record = {"anchor": ANCHOR, "image_size": args.image_size, "threads": args.threads,
              "machine": platform.processor() or platform.machine(), "load_before": os.getloadavg(),
              "matmul_gflops": calibrate(args.threads), "devices": {}}
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    for device in devices:
        torch.manual_seed(0)
        method = build_method("slsg", image_size=args.image_size, precision="32").to(device)
        result = {"inference": inference(method, args.image_size, device, args.repeats),
                  "training": training(method, args.image_size, device, args.repeats)}
        if device.type == "cuda":
            result["name"] = torch.cuda.get_device_name()
        record["devices"][device.type] = result
        print(device, json.dumps(result), flush=True)
    if not args.no_simulation:
        record["simulation"] = simulation(args.image_size)
        print("simulation", json.dumps(record["simulation"]), flush=True)
    record["load_after"] = os.getloadavg()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
