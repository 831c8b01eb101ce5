"""GLCF speed on the CPU: training steps/s, scoring ms/image at batch 1 and images/s at
batch 16, at the cpu-synthetic preset and at the paper's setting (Swin-T, 224 px, batch 8).

    python benchmarks/glcf_speed.py [--out benchmarks/results/glcf_speed.json] [--threads 2]
                                    [--steps 5] [--paper-steps 2] [--settings preset,paper]

Random-init weights and random images (speed does not depend on them). The first step and
the first scoring call are warm-ups and not timed. On a shared machine the timings move
with the load: the file records the load average before and after each setting.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

sys.path.insert(0, str(Path(__file__).resolve().parent))
from speed_runner import timed, write_json  # noqa: E402

#: name -> (preset, config overrides)
SETTINGS: dict[str, tuple[str | None, dict[str, Any]]] = {
    "preset": ("cpu-synthetic", {}),
    "paper": (None, {}),
}


def measure(name: str, steps: int, score_repeat: int) -> dict[str, Any]:
    import torch

    import logicad.models  # noqa: F401  (torchvision op schemas before timm)
    from logicad.models.base import build_method, method_class

    preset, overrides = SETTINGS[name]
    config = method_class("glcf").config_cls.build(overrides, preset=preset)
    torch.manual_seed(0)
    method = build_method("glcf", config)
    size, batch = config.image_size, config.batch_size
    images = torch.randn(batch, 3, size, size)
    stage = method.stages()[0]
    method.train()

    def step() -> None:
        losses = method.training_step({"image": images})
        stage.optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        stage.optimizer.step()

    load_before = os.getloadavg()[0]
    step_s = timed(step, steps)
    method.eval()
    method.finalize([{"image": images}])
    one, sixteen = torch.randn(1, 3, size, size), torch.randn(16, 3, size, size)
    batch1_s = timed(lambda: method.image_score(method.anomaly_map(one)), score_repeat)
    batch16_s = timed(lambda: method.image_score(method.anomaly_map(sixteen)), max(1, score_repeat // 4))
    return {"setting": name, "preset": preset, "backbone": config.backbone, "image_size": size,
            "batch_size": batch, "decoder": config.decoder, "sam_variant": config.sam_variant,
            "train_steps_per_s": round(1.0 / step_s, 4), "train_s_per_step": round(step_s, 3),
            "train_images_per_s": round(batch / step_s, 2),
            "infer_ms_per_image_batch1": round(1000 * batch1_s, 1),
            "infer_images_per_s_batch16": round(16 / batch16_s, 2),
            "load_average_before_after": [round(load_before, 1), round(os.getloadavg()[0], 1)]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "glcf_speed.json"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5, help="timed training steps (preset)")
    parser.add_argument("--paper-steps", type=int, default=2, help="timed training steps (paper setting)")
    parser.add_argument("--settings", default=",".join(SETTINGS))
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    rows = []
    for name in args.settings.split(","):
        paper = SETTINGS[name][0] is None
        row = measure(name, args.paper_steps if paper else args.steps, 3 if paper else 5)
        rows.append(row)
        print(json.dumps(row), flush=True)
    result = {"method": "glcf", "device": "cpu", "threads": args.threads, "cpu": platform.processor() or platform.machine(),
              "torch": torch.__version__, "cpu_count": os.cpu_count(), "rows": rows,
              "note": "shared machine: compare rows only with their load averages"}
    out = write_json(args.out, result)
    print(f"{'setting':8} {'steps/s':>8} {'ms/img@1':>9} {'img/s@16':>9}")
    for r in rows:
        print(f"{r['setting']:8} {r['train_steps_per_s']:8.3f} {r['infer_ms_per_image_batch1']:9.1f} "
              f"{r['infer_images_per_s_batch16']:9.2f}")
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
