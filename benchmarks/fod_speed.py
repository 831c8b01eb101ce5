"""FOD speed on the CPU: training steps/s with and without the frozen-feature cache,
inference ms/image (batch 1) and images/s (batch 16), at the cpu-synthetic preset and at
the paper's setting (efficientnet_b6, 256 px, d_model 256/512, batch 1).

    python benchmarks/fod_speed.py --out benchmarks/results/fod_speed.json [--threads 2]

Each setting runs in its own process. The cache is measured as after the first epoch
(every training image cached: FOD trains without augmentation, so a cached feature is
exactly the computed one); "saved_ms_per_step" is the difference per training step.
Timings on a shared machine move with the load: the file records CPU seconds per step,
a matrix-multiply calibration and the load average before and after (speed_runner.py).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from speed_runner import (cpu_seconds, machine_record, machine_state, peak_rss_gb, run_each_in_process,  # noqa: E402
                          structured_images, write_json)

#: name -> (config overrides, preset)
SETTINGS: dict[str, tuple[dict[str, Any], str | None]] = {
    "preset_cpu_synthetic": ({}, "cpu-synthetic"),
    "preset_cpu_synthetic_no_cache": ({"feature_cache_mb": 0}, "cpu-synthetic"),
    "paper_256": ({}, None),
    "paper_256_no_cache": ({"feature_cache_mb": 0}, None),
}


def run_setting(name: str, threads: int, steps: int, repeats: int) -> dict[str, Any]:
    """Measure one setting in this process."""
    import logicad.models  # noqa: F401
    import torch
    from logicad.models.base import build_method, method_class

    torch.set_num_threads(threads)
    overrides, preset = SETTINGS[name]
    config = method_class("fod").config_cls.build({"max_steps": 100000, **overrides}, preset=preset)
    torch.manual_seed(0)
    model = build_method("fod", config).to(memory_format=torch.channels_last)
    size, batch_size = config.image_size, config.batch_size
    n_train = max(2 * batch_size, 4)
    images = structured_images(n_train, size)
    batches = [{"image": images[i:i + batch_size], "index": torch.arange(i, i + batch_size)}
               for i in range(0, n_train, batch_size)]
    model.prepare([{"image": images[i:i + 4], "index": torch.arange(i, min(i + 4, n_train))}
                   for i in range(0, n_train, 4)])  # fills the cache, as the first epoch would
    stage = model.stages()[0]

    def step(i: int) -> None:
        losses = model(batches[i % len(batches)], stage=stage.name)
        stage.optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        stage.optimizer.step()

    model.train()
    step(0)
    walls, cpus = [], []
    for i in range(steps):
        start, cpu = time.perf_counter(), cpu_seconds()
        step(1 + i)
        walls.append(time.perf_counter() - start)
        cpus.append(cpu_seconds() - cpu)
    model.eval()
    one, sixteen = structured_images(1, size, seed=2), structured_images(16, size, seed=3)
    with torch.inference_mode():
        model.image_score(model.anomaly_map(one))
        latencies = []
        for _ in range(repeats):
            start = time.perf_counter()
            model.image_score(model.anomaly_map(one))
            latencies.append(1000 * (time.perf_counter() - start))
        rates = []
        for _ in range(2):
            start = time.perf_counter()
            model.image_score(model.anomaly_map(sixteen))
            rates.append(16 / (time.perf_counter() - start))
    return {
        "config": {k: getattr(config, k) for k in ("backbone", "image_size", "batch_size", "d_model", "heads",
                                                   "layers", "feature_cache_mb")} | {"preset": preset},
        "train_s_per_step": round(statistics.mean(walls), 4),
        "train_s_per_step_median": round(statistics.median(walls), 4),
        "train_steps_per_s": round(1 / statistics.mean(walls), 3),
        "train_cpu_s_per_step": round(statistics.mean(cpus), 4),
        "train_images_per_s": round(batch_size / statistics.mean(walls), 2),
        "infer_ms_per_image_b1": round(statistics.mean(latencies), 1),
        "infer_ms_per_image_b1_median": round(statistics.median(latencies), 1),
        "images_per_s_b16": round(max(rates), 2),
        "peak_rss_gb": peak_rss_gb(),
        "feature_cache_hits": model.cache.hits,
        "feature_cache_mb_used": round(model.cache.used / 2**20, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="benchmarks/results/fod_speed.json")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=8, help="timed training steps per preset setting")
    parser.add_argument("--paper-steps", type=int, default=3, help="timed training steps per paper setting")
    parser.add_argument("--repeats", type=int, default=5, help="timed batch-1 inferences per setting")
    parser.add_argument("--settings", default=",".join(SETTINGS), help=f"subset of {','.join(SETTINGS)}")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # child mode: one setting, JSON on stdout
    args = parser.parse_args()
    if args.one:
        steps = args.paper_steps if args.one.startswith("paper") else args.steps
        print(json.dumps(run_setting(args.one, args.threads, steps, args.repeats)))
        return
    before = machine_state(args.threads)
    child_args = ["--steps", str(args.steps), "--paper-steps", str(args.paper_steps), "--repeats", str(args.repeats)]
    results = run_each_in_process(__file__, args.settings.split(","), SETTINGS, child_args, args.threads, _line)
    after = machine_state(args.threads)
    summary = {}
    for base in ("preset_cpu_synthetic", "paper_256"):
        if base in results and f"{base}_no_cache" in results:
            cached, plain = results[base], results[f"{base}_no_cache"]
            summary[base] = {
                "saved_ms_per_step": round(1000 * (plain["train_s_per_step"] - cached["train_s_per_step"]), 1),
                "saved_cpu_ms_per_step": round(1000 * (plain["train_cpu_s_per_step"]
                                                       - cached["train_cpu_s_per_step"]), 1),
                "speedup": round(plain["train_s_per_step"] / cached["train_s_per_step"], 2)}
    write_json(args.out, {"benchmark": "fod_speed", "threads": args.threads, "summary": {"feature_cache": summary},
                          "settings": results, "machine": machine_record(before, after)})
    print(json.dumps({"feature_cache": summary}, indent=2))


def _line(name: str, row: dict[str, Any]) -> str:
    return (f"{name:32s} train {row['train_steps_per_s']:.3f} steps/s (cpu {row['train_cpu_s_per_step']:.2f} s/step)"
            f"  infer {row['infer_ms_per_image_b1']:.0f} ms/img  b16 {row['images_per_s_b16']:.1f} img/s  "
            f"rss {row['peak_rss_gb']:.2f} GB")


if __name__ == "__main__":
    main()
