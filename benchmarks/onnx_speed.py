"""ONNX export per method: parity with torch and CPU scoring speed, onnxruntime vs torch.

    python benchmarks/onnx_speed.py [--out benchmarks/results/onnx_speed.json] [--methods dfsc,fod]
                                    [--size 64] [--no-compiled] [--threads 1]

Per method, at its `cpu-synthetic` preset (patchcore and global_gaussian at their defaults; the
fusion of the DFSC and FOD presets), or at `--size` when given: the method is built, its
statistics fitted (prepare/finalize) on the synthetic dataset's training split (networks
untrained: speed and parity do not depend on training), exported with `export_model` (the code
`logicad export` runs, parity on every validation and test image), then timed on the same
graph input (N x S x S x 3 uint8, normalisation included) in three ways:

- onnxruntime (CPUExecutionProvider, `--threads` intra-op threads);
- torch eager (`ExportGraph`, inference mode, `--threads` threads);
- torch compiled (`torch.compile`, inductor, of the same module scoring through the function
  logicad's compiled scoring traces, `evaluate.compiled.traceable_maps`; minutes per method on
  a small CPU: `--no-compiled` skips it and the JSON says so; a failed compile is a row "failed"
  with the error in the JSON).

Rows: ms/image at batch 1 (median of `--repeats`) and images/s at batch 16 (median of
`--repeats` // 2 + 1 batches), after a warm-up call each. Writes JSON and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import torch
from logicad.data import load_split
from logicad.models.base import Method, build_method, method_class
from logicad.models.fusion import Fusion
from logicad.pipelines.data_source import synthetic_default
from logicad.pipelines.export.graph import ExportGraph
from logicad.pipelines.export.onnx_export import export_model, summary
from logicad.pipelines.export.onnx_scoring import OnnxScorer
from torch.utils.data import DataLoader

METHODS = ("dfsc", "glcf", "slsg", "fod", "patchcore", "global_gaussian", "fusion")
PRESET = "cpu-synthetic"


def build(name: str, size: int | None) -> Method:
    """`name` at its preset (or default) config, `image_size` = `size` when given."""
    if name == "fusion":
        return Fusion.from_members([(m, build(m, size)) for m in ("dfsc", "fod")])
    cls = method_class(name).config_cls
    config = cls.build({"image_size": size} if size else {}, PRESET if PRESET in cls.PRESETS else None)
    torch.manual_seed(0)
    return build_method(name, config)


def fitted(name: str, size: int | None, data: Path, category: str, n_train: int) -> Method:
    """`build`, then prepare/finalize on the first `n_train` training images (each member first)."""
    method = build(name, size)
    members = list(getattr(method, "members", []))  # a fusion's
    for part in [*members, method]:
        train = load_split("mvtec_loco", data, category, "train", part.config.image_size)
        subset = torch.utils.data.Subset(train, range(min(n_train, len(train))))
        part.prepare(DataLoader(subset, batch_size=4))
        part.finalize(DataLoader(subset, batch_size=4))
    return method.eval()


def timed(fn: Callable[[Any], Any], batch: Any, repeats: int) -> float:
    """Median seconds of `fn(batch)` over `repeats` calls, after one warm-up call."""
    fn(batch)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(batch)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def speeds(fn: Callable[[Any], Any], make: Callable[[int], Any], repeats: int) -> dict[str, float]:
    batch1 = timed(fn, make(1), repeats)
    batch16 = timed(fn, make(16), max(1, repeats // 2 + 1))
    return {"ms_per_image_batch1": 1000 * batch1, "images_per_s_batch16": 16 / batch16}


def measure(method: Method, folder: Path, threads: int, repeats: int, compiled: bool) -> dict[str, Any]:
    """The three rows for one exported method."""
    size = method.config.image_size
    images = torch.randint(0, 256, (16, size, size, 3), generator=torch.Generator().manual_seed(1),
                           dtype=torch.uint8)
    scorer = OnnxScorer(folder, threads=threads)
    graph = ExportGraph(method).eval()

    def eager(batch: torch.Tensor):
        with torch.inference_mode():
            return graph(batch)

    rows = {"onnxruntime": speeds(scorer, lambda n: images[:n].numpy(), repeats),
            "torch_eager": speeds(eager, lambda n: images[:n], repeats)}
    rows["torch_compiled"] = compiled_rows(method, images, repeats) if compiled else {"skipped": "--no-compiled"}
    return rows


def compiled_rows(method: Method, images: torch.Tensor, repeats: int) -> dict[str, Any]:
    """`torch.compile` (inductor) of the graph with the function logicad's compiled scoring traces
    (`evaluate.compiled.traceable_maps`: no inference_mode block, which AOT autograd cannot trace);
    the error's first line when compiling fails."""
    from logicad.pipelines.evaluate.compiled import traceable_maps

    maps_fn = traceable_maps(method)
    own_score = type(method).score is not Method.score  # a fusion: its score is not its map's

    def score(x: torch.Tensor):
        if own_score:
            return method.score(x)
        maps = maps_fn(x)
        return maps, method.image_score(maps)

    compiled_graph = torch.compile(ExportGraph(method, score).eval(), dynamic=False)

    def run(batch: torch.Tensor):
        with torch.inference_mode():
            return compiled_graph(batch)

    start = time.perf_counter()
    try:
        return {**speeds(run, lambda n: images[:n], repeats), "compile_and_run_s": time.perf_counter() - start}
    except Exception as exc:  # noqa: BLE001  (inductor raises many types; the row says why)
        cause = getattr(exc, "inner_exception", None) or exc.__cause__ or exc  # the backend's own error
        first = (str(cause).strip().splitlines() or [""])[0][:200]
        return {"error": f"{type(exc).__name__}: {type(cause).__name__}: {first}"}


def one(name: str, args: argparse.Namespace, data: Path, category: str, tmp: Path) -> dict[str, Any]:
    start = time.perf_counter()
    method = fitted(name, args.size, data, category, args.n_train)
    precisions = sorted({str(getattr(m.config, "precision", "32")) for m in method.modules() if isinstance(m, Method)})
    splits = {split: load_split("mvtec_loco", data, category, split, method.config.image_size)
              for split in ("validation", "test")}
    export_start = time.perf_counter()
    report = export_model(method, {}, f"benchmark:{name}", category, tmp / name, splits)
    print(f"{name}: {summary(report)}", flush=True)
    return {"image_size": method.config.image_size, "model_precision": ",".join(precisions),
            "export_and_parity_s": time.perf_counter() - export_start, "parity": report,
            "onnx_mb": (tmp / name / "model.onnx").stat().st_size / 2**20,
            "speed": measure(method, tmp / name, args.threads, args.repeats, not args.no_compiled),
            "seconds": time.perf_counter() - start}


def table(results: dict[str, Any]) -> str:
    head = ("| method | px | parity max abs diff map / score (rel) | ORT ms/img b1 | eager ms/img b1 | "
            "compiled ms/img b1 | ORT img/s b16 | eager img/s b16 | compiled img/s b16 |")
    lines = [head, "|" + "---|" * 9]
    for name, r in results.items():
        if "error" in r:
            lines.append(f"| {name} | | {r['error']} | | | | | | |")
            continue
        p, s = r["parity"]["outputs"], r["speed"]

        def cell(row: str, key: str, fmt: str, speed: dict = s) -> str:
            if key in speed[row]:
                return format(speed[row][key], fmt)
            return "failed" if "error" in speed[row] else "skipped"

        diffs = f"{p['map']['max_abs_diff']:.1e} / {p['score']['max_abs_diff']:.1e}"
        lines.append(f"| {name} | {r['image_size']} | {diffs} "
                     f"({r['parity']['max_rel_diff']:.1e}) | " + " | ".join(
                         cell(row, key, fmt) for key, fmt in (("ms_per_image_batch1", ".1f"),
                                                              ("images_per_s_batch16", ".1f"))
                         for row in ("onnxruntime", "torch_eager", "torch_compiled")) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="benchmarks/results/onnx_speed.json", help="JSON written here")
    parser.add_argument("--methods", default=",".join(METHODS), help=f"subset of {','.join(METHODS)}")
    parser.add_argument("--size", type=int, default=None, help="image size for every method (default: the preset's)")
    parser.add_argument("--threads", type=int, default=1,
                        help="intra-op threads for torch and onnxruntime (default 1: on a busy 2-core machine "
                             "torch at 2 threads was seen 50x slower than at 1)")
    parser.add_argument("--repeats", type=int, default=10, help="timed batch-1 calls per path")
    parser.add_argument("--n-train", type=int, default=16, help="training images the statistics are fitted on")
    parser.add_argument("--no-compiled", action="store_true", help="skip torch.compile (inductor) rows")
    parser.add_argument("--data", default=None, help="MVTec LOCO-format root (default: the synthetic dataset)")
    parser.add_argument("--category", default=None, help="category (default: the synthetic dataset's first)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data, category = (Path(args.data), args.category) if args.data else synthetic_default()
    category = args.category or category
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.methods.split(","):
            try:
                results[name] = one(name, args, data, category, Path(tmp))
            except Exception as exc:  # noqa: BLE001  (one method failing must not lose the others' rows)
                traceback.print_exc()
                results[name] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"}
    record = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "threads": args.threads,
                          "torch": torch.__version__, "python": sys.version.split()[0]},
              "data": str(data), "category": category, "compiled": not args.no_compiled, "methods": results}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=2))
    print(table(results))
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
