"""Speed of every registered method on one device: training steps/s and scoring speed, eager
and compiled, with anomalib's EfficientAD-S (the peer) measured in the same process.

    python benchmarks/gpu_speed.py [--out benchmarks/results/gpu_speed.json] [--methods dfsc,glcf]

Rows per method:
- training steps/s: a plain loop (training_step / backward / optimizer steps / after_step on
  one fixed batch), the product loop (`pipelines.train.worker.run_loop` under a local session
  whose reports do nothing) and the same loop through Ray's TorchTrainer (1 worker; skipped
  when ray is missing or with --no-ray);
- scoring (map + score, `pipelines.evaluate.compiled`): ms at batch 1 and images/s at each
  `--batches` size, eager and compiled, with the compiled maps' max abs difference to eager;
- peak GPU memory per row (CUDA only; peak RSS of the process otherwise).

On a GPU the setting is the issue's: 256 px, batch 1, bf16. On a CPU the same rows run at
`--threads` threads (2) with smaller sizes (64 px; scoring batches 1 and 16: 64 and 256
images take minutes there) and float32; rows that only a GPU gives (peak GPU memory, CUDA
graphs) are marked "unmeasured". The peer needs `anomalib` (an optional benchmark
dependency, not installed by logicad): without it its row says so.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

import torch  # noqa: E402

import logicad.models  # noqa: E402,F401  (torchvision op schemas before anything imports timm)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from speed_runner import peak_rss_gb, timed  # noqa: E402

UNMEASURED = "unmeasured"
CUDA = torch.cuda.is_available()


# --- measuring ----------------------------------------------------------------------------
def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peak(device: torch.device) -> dict[str, Any]:
    gpu = round(torch.cuda.max_memory_allocated(device) / 2**30, 3) if device.type == "cuda" else UNMEASURED
    return {"peak_gpu_gb": gpu, "peak_rss_gb": peak_rss_gb()}


def _autocast(device: torch.device, precision: str):
    if precision == "32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


# --- training -----------------------------------------------------------------------------
def plain_loop(method, device: torch.device, steps: int, compile_mode: str = "") -> dict[str, Any]:
    """Steps/s of training_step + backward + every optimizer + after_step on one fixed batch
    (no data loading, no logging), after 3 warm-up steps; the first stage only. With
    `compile_mode` the step goes through `pipelines.train.compiled_step` as `--compile-step`
    does (the first call, the compile, is timed apart as `compile_s`)."""
    from logicad.pipelines.train.compiled_step import compiled_step

    if not method.stages():  # patchcore, global_gaussian: statistics only, nothing to step
        return {"skipped": "no training stage (statistics only: prepare -> finalize)"}
    size, batch_size = method.config.image_size, method.config.batch_size
    images = torch.randn(8, 3, size, size, device=device).contiguous(memory_format=torch.channels_last)
    method.prepare([{"image": images, "label": torch.zeros(8, dtype=torch.long, device=device)}])
    stage = method.stages()[0]
    batch = {"image": images[:batch_size], "label": torch.zeros(batch_size, dtype=torch.long, device=device),
             "index": torch.arange(batch_size)}
    method.start_stage(stage.name)
    method.train()
    call = compiled_step(method, method, compile_mode)

    def step() -> torch.Tensor:
        with _autocast(device, method.config.precision):
            losses = call(batch, stage=stage.name)
        for optimizer in stage.optimizers:
            optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        for optimizer in stage.optimizers:
            optimizer.step()
        method.after_step(stage.name)
        return losses["loss"].detach()

    torch.manual_seed(0)
    start = time.perf_counter()
    first_loss = float(step())  # the host read synchronises the device
    compile_s = time.perf_counter() - start
    _reset_peak(device)
    seconds = timed(step, steps, warmup=2, device=device)
    row = {"steps_per_s": round(1.0 / seconds, 2), "ms_per_step": round(1000 * seconds, 2),
           "first_loss": first_loss, **_peak(device)}
    if compile_mode:
        row.update(compile_mode=compile_mode, compiled=call is not method, compile_s=round(compile_s, 1))
    return row


class _QuietSession:
    """Factory of a TuneSession subclass that reports nowhere (no Ray) and keeps the last
    report and the final model file."""

    @staticmethod
    def make(keep: Path):
        from logicad.pipelines.train.session import TuneSession

        class LocalSession(TuneSession):
            metrics: dict[str, Any] = {}

            def latest_checkpoint(self):
                return None

            def report(self, metrics: dict[str, Any], checkpoint_dir: Path | None) -> None:
                LocalSession.metrics = dict(metrics)
                if checkpoint_dir is not None and metrics.get("final"):
                    import shutil

                    shutil.copy(Path(checkpoint_dir) / "model.pt", keep)

        return LocalSession()


def worker_spec(name: str, config: dict[str, Any], data: Path, category: str):
    from logicad.pipelines.train.worker import WorkerSpec

    return WorkerSpec(method=name, config=config, dataset="mvtec_loco", data_root=str(data), category=category,
                      log_every=max(config["max_steps"], 1), evaluate=False)


def product_loop(spec, model_file: Path, device: torch.device) -> dict[str, Any]:
    """Steps/s the product loop reports (its progress rate: the whole stage, first step and
    data loading included), run bare in this process; the trained model is kept in `model_file`."""
    from logicad.pipelines.train.worker import run_loop

    session = _QuietSession.make(model_file)
    _reset_peak(device)
    start = time.perf_counter()
    run_loop(spec, session)
    metrics = type(session).metrics
    rate = metrics.get("train_images_per_second")
    batch_size = spec.config["batch_size"]
    return {"steps_per_s": round(rate / batch_size, 2) if rate else None, "steps": spec.config["max_steps"],
            "wall_s_with_prepare_and_finalize": round(time.perf_counter() - start, 1), **_peak(device)}


def torch_trainer(spec, storage: Path) -> dict[str, Any]:
    """The same loop through TorchTrainer with one worker (GPU if there is one); a run name of
    its own per method (Ray would resume another method's run from the same directory)."""
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from logicad.pipelines.train.worker import train_loop

    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=max(2, os.cpu_count() or 2) if CUDA else 2, include_dashboard=False,
                 object_store_memory=300 * 2**20, log_to_driver=False)
    try:
        start = time.perf_counter()
        trainer = TorchTrainer(train_loop, train_loop_config=spec.to_dict(),
                               scaling_config=ScalingConfig(num_workers=1, use_gpu=CUDA),
                               run_config=RunConfig(name=f"gpu_speed_{spec.method}", storage_path=str(storage)))
        result = trainer.fit()
        rate = (result.metrics or {}).get("train_images_per_second")
        return {"steps_per_s": round(rate / spec.config["batch_size"], 2) if rate else None,
                "wall_s_with_worker_start": round(time.perf_counter() - start, 1)}
    finally:
        if started:
            ray.shutdown()


# --- scoring ------------------------------------------------------------------------------
def speed_row(score: Callable[[torch.Tensor], Any], size: int, device: torch.device, batches: list[int],
              repeats: int) -> dict[str, float]:
    """ms at batch 1 and images/s at each batch size of `score(images)` on random images."""
    row = {}
    for b in batches:
        images = torch.randn(b, 3, size, size, device=device)
        seconds = timed(lambda: score(images), repeats if b == 1 else max(2, repeats // 4), warmup=2, device=device)
        if b == 1:
            row["ms_batch_1"] = round(1000 * seconds, 3)
        row[f"images_per_s_b{b}"] = round(b / seconds, 1)
    return row


def scoring_rows(method, device: torch.device, batches: list[int], repeats: int, compiled: bool) -> dict[str, Any]:
    """ms at batch 1 and images/s at each batch, eager and (when asked) compiled."""
    from logicad.pipelines.evaluate.compiled import eager_scores, make_scorer

    size = method.config.image_size
    method.eval()
    out: dict[str, Any] = {}
    for mode in ("eager", "compiled") if compiled else ("eager",):
        scorer = make_scorer(method, device, compile=mode == "compiled")
        row: dict[str, Any] = {}
        _reset_peak(device)
        if mode == "compiled":
            row["warmup_s"] = round(scorer.warmup(tuple(sorted(set(batches)))), 1)
        row.update(speed_row(scorer, size, device, batches, repeats))
        if mode == "compiled":
            row["compiled"] = scorer.compiled
            row["fallback"] = scorer.fallback_reason
            images = torch.randn(max(batches), 3, size, size, device=device)
            maps, _ = scorer(images)
            diff = float((maps.float() - eager_scores(method, images)[0].float()).abs().max())
            row["max_abs_diff_to_eager"] = diff if scorer.compiled else "fell back to eager"
        out[mode] = {**row, **_peak(device)}
    return out


# --- the peer -----------------------------------------------------------------------------
def peer(device: torch.device, size: int, steps: int, batches: list[int], repeats: int) -> dict[str, Any]:
    """anomalib's EfficientAD-S torch model: a plain training loop (Adam, no penalty images)
    and eager scoring (its forward in eval mode gives the map), in this process."""
    try:
        from anomalib.models.image.efficient_ad.torch_model import EfficientAdModel
    except ImportError as exc:
        return {"skipped": f"anomalib not importable ({exc}); install it to measure the peer "
                           "(an optional benchmark dependency)"}
    try:
        model = EfficientAdModel(teacher_out_channels=384, model_size="small").to(device)
    except TypeError:  # older signature
        model = EfficientAdModel(teacher_out_channels=384, input_size=(size, size), model_size="small").to(device)
    params = [*model.student.parameters(), *model.ae.parameters()]
    optimizer = torch.optim.Adam(params, lr=1e-4, weight_decay=1e-5)
    images = torch.randn(1, 3, size, size, device=device)
    model.train()

    def step() -> None:
        loss_st, loss_ae, loss_stae = model(images)
        optimizer.zero_grad(set_to_none=True)
        (loss_st + loss_ae + loss_stae).backward()
        optimizer.step()

    _reset_peak(device)
    seconds = timed(step, steps, warmup=3, device=device)
    out: dict[str, Any] = {"train": {"steps_per_s": round(1 / seconds, 2), "ms_per_step": round(1000 * seconds, 2),
                                     **_peak(device)}}
    model.eval()
    with torch.inference_mode():
        row = speed_row(model, size, device, batches, repeats)
    out["scoring_eager"] = {**row, **_peak(device)}
    return out


# --- one method ---------------------------------------------------------------------------
def method_config(name: str, size: int, precision: str, steps: int) -> tuple[dict[str, Any], list[str]]:
    """Batch 1, `steps` steps, `precision`, `size` px (the preset's/default size where the method
    refuses `size`); on a CPU the `cpu-synthetic` preset's other keys where there is one."""
    from logicad.models.base import ConfigError, method_class

    cls = method_class(name).config_cls
    preset = "cpu-synthetic" if not CUDA and "cpu-synthetic" in cls.PRESETS else None
    base = dict(cls.PRESETS[preset]) if preset else {}
    wanted = {**base, "batch_size": 1, "max_steps": steps, "precision": precision, "image_size": size}
    notes = [f"preset {preset}"] if preset else []
    try:
        cls.build(wanted)
    except ConfigError as exc:
        wanted.pop("image_size")
        notes.append(f"image_size {size} refused ({exc}); used {cls.build(wanted).image_size}")
    return wanted, notes


def run_method(name: str, args, device: torch.device, data: Path, category: str, work: Path) -> dict[str, Any]:
    from logicad.models.base import build_method
    from logicad.pipelines.train.checkpoints import load_model

    config, notes = method_config(name, args.size, args.precision, args.steps)
    row: dict[str, Any] = {"config": config, "notes": notes}
    errors: dict[str, str] = {}

    def attempt(key: str, fn: Callable[[], Any]) -> None:
        try:
            row[key] = fn()
        except Exception as exc:  # one failing row must not lose the others
            errors[key] = f"{type(exc).__name__}: {exc}"
            traceback.print_exc()

    torch.manual_seed(0)
    attempt("train_plain_loop", lambda: plain_loop(build_method(name, **config).to(
        device, memory_format=torch.channels_last), device, args.steps))
    if args.compile_step:  # the same first batch and seed: first_loss compares with the eager row
        torch.manual_seed(0)
        attempt("train_plain_loop_compiled", lambda: plain_loop(build_method(name, **config).to(
            device, memory_format=torch.channels_last), device, args.steps, args.compile_step))
    spec = worker_spec(name, config, data, category)
    model_file = work / f"{name}.pt"
    attempt("train_product_loop", lambda: product_loop(spec, model_file, device))
    if args.ray:
        try:
            import ray  # noqa: F401
            attempt("train_torch_trainer", lambda: torch_trainer(spec, work / "ray"))
        except ImportError:
            row["train_torch_trainer"] = {"skipped": "ray not importable"}
    else:
        row["train_torch_trainer"] = {"skipped": "--no-ray"}
    if model_file.exists():  # the product loop's trained and finalized model
        method = load_model(model_file).to(device, memory_format=torch.channels_last)
        compiled = args.compiled_methods == "all" or name in args.compiled_methods.split(",")
        attempt("scoring", lambda: scoring_rows(method, device, args.batches, args.repeats, compiled))
    if errors:
        row["errors"] = errors
    return row


# --- output -------------------------------------------------------------------------------
def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.2f}" if value < 100 else f"{value:,.0f}"
    return str(value)


def table(results: dict[str, Any], batches: list[int]) -> str:
    """One column per method (and the peer), one row per figure."""
    columns = {name: row for name, row in results["methods"].items()}
    columns["peer EfficientAD-S"] = results["peer"]
    lines = [("training steps/s, plain loop",
              lambda r: r.get("train_plain_loop", r.get("train", {})).get("steps_per_s")),
             ("training steps/s, plain loop, compiled step",
              lambda r: r.get("train_plain_loop_compiled", {}).get("steps_per_s")),
             ("training steps/s, product loop", lambda r: r.get("train_product_loop", {}).get("steps_per_s")),
             ("training steps/s, TorchTrainer 1 worker",
              lambda r: r.get("train_torch_trainer", {}).get("steps_per_s")
              or r.get("train_torch_trainer", {}).get("skipped"))]
    for mode in ("eager", "compiled"):
        def get(r, key, mode=mode):
            part = r.get("scoring", {}).get(mode) or (r.get("scoring_eager") if mode == "eager" else None) or {}
            return part.get(key)

        lines.append((f"scoring ms at batch 1, {mode}", lambda r, g=get: g(r, "ms_batch_1")))
        for b in batches:
            if b != 1:
                lines.append((f"scoring images/s at batch {b}, {mode}",
                              lambda r, g=get, b=b: g(r, f"images_per_s_b{b}")))
    lines.append(("compiled max abs diff to eager", lambda r: r.get("scoring", {}).get("compiled", {}).get(
        "max_abs_diff_to_eager")))
    lines.append(("peak GPU memory GB (plain loop)", lambda r: r.get("train_plain_loop", r.get("train", {})).get(
        "peak_gpu_gb")))
    header = "| | " + " | ".join(columns) + " |"
    out = [header, "|---" * (len(columns) + 1) + "|"]
    for label, get in lines:
        cells = []
        for row in columns.values():
            try:
                cells.append(_fmt(get(row)))
            except AttributeError:
                cells.append("-")
        out.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def write(results: dict[str, Any], args) -> None:
    """The JSON with the machine record and the table of what has been measured so far."""
    results["machine"] = {"torch": torch.__version__, "python": platform.python_version(), "cores": os.cpu_count(),
                          "loadavg": os.getloadavg(), "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    results["table"] = table(results, args.batches)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2, default=str))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="benchmarks/results/gpu_speed.json")
    parser.add_argument("--methods", default="", help="comma list (default: every registered, importable method)")
    parser.add_argument("--size", type=int, default=256 if CUDA else 64)
    parser.add_argument("--precision", default="bf16" if CUDA else "32", choices=("32", "bf16", "16"))
    parser.add_argument("--steps", type=int, default=200 if CUDA else 6, help="training steps per loop")
    parser.add_argument("--batches", default="1,16,64,256" if CUDA else "1,16")
    parser.add_argument("--repeats", type=int, default=100 if CUDA else 8, help="timed batch-1 scorings")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (CPU runs only)")
    parser.add_argument("--compiled-methods", default="all", help="methods whose compiled scoring is measured "
                        "('all', or a comma list; '' for none: inductor on a CPU compiles for minutes)")
    parser.add_argument("--compile-step", default="reduce-overhead" if CUDA else "",
                        help="torch.compile mode of the compiled training-step row (default reduce-overhead, "
                             "i.e. CUDA graphs, on CUDA; '' skips it: inductor on a CPU compiles for minutes)")
    parser.add_argument("--no-ray", dest="ray", action="store_false")
    parser.add_argument("--no-peer", dest="peer", action="store_false")
    args = parser.parse_args(argv)
    args.batches = [int(b) for b in args.batches.split(",")]
    if not CUDA:
        torch.set_num_threads(args.threads)
    from logicad.data.synthetic import CATEGORIES, SyntheticSpec, make_synthetic
    from logicad.models.base import METHODS, method_class

    method_class("dfsc")  # imports every built-in method folder present
    names = args.methods.split(",") if args.methods else sorted(METHODS)
    device = torch.device("cuda" if CUDA else "cpu")
    results: dict[str, Any] = {
        "benchmark": "gpu_speed", "device": torch.cuda.get_device_name(device) if CUDA else platform.processor()
        or "cpu", "setting": {"size": args.size, "precision": args.precision, "batch_size": 1, "steps": args.steps,
                              "scoring_batches": args.batches, "threads": None if CUDA else args.threads},
        "methods": {}, "peer": {},
    }
    if not CUDA:
        results["gpu_rows"] = (f"{UNMEASURED}: no CUDA device; CPU rows at {args.threads} threads, {args.size} px, "
                               f"scoring batches {args.batches} (64/256 left out: minutes on a CPU), float32, "
                               f"no CUDA graphs, no peak GPU memory")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        make_synthetic(work / "loco", SyntheticSpec(seed=0, size=max(args.size, 64), n_train=8, n_validation=4,
                                                    n_test_good=2, n_test_logical=2, n_test_structural=2))
        for name in names:
            print(f"== {name}", flush=True)
            start = time.perf_counter()
            results["methods"][name] = run_method(name, args, device, work / "loco", CATEGORIES[0], work)
            results["methods"][name]["bench_wall_s"] = round(time.perf_counter() - start, 1)
            write(results, args)  # after every method: a run cut off by a timeout keeps what it finished
        if args.peer:
            results["peer"] = peer(device, args.size, args.steps, args.batches, args.repeats)
        else:
            results["peer"] = {"skipped": "--no-peer"}
    write(results, args)
    print(results["table"])
    if "gpu_rows" in results:
        print(f"GPU rows: {results['gpu_rows']}")
    print(f"peer: {results['peer'].get('skipped', 'measured')}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    sys.exit(main())
