"""Time `evaluate-maps` on a large MVTec LOCO-format category (~500 test images at ~1600x1100).

    python benchmarks/evaluate_maps_speed.py --out benchmarks/results/evaluate_maps_speed.json

Generates a few synthetic images per kind (shorter side 1100 px), copies them under new ids
up to the wanted count (generation at that size is the slow part, not what is measured),
writes random float32 .tiff maps in MVTec's layout, then times the whole `evaluate_maps`
call (tiff decoding included).
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from logicad.data import scan
from logicad.data.images import read_size
from logicad.data.synthetic import CATEGORIES, SyntheticSpec, make_synthetic
from logicad.pipelines.evaluate.maps import evaluate_maps, write_map


def replicate(cat: Path, have: int, want: int) -> None:
    """Copy test images (and their ground-truth folders) to ids have..want-1."""
    for kind in ("good", "logical_anomalies", "structural_anomalies"):
        for i in range(have, want):
            src = f"{i % have:03d}"
            shutil.copy(cat / "test" / kind / f"{src}.png", cat / "test" / kind / f"{i:03d}.png")
            if kind != "good":
                shutil.copytree(cat / "ground_truth" / kind / src, cat / "ground_truth" / kind / f"{i:03d}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="benchmarks/results/evaluate_maps_speed.json")
    parser.add_argument("--size", type=int, default=1100)
    parser.add_argument("--n-per-kind", type=int, default=167)
    args = parser.parse_args()
    category = CATEGORIES[0]
    with tempfile.TemporaryDirectory() as tmp:
        data, maps = Path(tmp) / "data", Path(tmp) / "maps"
        start = time.perf_counter()
        seeds = 12
        make_synthetic(data, SyntheticSpec(size=args.size, n_train=1, n_validation=1, n_test_good=seeds,
                                           n_test_logical=seeds, n_test_structural=seeds), [category])
        replicate(data / category, seeds, args.n_per_kind)
        generate = time.perf_counter() - start
        rng = np.random.default_rng(0)
        samples = scan("mvtec_loco", data, category, "test")
        for sample in samples:
            write_map(maps, category, sample, rng.random(read_size(sample.path), dtype=np.float32))
        start = time.perf_counter()
        metrics = evaluate_maps(maps, data, category)
        seconds = time.perf_counter() - start
        height, width = read_size(samples[0].path)
    result = {"n_images": len(samples), "image_size": f"{width}x{height}", "evaluate_maps_seconds": round(seconds, 2),
              "ms_per_image": round(1000 * seconds / len(samples), 1), "generate_seconds": round(generate, 1),
              "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
              "pixel_auroc_random_maps": metrics["pixel_auroc"]}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
