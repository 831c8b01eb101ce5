"""The `logicad` command line."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Callable, Sequence

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no progress bar per registration

from .catalogue import COMPILE_MODES, DEBUG_BACKENDS, METHODS, OBJECTIVES, PRESETS, methods_help
from .data_source import MODEL_HELP, add_data_args, cache_dir, positive_int, remote_data, resolve_data

DEFAULT_PRESET = "cpu-synthetic"
HEADLINE = ("image_auroc_logical", "image_auroc_structural", "image_auroc", "spro_0.05", "pixel_auroc", "aupro_0.3")


# --- make-synthetic ---------------------------------------------------------------------
def cmd_make_synthetic(args: argparse.Namespace) -> int:
    from logicad.data.synthetic import SyntheticSpec, make_synthetic

    given = {key: getattr(args, key) for key in SPEC_FLAGS if getattr(args, key) is not None}
    spec = SyntheticSpec(**given)
    categories = args.categories.split(",") if args.categories else None
    for path in make_synthetic(args.out, spec, categories):
        print(path)
    return 0


#: SyntheticSpec fields with a flag each (defaults are the spec's: read when the command runs,
#: so building the parser imports nothing heavy)
SPEC_FLAGS = {"seed": "generator seed", "size": "shorter image side in pixels",
              "n_train": "training images per category", "n_validation": "validation images per category",
              "n_test_good": "normal test images", "n_test_logical": "logical-anomaly test images",
              "n_test_structural": "structural-anomaly test images"}


def add_make_synthetic(sub) -> None:
    p = sub.add_parser("make-synthetic", help="write the synthetic MVTec LOCO-format dataset")
    p.add_argument("--out", "--output", dest="out", required=True,
                   help="output root (categories are written below it)")
    p.add_argument("--categories", default=None, help="comma-separated subset (default: all)")
    for name, what in SPEC_FLAGS.items():
        p.add_argument("--" + name.replace("_", "-"), type=int, default=None,
                       help=f"{what} (default: SyntheticSpec's)")
    p.set_defaults(func=cmd_make_synthetic)


# --- evaluate-maps ----------------------------------------------------------------------
def cmd_evaluate_maps(args: argparse.Namespace) -> int:
    from .evaluate.maps import evaluate_maps

    metrics = evaluate_maps(Path(args.maps), Path(args.data), args.category, args.dataset)
    text = json.dumps(metrics, indent=2)
    if args.out:
        Path(args.out).write_text(text)
    print(text)
    return 0


def add_evaluate_maps(sub) -> None:
    p = sub.add_parser("evaluate-maps", help="score anomaly maps written as <maps>/<category>/test/<kind>/<id>.tiff")
    p.add_argument("--maps", required=True, help="root of the maps: <maps>/<category>/test/<kind>/<id>.tiff")
    p.add_argument("--data", required=True, help="dataset root holding the ground truth")
    p.add_argument("--category", required=True, help="category folder under --data and --maps")
    p.add_argument("--dataset", default="mvtec_loco", choices=["mvtec_loco", "mvtec_ad"], help="layout of --data")
    p.add_argument("--out", "--output", dest="out", default=None, help="write metrics.json here")
    p.set_defaults(func=cmd_evaluate_maps)


# --- train ------------------------------------------------------------------------------
def cmd_train(args: argparse.Namespace) -> int:
    from .config import resolve_config
    from .train.driver import TrainJob, run_train

    storage, filesystem = _storage(args)
    data, category, synthetic = resolve_data(args)
    preset = args.preset
    args.method = method_of(args)
    if synthetic:
        preset = preset or (DEFAULT_PRESET if DEFAULT_PRESET in PRESETS.get(args.method, ()) else None)
        print(f"no --data: training on the synthetic default ({data}, category {category})"
              + (f" with the {preset!r} preset" if preset else ""), flush=True)
    preset = None if preset == "none" else preset
    config = resolve_config(args.method, _sets(args), args.config, preset)
    if preset:
        print(f"preset {preset!r}: {config.PRESETS[preset]}", flush=True)
    job = TrainJob(args.method, config, args.dataset, data, category, preset, args.workers,
                   gpus_per_worker=0.0 if args.cpu else args.gpus_per_worker, output_dir=args.output,
                   storage_path=storage, run_name=args.run_name, resume=args.resume,
                   checkpoint_every=args.checkpoint_every, max_failures=args.max_failures,
                   tracking_uri=args.tracking_uri, storage_filesystem=filesystem,
                   keep_checkpoints=args.keep_checkpoints, compile_step=args.compile_step,
                   eval_options={"fpr": args.fpr}, **remote_data(args))
    record = run_train(job)
    print_headline(record)
    print_registration(record)
    from .train.driver import disk_summary

    print("results: " + disk_summary(record["written"], filesystem) + f"; latest: {Path(args.output) / 'latest'}")
    return 0


def method_of(args: argparse.Namespace) -> str:
    """--method, else the `method:` of the --config file (a sweep's best_config.yaml), else dfsc."""
    from .config import read_yaml_mapping

    if args.method:
        return args.method
    named = read_yaml_mapping(Path(args.config), "a YAML mapping of config keys").get("method") if args.config \
        else None
    return str(named) if named else "dfsc"


def print_registration(record: dict) -> None:
    """Every run registers a version, whatever its quality; say what decides whether it is used."""
    if record.get("model_uri"):
        print(f"registered {record['model_uri']} (every run registers a version; `logicad promote` moves "
              f"@champion to it only if it beats the current champion on the same test data)")


def print_headline(record: dict) -> None:
    def fmt(v):
        return "n/a" if v is None else f"{v:.3f}"

    print(f"{record['method']} on {record['dataset']}/{record['category']}: "
          + "  ".join(f"{k} {fmt(record.get(k))}" for k in HEADLINE))
    parts = [f"train {record['train_seconds']} s"] if record.get("train_seconds") is not None else []
    parts.append(f"inference {fmt(record.get('infer_ms_per_image'))} ms/image")
    if record.get("mlflow_run_id"):
        parts.append(f"MLflow run {record['mlflow_run_id']}")
    if record.get("model_uri"):
        parts.append(f"model {record['model_uri']}")
    print(", ".join(parts))
    from .evaluate.thresholds import decision_line

    if decision := decision_line(record):
        print(decision)


def _config_args(p: argparse.ArgumentParser) -> None:
    """The config flags train and tune share."""
    p.add_argument("--max-steps", type=positive_int, default=None,
                   help="training steps (the config key max_steps; default: the preset's or the paper's)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="config override (repeatable)")
    p.add_argument("--config", default=None, help="YAML file of config keys (e.g. from logicad tune)")
    p.add_argument("--preset", default=None,
                   help="named smaller setting (" + "; ".join(f"{m}: {', '.join(ps)}" for m, ps in PRESETS.items()
                                                              if ps) + "), or 'none' for the paper's defaults; "
                        "without --data the synthetic default uses cpu-synthetic")


def _method_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--method", default=None, choices=tuple(METHODS), metavar="METHOD",
                   help=f"default: the --config file's method, else dfsc. {methods_help()}")


def add_train(sub) -> None:
    p = sub.add_parser("train", help="train a method on Ray Train, evaluate it, track it in MLflow")
    _method_arg(p)
    add_data_args(p)
    p.add_argument("--workers", type=positive_int, default=1, help="Ray Train workers (DDP), 1 or more")
    _config_args(p)
    p.add_argument("--compile-step", default="", choices=("", *COMPILE_MODES, *DEBUG_BACKENDS), metavar="MODE",
                   help=f"torch.compile the training step (forward + backward) with this mode: "
                        f"{', '.join(COMPILE_MODES)} "
                        f"(reduce-overhead = CUDA graphs); off by default; methods whose step is not "
                        f"compilable say so and train eager")
    p.add_argument("--out", "--output", dest="output", default="outputs",
                   help="output root: each run writes <out>/<method>/<category>/<run>/ and <out>/latest points "
                        "at the newest")
    p.add_argument("--storage", default="ray_results", help="Ray run storage: local dir or s3://bucket/prefix")
    p.add_argument("--s3-endpoint-url", default=None, help="S3-compatible endpoint (else AWS_ENDPOINT_URL)")
    p.add_argument("--run-name", default=None, help="the run's name (default <method>-<category>-<time>)")
    p.add_argument("--resume", action="store_true", help="continue the latest run of this method/category")
    p.add_argument("--checkpoint-every", type=int, default=0, help="checkpoint every K steps (0: at the end only)")
    p.add_argument("--keep-checkpoints", type=int, default=2, help="checkpoints kept per run (the newest)")
    p.add_argument("--max-failures", type=int, default=1, help="worker failures survived via checkpoint resume")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default sqlite:///mlruns/mlflow.db)")
    p.add_argument("--gpus-per-worker", type=float, default=None,
                   help="GPUs each worker asks Ray for (default: auto, 1 when the cluster has or can "
                        "autoscale GPU nodes, else 0 = CPU)")
    p.add_argument("--cpu", action="store_true", help="train on CPU (same as --gpus-per-worker 0)")
    _fpr_arg(p)
    p.set_defaults(func=cmd_train)


def _fpr_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--fpr", type=float, default=0.01,
                   help="false-positive rate on the validation normals the recorded pass/fail threshold is "
                        "chosen for (default 0.01)")


# --- evaluate ---------------------------------------------------------------------------
def cmd_evaluate(args: argparse.Namespace) -> int:
    import mlflow
    import torch

    from .config import score_only_settings
    from .evaluate.scoring import evaluate_to_dir
    from .registry.pyfunc import load_payload_any, model_origin, recorded_category
    from .registry.tracking import default_tracking_uri, preflight
    from .train.checkpoints import method_from_payload

    uri = args.tracking_uri or default_tracking_uri()  # exactly as train resolves it
    if uri.startswith("http") and ":/" in args.model and not Path(args.model).exists():
        preflight(uri)
    mlflow.set_tracking_uri(uri)
    origin = model_origin(args.model, uri)
    print(f"model {args.model}: " + (f"from MLflow run {origin['run_id']}" if origin.get("run_id")
                                     else "no MLflow run recorded with it")
          + (f" ({origin['source']})" if origin.get("source") else ""), flush=True)
    payload = load_payload_any(args.model)
    method = method_from_payload(payload)
    settings = score_only_settings(method.config, args.set or (), args.config)
    if settings:
        method.config = method.config.replace(**settings)
        print(f"scoring with the score-only settings {settings}", flush=True)
    if args.data is None and args.category is None:  # the synthetic default: the model's own category
        args.category = recorded_category(args.model, uri)
    data, category, _ = resolve_data(args)
    device = torch.device("cuda" if torch.cuda.is_available() and not args.cpu else "cpu")
    out = evaluation_dir(args.output, method.name, category)
    # the model's recorded threshold decides (fitted on validation with --fpr when it records none)
    metrics = evaluate_to_dir(method.to(device), args.dataset, data, category, out, device, compile=args.compile,
                              label=args.model, fpr=args.fpr, threshold=payload.get("threshold"),
                              threshold_fpr=payload.get("threshold_fpr"))
    record = {"method": method.name, "dataset": args.dataset, "category": category, **metrics,
              "model": args.model, "mlflow_run_id": origin.get("run_id")}
    (out / "metrics.json").write_text(json.dumps(record, indent=2))
    print_headline(record)
    print(f"metrics and plots written to {out}")
    return 0


def evaluation_dir(output: str | None, method: str, category: str | None) -> Path:
    """--out, refused if it already holds an evaluation (nothing is overwritten), or by default a
    new `outputs/evaluate/<method>-<category>-<time>` folder."""
    from logicad.models.base import ConfigError

    from .train.run_dirs import new_timestamped_folder

    if output is None:
        return new_timestamped_folder(Path("outputs/evaluate"), f"{method}-{category or 'data'}")
    if (Path(output) / "metrics.json").exists():
        raise ConfigError(f"--out {output} already holds an evaluation (metrics.json); choose another folder, "
                          "or leave --out out for a new one under outputs/evaluate")
    return Path(output)


def add_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="re-score a saved model (model.pt, its folder, or a models:/ URI)")
    p.add_argument("--model", required=True, help=MODEL_HELP)
    add_data_args(p)
    p.add_argument("--out", "--output", dest="output", default=None,
                   help="where metrics.json and the plots are written (default: a new folder "
                        "outputs/evaluate/<method>-<category>-<time>; an existing evaluation is never overwritten)")
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else sqlite:///mlruns/mlflow.db)")
    p.add_argument("--cpu", action="store_true", help="score on the CPU even where a GPU is available")
    _score_only_args(p)
    _compile_arg(p)
    _fpr_arg(p)
    p.set_defaults(func=cmd_evaluate)


def _score_only_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="score-only setting to score with (e.g. w_local=3 for GLCF; repeatable); keys that change "
                        "trained weights are refused")
    p.add_argument("--config", default=None,
                   help="YAML of config keys, e.g. a score-only sweep's best_config.yaml (its score-only keys apply)")


def _compile_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="compiled scoring (torch.compile, static batch buckets, checked against eager); "
                        "default: on with CUDA, off on a CPU")


# --- tune -------------------------------------------------------------------------------
def cmd_tune(args: argparse.Namespace) -> int:
    if args.from_run:
        from .tune.score_only import cmd_score_only

        return cmd_score_only(args)
    from logicad.models.base import ConfigError

    from .config import resolve_tune_config
    from .tune.search_space import load_space
    from .train.driver import TrainJob
    from .tune.tuner import SELECTION, TuneJob, run_tune

    if args.num_samples is not None and args.num_samples < 1:
        raise ConfigError(f"--num-samples {args.num_samples}: expected 1 or more trials")
    args.method = method_of(args)
    space = load_space(args.space, args.method)
    if args.objective:
        space.objective = args.objective
    storage, filesystem = _storage(args)
    data, category, _ = resolve_data(args)
    config, pinned = resolve_tune_config(space, _sets(args), args.config, args.preset)
    for key in pinned:
        print(f"note: {key} is set on the command line, so the sweep does not search it", flush=True)
    job = TrainJob(args.method, config, args.dataset, data, category, space.preset, output_dir=args.output,
                   storage_path=storage, tracking_uri=args.tracking_uri, log_every=1000,
                   keep_checkpoints=args.keep_checkpoints, **remote_data(args))
    record = run_tune(TuneJob(job, space, args.num_samples, filesystem, args.resume, args.gpus_per_trial,
                              prune=not args.keep_trial_checkpoints), args.name)
    name = record["sweep"]
    print(f"best trial of {name} (selection: {SELECTION}): {space.metric} {record['best_objective']:.4f} "
          f"({space.objective} objective), params {record['best_params']}")
    print_headline(record)
    print_registration(record)
    print(f"best config written to {Path(record['sweep_dir']) / 'best_config.yaml'} (logicad train --config FILE)")
    from .train.driver import disk_summary

    print("results: " + disk_summary(record.get("written") or {"sweep": record["sweep_dir"],
                                                              "Ray trials": record["ray_run_dir"]},
                                     filesystem) + f"; latest: {Path(args.output) / 'latest'}")
    return 0


def _sets(args: argparse.Namespace) -> list[str]:
    """--set items plus --max-steps as one more."""
    sets = list(args.set or [])
    if args.max_steps is not None:
        sets.append(f"max_steps={args.max_steps}")
    return sets


def _storage(args: argparse.Namespace):
    """(storage path, pyarrow filesystem or None); s3:// is checked before anything runs."""
    if not args.storage.startswith("s3://"):
        return args.storage, None
    from .storage import S3Settings, preflight_s3, ray_storage

    settings = S3Settings.from_env(args.s3_endpoint_url)
    preflight_s3(args.storage, settings)
    return ray_storage(args.storage, settings)


def add_tune(sub) -> None:
    p = sub.add_parser("tune", help="Ray Tune sweep over a method's config keys, tracked in MLflow")
    _method_arg(p)
    add_data_args(p)
    p.add_argument("--space", default=None, help="search-space YAML (default tune_spaces/<method>.yaml)")
    _config_args(p)  # override the space's preset and fixed keys; a searched key set here is not searched
    p.add_argument("--num-samples", type=int, default=None, help="trials (default: the space's budget)")
    p.add_argument("--from-run", default=None, metavar="RUN",
                   help="score-only sweep: reuse RUN's trained model (run id, models:/ URI or model dir) and "
                        "search only the method's score-only keys")
    p.add_argument("--objective", default=None, choices=OBJECTIVES,
                   help="synthetic (leak-free, default) or test (paper-style; leaks the test set)")
    p.add_argument("--storage", default="ray_results", help="local dir or s3://bucket/prefix")
    p.add_argument("--s3-endpoint-url", default=None, help="S3-compatible endpoint (else AWS_ENDPOINT_URL)")
    p.add_argument("--keep-checkpoints", type=int, default=2, help="checkpoints kept per trial while it runs")
    p.add_argument("--keep-trial-checkpoints", action="store_true",
                   help="keep every trial's checkpoints after the sweep (default: only the best trial's final one)")
    p.add_argument("--gpus-per-trial", type=float, default=None,
                   help="GPUs each trial asks Ray for (overrides the space's budget.gpu_per_trial; "
                        "default: auto, 1 when the cluster has or can autoscale GPU nodes)")
    p.add_argument("--name", default=None, help="sweep name (resume uses it)")
    p.add_argument("--register", action="store_true",
                   help="with --from-run: score the best setting on the test split and register it as a new "
                        "version of the model (same weights, the chosen score-only settings)")
    p.add_argument("--resume", action="store_true", help="continue the interrupted sweep of this name")
    p.add_argument("--out", "--output", dest="output", default="outputs/tune",
                   help="output root: each sweep writes <out>/<sweep>/ (best_config.yaml, metrics.json)")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else sqlite:///mlruns/mlflow.db)")
    p.set_defaults(func=cmd_tune)


# --- export -----------------------------------------------------------------------------
def cmd_export(args: argparse.Namespace) -> int:
    import mlflow

    from logicad.data import load_split

    from .export.errors import ExportError
    from .export.onnx_export import check_out, default_out, export_model, summary
    from .registry.pyfunc import load_payload_any, model_origin, recorded_category
    from .registry.tracking import default_tracking_uri, preflight
    from .train.checkpoints import method_from_payload

    if args.out:
        check_out(Path(args.out))  # before any work
    uri = args.tracking_uri or default_tracking_uri()  # exactly as evaluate resolves it
    if uri.startswith("http") and ":/" in args.model and not Path(args.model).exists():
        preflight(uri)
    mlflow.set_tracking_uri(uri)
    origin = model_origin(args.model, uri)
    payload = load_payload_any(args.model)
    method = method_from_payload(payload)
    if args.data is None and args.category is None:  # the synthetic default: the model's own category
        args.category = recorded_category(args.model, uri)
    data, category, _ = resolve_data(args)
    splits = {split: load_split(args.dataset, data, category, split, method.config.image_size)
              for split in ("validation", "test")}
    out = Path(args.out) if args.out else default_out(method.name, category)
    registered = args.model.startswith("models:/")
    print(f"exporting {method.name} ({args.model}" + (f", MLflow run {origin['run_id']}" if origin.get("run_id")
          else "") + f") to ONNX; parity on {sum(map(len, splits.values()))} validation and test images",
          flush=True)
    try:
        report = export_model(method, payload, args.model, category, out, splits, args.opset, args.batch_size)
    except ExportError as exc:
        if registered and exc.report is not None:
            from .export.registry_record import record_export

            record_export(args.model, uri, exc.report, None)
        raise
    print(summary(report))
    if registered:
        from .export.registry_record import record_export

        print(f"parity.json and contract.json logged to the run of {record_export(args.model, uri, report, out)}; "
              "version tagged onnx_parity=pass")
    print(f"exported to {out / 'model.onnx'} (contract.json and parity.json beside it); "
          f"score with: logicad predict --model {out} --images DIR")
    return 0


def add_export(sub) -> None:
    p = sub.add_parser("export", help="export a trained model to ONNX, checked against torch on its validation "
                                      "and test images")
    p.add_argument("--model", required=True, help=MODEL_HELP)
    p.add_argument("--format", default="onnx", choices=("onnx",), help="export format (onnx, the default)")
    p.add_argument("--out", "--output", dest="out", default=None,
                   help="folder to write model.onnx, contract.json and parity.json (must not exist or be empty; "
                        "default: a new outputs/export/<method>-<category>-<UTC time>)")
    add_data_args(p)
    p.add_argument("--opset", type=positive_int, default=18, help="ONNX opset (default 18)")
    p.add_argument("--batch-size", type=positive_int, default=8,
                   help="images per batch in the parity check (default 8)")
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else sqlite:///mlruns/mlflow.db)")
    p.set_defaults(func=cmd_export)


# --- promote / predict -------------------------------------------------------------------
def cmd_promote(args: argparse.Namespace) -> int:
    from .registry.promote import Decision, promote
    from .registry.tracking import default_tracking_uri

    decision = promote(args.tracking_uri or default_tracking_uri(), args.model, args.metric, args.min_delta,
                       args.alias, args.version)
    print(Decision(**decision).line())
    return 0


def add_promote(sub) -> None:
    p = sub.add_parser("promote", help="move the registry alias to the newest version if it is better")
    p.add_argument("--model", required=True, help="registered model name, e.g. logicad-dfsc-parts_box")
    p.add_argument("--metric", default="image_auroc",
                   help="metric recorded in each version's run that decides (higher is better; default image_auroc)")
    p.add_argument("--min-delta", type=float, default=0.0,
                   help="the candidate must beat the alias holder by more than this (default 0.0)")
    p.add_argument("--alias", default="champion", help="the alias that moves (default champion)")
    p.add_argument("--version", default=None, help="candidate version (default: the newest)")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else sqlite:///mlruns/mlflow.db)")
    p.set_defaults(func=cmd_promote)


def cmd_predict(args: argparse.Namespace) -> int:
    from .export.contract import is_exported_model

    from .registry.batch_predict import wants_batch

    if is_exported_model(args.model):
        if wants_batch(args):
            from .export.errors import OnnxModelError

            raise OnnxModelError(f"{args.model}: --ray/--workers/--resume score a torch model (model.pt or "
                                 "models:/...); score an exported model without them")
        return predict_exported(args)
    import mlflow

    from .config import score_only_settings
    from .registry.pyfunc import load_payload_any
    from .registry.predict import predict
    from .registry.tracking import default_tracking_uri
    from .train.checkpoints import method_from_payload

    mlflow.set_tracking_uri(args.tracking_uri or default_tracking_uri())
    payload = load_payload_any(args.model)
    settings = score_only_settings(method_from_payload(payload).config, args.set or (), args.config)
    payload = {**payload, "config": {**payload["config"], **settings}}
    if wants_batch(args):  # Ray Data: shards written as they finish, resumable
        return predict_on_ray(args, payload)
    images = Path(args.images)
    if args.images.startswith("s3://"):
        from .storage import S3Settings, sync_dataset

        images = sync_dataset(args.images, cache_dir() / "s3", S3Settings.from_env(args.s3_endpoint_url))
    scores = predict(payload, images, Path(args.out), args.threshold, args.batch_size, compile=args.compile,
                     skip_unreadable=args.skip_unreadable)
    print(f"scores written to {scores}; heatmap overlays in {Path(args.out) / 'overlays'}")
    return 0


def predict_on_ray(args: argparse.Namespace, payload: dict) -> int:
    """`predict --workers N` (or --ray / --resume): Ray Data actors score shards of the images."""
    from .registry.batch_predict import run_batch_predict

    result = run_batch_predict(payload, args.model, args.images, Path(args.out), workers=args.workers or 1,
                               shard_size=args.shard_size, threshold=args.threshold, batch_size=args.batch_size,
                               skip_unreadable=args.skip_unreadable, overlays=args.overlays, resume=args.resume,
                               compile=args.compile, s3_endpoint_url=args.s3_endpoint_url)
    print(f"scores written to {result.scores}; shards in {Path(args.out) / 'shards'}")
    return 0


def predict_exported(args: argparse.Namespace) -> int:
    """`predict` with a folder written by `logicad export` (or its model.onnx): onnxruntime, no torch."""
    from .export.errors import OnnxModelError
    from .export.onnx_scoring import predict_onnx

    if args.set or args.config or args.compile:
        raise OnnxModelError(f"{args.model}: --set, --config and --compile do not apply to an exported model "
                             "(its settings are fixed in the graph); export again with other settings")
    images = Path(args.images)
    if args.images.startswith("s3://"):
        from .storage import S3Settings, sync_dataset

        images = sync_dataset(args.images, cache_dir() / "s3", S3Settings.from_env(args.s3_endpoint_url))
    scores = predict_onnx(args.model, images, Path(args.out), args.threshold, args.batch_size, args.skip_unreadable)
    print(f"scores written to {scores} (onnxruntime); heatmap overlays in {Path(args.out) / 'overlays'}")
    return 0


def add_predict(sub) -> None:
    p = sub.add_parser("predict", help="score a folder of images with a saved or registered model")
    p.add_argument("--model", required=True,
                   help="models:/NAME@champion, models:/NAME/3, a model.pt path, or a folder written by "
                        "`logicad export` (or its model.onnx: scored by onnxruntime, without torch)")
    p.add_argument("--images", required=True, help="folder (searched recursively) or s3://bucket/prefix")
    p.add_argument("--out", "--output", dest="out", default="outputs/predict",
                   help="where scores.csv and the overlays are written")
    p.add_argument("--threshold", type=float, default=None, help="default: the threshold recorded with the model")
    p.add_argument("--batch-size", type=positive_int, default=16, help="images scored at once (default 16)")
    p.add_argument("--skip-unreadable", action="store_true",
                   help="list images that cannot be decoded in skipped.csv and score the rest (default: stop)")
    p.add_argument("--s3-endpoint-url", default=None, help="S3-compatible endpoint (else AWS_ENDPOINT_URL)")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else sqlite:///mlruns/mlflow.db)")
    _score_only_args(p)
    _compile_arg(p)
    from .registry.batch_predict import add_batch_flags

    add_batch_flags(p)
    p.set_defaults(func=cmd_predict)


def add_distill(sub) -> None:
    from .train.distill import add_distill_teacher

    add_distill_teacher(sub)


# --- fuse -------------------------------------------------------------------------------
def cmd_fuse(args: argparse.Namespace) -> int:
    from logicad.models.base import ConfigError

    from .registry.tracking import default_tracking_uri, preflight
    from .tune.fusion import FusionJob, run_fusion

    if args.num_samples is not None and args.num_samples < 1:
        raise ConfigError(f"--num-samples {args.num_samples}: expected 1 or more trials")
    uri = args.tracking_uri or default_tracking_uri()
    if uri.startswith("http"):
        preflight(uri)
    data, category, _ = resolve_data(args)
    members = [m.strip() for m in args.members.split(",") if m.strip()]
    record = run_fusion(FusionJob(members, args.dataset, data, category, uri, args.space, args.num_samples,
                                  args.objective, args.output, args.storage, args.name, not args.no_register,
                                  args.labelled))
    print(f"best fusion ({record['objective']} objective {record['best_objective']:.4f}, {record['trials']} "
          f"settings, no member retrained): {record['best_params']}")
    for ref, aurocs in record["members"].items():
        print(f"  member {ref}: image_auroc {aurocs['image_auroc']:.3f} (logical "
              f"{aurocs['image_auroc_logical']:.3f}, structural {aurocs['image_auroc_structural']:.3f}) on test")
    print_headline(record)
    if record.get("model_uri"):
        print(f"registered as {record['model_uri']}")
    print(f"results in {record['run_dir']}")
    return 0


def add_fuse(sub) -> None:
    p = sub.add_parser("fuse", help="fuse registered models of one category into one registered model "
                                    "(score-only Ray Tune sweep of the rule and weights)")
    p.add_argument("--members", required=True, metavar="URI,URI,...",
                   help="two or more models: models:/NAME/VERSION, models:/NAME@ALIAS (pinned to its version), "
                        "runs:/ID/model, or model folders")
    add_data_args(p)
    p.add_argument("--space", default=None, help="search-space YAML (default tune_spaces/fusion.yaml)")
    p.add_argument("--num-samples", type=int, default=None, help="settings tried (default: the space's budget)")
    p.add_argument("--objective", default=None, choices=("synthetic", "labelled", "test"),
                   help="synthetic (leak-free, default: validation normals vs synthesised anomalies), labelled "
                        "(validation normals vs --labelled DIR) or test (tunes on the test split; recorded as such)")
    p.add_argument("--labelled", default=None, metavar="DIR",
                   help="labelled anomalies for --objective labelled: DIR/logical/ and/or DIR/structural/ images")
    p.add_argument("--storage", default="ray_results", help="where Ray Tune writes the sweep")
    p.add_argument("--name", default=None, help="the fusion run's name (default fusion-<category>-<time>)")
    p.add_argument("--out", "--output", dest="output", default="outputs/fusion",
                   help="output root: <out>/<category>/<name>/ (metrics.json, fusion.yaml, model/)")
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else sqlite:///mlruns/mlflow.db)")
    p.add_argument("--no-register", action="store_true", help="log the run but register no model version")
    p.set_defaults(func=cmd_fuse)


def add_threshold(sub) -> None:
    from .registry.rethreshold import add_threshold as add_threshold_verb

    add_threshold_verb(sub)


COMMANDS: tuple[Callable, ...] = (add_make_synthetic, add_evaluate_maps, add_train, add_evaluate, add_distill,
                                  add_tune, add_fuse, add_promote, add_predict, add_export, add_threshold)


def build_parser() -> argparse.ArgumentParser:
    from importlib.metadata import PackageNotFoundError, version

    parser = argparse.ArgumentParser(prog="logicad", description=__doc__)
    try:
        release = version("logicad")
    except PackageNotFoundError:  # run from a source tree that was not installed
        release = "unknown"
    parser.add_argument("--version", action="version", version=f"logicad {release}")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)  # before the imports below: --help must not load torch
    try:
        return args.func(args)
    except reported_errors() as exc:  # evaluated only when something was raised: no import otherwise
        print(f"logicad: error: {exc}", file=sys.stderr)
        return 2


def reported_errors() -> tuple[type[Exception], ...]:
    """The errors `main` reports in one line (exit code 2). Imported only once one was raised,
    so a verb that never loads torch (predict with an exported model) does not load it here."""
    from logicad.data.errors import DatasetError
    from logicad.models.base import ConfigError

    from logicad.models.backbones import BackboneWeightsError
    from logicad.models.distill import TeacherFileError

    from .evaluate.thresholds import ThresholdError
    from .export.errors import ExportError, OnnxModelError
    from .train.checkpoints import ModelFileError
    from .storage import StorageError
    from .registry.tracking import TrackingError
    from .train.resources import ResourceRequestError
    from .train.worker import NonFiniteLossError

    return (DatasetError, ConfigError, TrackingError, ModelFileError, TeacherFileError, BackboneWeightsError,
            StorageError, ResourceRequestError, NonFiniteLossError, ExportError, OnnxModelError, ThresholdError)


if __name__ == "__main__":
    sys.exit(main())
