"""DFSC speed on the CPU: training seconds/step, inference ms/image (batch 1), images/s
(batch 16) and peak RSS, at the paper's setting (256 px, batch 1) and the cpu-synthetic
preset, in float32 and bf16 autocast, plus ablations of the speed-ups.

    python benchmarks/dfsc_speed.py --out benchmarks/results/dfsc_speed.json [--threads 2]

Each setting runs in its own process (peak RSS is per process). The anchor is anomalib
2.7's EfficientAD-S on this kind of machine (256 px, batch 1, 2 threads): 1.67 s per
training step, 315 ms per image, 2.2 GB peak.

Timings on a shared machine move with the load: every setting records its CPU seconds
per step next to the wall time, and the file records a matrix-multiply calibration
(GFLOP/s at the same thread count) and the load average before and after, so a slow
run can be told from a slow machine.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from speed_runner import (cpu_seconds, machine_record, machine_state, peak_rss_gb, run_each_in_process,  # noqa: E402
                          structured_images, write_json)

ANCHOR = {"train_s_per_step": 1.67, "infer_ms_per_image": 315.0, "peak_rss_gb": 2.2,
          "what": "anomalib 2.7 EfficientAD-S, 256 px, batch 1, 2 threads, CPU"}
TARGET = {"train_s_per_step": ANCHOR["train_s_per_step"] / 3, "infer_ms_per_image": ANCHOR["infer_ms_per_image"] / 3}

#: name -> (config overrides, preset, options); options: channels_last, cache, sparse
SETTINGS: dict[str, tuple[dict[str, Any], str | None, dict[str, bool]]] = {
    "paper_fp32": ({"image_size": 256, "batch_size": 1, "precision": "32"}, None, {}),
    "paper_bf16": ({"image_size": 256, "batch_size": 1, "precision": "bf16"}, None, {}),
    "preset_cpu_synthetic": ({}, "cpu-synthetic", {}),
    "preset_cpu_synthetic_fp32": ({"precision": "32"}, "cpu-synthetic", {}),
    # ablations at 256 px fp32: each removes speed-ups from paper_fp32
    "paper_fp32_no_sparse_backward": ({"image_size": 256, "precision": "32"}, None, {"sparse": False}),
    "paper_fp32_no_channels_last": ({"image_size": 256, "precision": "32"}, None, {"channels_last": False}),
    "paper_fp32_naive": ({"image_size": 256, "precision": "32", "teacher_cache_mb": 0}, None,
                         {"sparse": False, "channels_last": False}),
}


def run_setting(name: str, threads: int, steps: int, warmup: int, repeats: int) -> dict[str, Any]:
    """Measure one setting in this process."""
    import logicad.models  # noqa: F401
    import torch
    from logicad.models.base import build_method, method_class

    torch.set_num_threads(threads)
    overrides, preset, options = SETTINGS[name]
    config = method_class("dfsc").config_cls.build({"max_steps": 100000, **overrides}, preset=preset)
    torch.manual_seed(0)
    model = build_method("dfsc", config)
    if options.get("channels_last", True):
        model = model.to(memory_format=torch.channels_last)
    model.sparse_hard_backward = options.get("sparse", True)
    size, batch_size = config.image_size, config.batch_size
    n_train = max(4 * batch_size, 8)
    images = structured_images(n_train, size)
    batches = [{"image": images[i:i + batch_size], "label": torch.zeros(batch_size, dtype=torch.long),
                "index": torch.arange(i, i + batch_size)} for i in range(0, n_train, batch_size)]
    model.prepare([{"image": images[i:i + 8]} for i in range(0, n_train, 8)])
    stage = model.stages()[0]
    autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if config.precision == "bf16" \
        else contextlib.nullcontext

    def step(i: int) -> None:
        with autocast():
            losses = model(batches[i % len(batches)], stage=stage.name)
        stage.optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        stage.optimizer.step()
        stage.scheduler.step()
        model.after_step(stage.name)

    model.train()
    warm = max(warmup, len(batches))  # one pass fills the teacher cache, as after a long run's first epoch
    for i in range(warm):
        step(i)
    walls, cpus = [], []
    for i in range(steps):
        start, cpu = time.perf_counter(), cpu_seconds()
        step(warm + i)
        walls.append(time.perf_counter() - start)
        cpus.append(cpu_seconds() - cpu)
    model.finalize([{"image": structured_images(8, size, seed=1)}])
    model.eval()
    one = structured_images(1, size, seed=2)
    sixteen = structured_images(16, size, seed=3)
    with torch.inference_mode():
        for _ in range(2):
            model.image_score(model.anomaly_map(one))
        latencies = []
        for _ in range(repeats):
            start = time.perf_counter()
            model.image_score(model.anomaly_map(one))
            latencies.append(1000 * (time.perf_counter() - start))
        model.image_score(model.anomaly_map(sixteen))
        rates = []
        for _ in range(max(2, repeats // 4)):
            start = time.perf_counter()
            model.image_score(model.anomaly_map(sixteen))
            rates.append(16 / (time.perf_counter() - start))
    return {
        "config": {k: getattr(config, k) for k in ("image_size", "batch_size", "precision", "lr", "max_steps",
                                                   "teacher_cache_mb")} | {"preset": preset},
        "options": {"channels_last": options.get("channels_last", True), "sparse_hard_backward":
                    options.get("sparse", True), "teacher_cache": config.teacher_cache_mb > 0},
        "train_s_per_step": round(statistics.mean(walls), 4),
        "train_s_per_step_median": round(statistics.median(walls), 4),
        "train_s_per_step_min": round(min(walls), 4),
        "train_cpu_s_per_step": round(statistics.mean(cpus), 4),
        "train_images_per_s": round(batch_size / statistics.mean(walls), 2),
        "infer_ms_per_image_b1": round(statistics.mean(latencies), 1),
        "infer_ms_per_image_b1_median": round(statistics.median(latencies), 1),
        "infer_ms_per_image_b1_min": round(min(latencies), 1),
        "images_per_s_b16": round(statistics.median(rates), 2),
        "peak_rss_gb": peak_rss_gb(),
        "teacher_cache_hits": model.cache.hits,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="benchmarks/results/dfsc_speed.json")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10, help="timed training steps per setting")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=12, help="timed batch-1 inferences per setting")
    parser.add_argument("--settings", default=",".join(SETTINGS), help=f"subset of {','.join(SETTINGS)}")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # child mode: one setting, JSON on stdout
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_setting(args.one, args.threads, args.steps, args.warmup, args.repeats)))
        return
    before = machine_state(args.threads)
    child_args = ["--steps", str(args.steps), "--warmup", str(args.warmup), "--repeats", str(args.repeats)]
    results = run_each_in_process(__file__, args.settings.split(","), SETTINGS, child_args, args.threads, _line)
    after = machine_state(args.threads)
    paper = [results[k] for k in ("paper_fp32", "paper_bf16") if k in results]
    summary = {}
    if paper:
        best_train = min(r["train_s_per_step"] for r in paper)
        best_infer = min(r["infer_ms_per_image_b1"] for r in paper)
        summary = {"best_train_s_per_step_256": best_train, "train_speedup_vs_anchor":
                   round(ANCHOR["train_s_per_step"] / best_train, 2),
                   "train_target_met": best_train <= TARGET["train_s_per_step"],
                   "best_infer_ms_per_image_256": best_infer,
                   "infer_fraction_of_anchor": round(best_infer / ANCHOR["infer_ms_per_image"], 3),
                   "infer_target_met": best_infer <= TARGET["infer_ms_per_image"]}
    write_json(args.out, {"benchmark": "dfsc_speed", "threads": args.threads, "anchor": ANCHOR,
                          "target": {k: round(v, 3) for k, v in TARGET.items()}, "summary": summary,
                          "settings": results, "machine": machine_record(before, after)})
    print(json.dumps(summary, indent=2))


def _line(name: str, row: dict[str, Any]) -> str:
    return (f"{name:32s} train {row['train_s_per_step']:.3f} s/step (cpu {row['train_cpu_s_per_step']:.2f} s)  "
            f"infer {row['infer_ms_per_image_b1']:.0f} ms/img  b16 {row['images_per_s_b16']:.1f} img/s  "
            f"rss {row['peak_rss_gb']:.2f} GB")


if __name__ == "__main__":
    main()
