"""`logicad train`: check inputs, train on Ray Train (N DDP workers), evaluate, track in MLflow."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from logicad.data import load_defects, scan, check_ground_truth
from logicad.models.backbones import SHIPPED, BackboneWeightsError, check_weights, describe_source
from logicad.models.base import ConfigError, MethodConfig, method_class

from ..registry import tracking
from .checkpoints import MODEL_FILE
from .run_dirs import (existing_names, files_below, human_bytes, latest_with_prefix, link_identical, measure_places,
                       point_latest, refuse_reuse, timestamped)
from .resources import GpuDecision, cluster_gpu_view, decide_gpus
from ..config import flatten
from .nonfinite import guarded_train_loop, raise_if_nonfinite
from .worker import WorkerSpec

RESULT_KEYS = ("image_auroc", "image_auroc_logical", "image_auroc_structural", "pixel_auroc", "spro_0.05",
               "aupro_0.3")


@dataclass
class TrainJob:
    """One training as the CLI (or a sweep) asks for it."""

    method: str
    config: MethodConfig
    dataset: str = "mvtec_loco"
    data_root: str = ""
    category: str | None = None
    preset: str | None = None
    workers: int = 1
    gpus_per_worker: float | None = None  # None: auto (GPUs when the cluster has or can autoscale them)
    output_dir: str = "outputs"
    storage_path: str = "ray_results"
    run_name: str | None = None
    resume: bool = False
    checkpoint_every: int = 0
    max_failures: int = 0
    log_every: int = 10
    tracking_uri: str | None = None
    experiment: str = tracking.DEFAULT_EXPERIMENT
    register: bool = True
    tags: dict[str, str] = field(default_factory=dict)
    fault_at_step: int = 0  # chaos testing: a worker kills itself at this step (first attempt only)
    storage_filesystem: Any = None  # pyarrow filesystem when storage_path is an S3 bucket/prefix
    #: the dataset's s3:// URI (data_root is then the driver's synced copy): every worker syncs it
    #: into its own node cache (`cache_dir`, default each node's LOGICAD_CACHE or ~/.cache/logicad)
    data_uri: str | None = None
    s3_endpoint_url: str | None = None
    cache_dir: str | None = None
    keep_checkpoints: int = 2  # per run (per trial in a sweep)
    compile_step: str = ""  # torch.compile mode of the training step ("" eager)
    #: options of the final evaluation (`evaluate_to_dir`), e.g. {"fpr": 0.01} for the recorded threshold
    eval_options: dict[str, Any] = field(default_factory=dict)


def worker_spec(job: TrainJob, **kw: Any) -> WorkerSpec:
    """What every worker (or trial) gets: the job's method, config and data (with the s3:// URI
    each node syncs from), plus `kw`."""
    return WorkerSpec(method=job.method, config=job.config.to_dict(), dataset=job.dataset,
                      data_root=str(Path(job.data_root).absolute()), category=job.category,
                      log_every=job.log_every, data_uri=job.data_uri, s3_endpoint_url=job.s3_endpoint_url,
                      cache_dir=job.cache_dir, compile_step=job.compile_step,
                      eval_options={**job.eval_options, **kw.pop("eval_options", {})}, **kw)


NON_PATH_WEIGHTS = ("hub", "random", "imagenet", *SHIPPED)


def check_paths(config: MethodConfig) -> None:
    """Config keys that name files or folders (`*_weights`, `*_dir`) must exist when set, and
    every backbone's weights load into its architecture (`MethodConfig.backbones_in_use()`: names,
    shapes, the shipped package installed), so bad weights fail in one line before Ray starts.
    Other weight sources that are not paths ("hub", "random", "imagenet") are left to the method."""
    for key, value in config.to_dict().items():
        if not (key.endswith(("_weights", "_dir")) and isinstance(value, str) and value):
            continue
        if key.endswith("_weights") and value in NON_PATH_WEIGHTS:
            continue
        if not Path(value).exists():
            raise ConfigError(f"config key {key!r}: {value} does not exist; expected a path on this machine")
    for key, arch_key in config.backbones_in_use().items():
        try:
            check_weights(getattr(config, arch_key), getattr(config, key))
        except BackboneWeightsError as exc:
            raise ConfigError(f"config key {key!r}: {exc}") from None


def check_inputs(job: TrainJob) -> None:
    """Every split scanned, the test ground truth read and every image and mask decoded (once per
    dataset fingerprint), so bad data fails in one line before Ray starts."""
    from logicad.data.integrity import verify_decodable

    from ..data_source import cache_dir

    check_paths(job.config)
    samples = [s for split in ("train", "validation") for s in scan(job.dataset, Path(job.data_root), job.category,
                                                                    split)]
    if job.dataset != "folder":
        test = scan(job.dataset, Path(job.data_root), job.category, "test")
        check_ground_truth(test, load_defects(job.dataset, job.data_root, job.category))
        samples += test
    root = Path(job.data_root)
    marker_dir = Path(job.cache_dir) if job.cache_dir else cache_dir()
    decoded = verify_decodable(samples, root, marker_dir / "verified", threads=min(16, (os.cpu_count() or 2) * 2))
    if decoded:
        print(f"decoded all {decoded} images and masks of {root} (done once per dataset version)", flush=True)


def data_identity(dataset: str, root: str | Path, category: str | None) -> dict[str, str]:
    """What a model was evaluated on: dataset, category and a fingerprint of the test files
    (relative paths and sizes), so the registry never compares models scored on other data."""
    split = "train" if dataset == "folder" else "test"
    digest = hashlib.sha1()
    for sample in scan(dataset, Path(root), category, split):
        for path in (sample.path, *sample.mask_paths):
            digest.update(f"{path.relative_to(root)}:{path.stat().st_size};".encode())
    return {"dataset": dataset, "category": category or "", "data_fingerprint": digest.hexdigest()[:16]}


def ensure_ray(num_cpus: int | None = None) -> None:
    """Join a running cluster if RAY_ADDRESS says so, else start a local runtime."""
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")  # else every progress line prints twice
    if os.environ.get("RAY_ADDRESS"):
        ray.init(log_to_driver=True)
        return
    # one machine: no node can be preempted, and Ray Train's preemption watcher (observability
    # only) logs an error-level core_worker line at every run; on a cluster it stays on
    os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
    # the dashboard serves the state API that Ray Train's clean-up polls
    ray.init(num_cpus=num_cpus, include_dashboard=True, dashboard_host="127.0.0.1", log_to_driver=True)


def run_group(job: TrainJob) -> Path:
    """`<output>/<method>/<category>`: where this method's runs on this data live."""
    return Path(job.output_dir) / job.method / (job.category or job.dataset)


def _run_name(job: TrainJob) -> str:
    """The run's name: --run-name, or (with --resume) the latest run of this method/category, or a
    new timestamped one. A taken name is refused unless resuming, so nothing is overwritten."""
    taken = set(storage_run_names(job)) | existing_names(run_group(job))
    prefix = f"{job.method}-{job.category or job.dataset}"
    if job.run_name:
        refuse_reuse(job.run_name, taken, job.resume, "run", "--run-name", f"in {run_group(job)} or "
                     f"{job.storage_path}")
        return job.run_name
    if job.resume:
        previous = latest_with_prefix(prefix, taken)
        if previous:
            return previous
    return timestamped(prefix, taken)


def disk_summary(paths: dict[str, str | None], filesystem=None, tracking_uri: str | None = None) -> str:
    """`what path (size)` for each place (`measure_places`) and what they hold together, e.g.
    `run outputs/... (12.1 MB); Ray checkpoints ... (2 KB + 12.0 MB linked); 12.1 MB in all`."""
    places = measure_places(paths, filesystem, tracking_uri)
    total = human_bytes(sum(p.own or 0 for p in places))
    notes = (["hard links counted once"] if any(p.linked for p in places) else []) + \
        [f"{p.what} not counted" for p in places if p.own is None]
    return "; ".join([*(p.text() for p in places), f"{total} in all" + (f" ({', '.join(notes)})" if notes else "")])


def storage_run_names(job: TrainJob) -> list[str]:
    """Names of the runs under the storage path (local or on the pyarrow filesystem)."""
    if job.storage_filesystem is None:
        storage = Path(job.storage_path)
        return [p.name for p in storage.iterdir()] if storage.is_dir() else []
    from pyarrow import fs

    infos = job.storage_filesystem.get_file_info(fs.FileSelector(job.storage_path, allow_not_found=True))
    return [info.base_name for info in infos if info.type == fs.FileType.Directory]


def resolve_gpus(job: TrainJob) -> GpuDecision:
    """The GPU request per worker, decided (and printed) before any work starts."""
    decision = decide_gpus(job.gpus_per_worker, job.workers, cluster_gpu_view())
    print(decision.line, flush=True)
    return decision


def feature_sources(config: MethodConfig) -> str:
    """Where each timm backbone's weights come from ("tf_efficientnet_lite0: imagenet-lite0 (ImageNet,
    pip ...)"), "; "-joined; "" for a method without one. Printed in the plan, an MLflow param."""
    return "; ".join(f"{getattr(config, arch)}: {describe_source(getattr(config, key))}"
                     for key, arch in config.backbones_in_use().items())


def plan_line(job: TrainJob, gpus: GpuDecision) -> str:
    """What is about to run, before it runs."""
    c = job.config
    device = f"{gpus.per_unit:g} GPU per worker" if gpus.use_gpu else "CPU"
    features = feature_sources(c)
    steps = f"for {c.max_steps} steps" if method_class(job.method).trains else "statistics only (no training)"
    return (f"plan: {job.method} {steps} at {c.image_size} px, batch {c.batch_size} x "
            f"{job.workers} worker(s), precision {c.precision}, on {device}" +
            (f" (preset {job.preset})" if job.preset else " (no preset: the paper's settings)") +
            (f"; backbone weights {features}" if features else ""))


def plan_tags(job: TrainJob, gpus: GpuDecision) -> dict[str, str]:
    """Run tags the first step log reads to project the run's time (tracking.StepLogger)."""
    presets = getattr(job.config, "PRESETS", {}) or {}
    cpu_preset = "cpu" if "cpu" in presets and job.preset != "cpu" else ""
    return dict(zip(tracking.PLAN_TAGS, (str(job.config.max_steps), "gpu" if gpus.use_gpu else "cpu", cpu_preset)))


def _scaling(job: TrainJob, gpus: GpuDecision):
    import ray
    from ray.train import ScalingConfig

    cpus = ray.cluster_resources().get("CPU", 1)
    per_worker = max(1, int(cpus // max(job.workers, 1))) if not gpus.use_gpu else 1
    resources = {"CPU": per_worker, **({"GPU": gpus.per_unit} if gpus.use_gpu else {})}
    return ScalingConfig(num_workers=job.workers, use_gpu=gpus.use_gpu, resources_per_worker=resources)


def fit(job: TrainJob, spec: WorkerSpec, run_name: str, gpus: GpuDecision):
    """Run the Ray Train job; the Result (its checkpoint holds model.pt and metrics.json)."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig
    from ray.train.torch import TorchTrainer

    storage = job.storage_path if job.storage_filesystem else str(Path(job.storage_path).absolute())
    trainer = TorchTrainer(
        guarded_train_loop,
        train_loop_config=spec.to_dict(),
        scaling_config=_scaling(job, gpus),
        run_config=RunConfig(
            name=run_name,
            storage_path=storage,
            storage_filesystem=job.storage_filesystem,
            failure_config=FailureConfig(max_failures=job.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=max(1, job.keep_checkpoints)),
        ),
    )
    return trainer.fit()


def run_train(job: TrainJob) -> dict[str, Any]:
    """Train, evaluate, write `<output>/<method>/<category>/<run>/` (metrics.json, model/), point
    `<output>/latest` at it, log to MLflow."""
    check_inputs(job)
    uri = job.tracking_uri or tracking.default_tracking_uri()
    tracking.preflight(uri)
    run_name = _run_name(job)
    ensure_ray()
    gpus = resolve_gpus(job)
    params = {**flatten("", job.config.to_dict()), "method": job.method, "dataset": job.dataset,
              "category": job.category, "workers": job.workers, "preset": job.preset or "none",
              "backbone_sources": feature_sources(job.config) or "none"}
    plan = plan_tags(job, gpus)
    print(plan_line(job, gpus), flush=True)
    run_id = tracking.start_run(uri, job.experiment, run_name, params,
                                {"preset": job.preset or "none", **plan, **job.tags})
    spec = worker_spec(job, checkpoint_every=job.checkpoint_every, tracking_uri=uri, run_id=run_id,
                       evaluate=job.dataset != "folder", fault_at_step=job.fault_at_step)
    start = time.perf_counter()
    try:
        result = fit(job, spec, run_name, gpus)
        raise_if_nonfinite(result.metrics)
    except BaseException:
        tracking.end_run(uri, run_id, "FAILED")
        raise
    train_seconds = time.perf_counter() - start
    return _finish(job, uri, run_id, run_name, result, train_seconds)


def _finish(job: TrainJob, uri: str, run_id: str, run_name: str, result, train_seconds: float) -> dict[str, Any]:
    """Copy the final checkpoint (lean model, metrics, plots) into the run folder, log the metrics
    and plots to the MLflow run, register the model once, then keep one copy of its bytes."""
    out = run_group(job) / run_name
    model_dir = out / "model"
    if model_dir.exists():  # only a resumed run reaches here with its directory present
        shutil.rmtree(model_dir)
    result.checkpoint.to_directory(str(model_dir))
    metrics = json.loads((model_dir / "metrics.json").read_text()) if (model_dir / "metrics.json").exists() else {}
    record = {"method": job.method, "dataset": job.dataset, "category": job.category,
              "ray_run_dir": f"{job.storage_path.rstrip('/')}/{run_name}",
              **{k: metrics.get(k) for k in RESULT_KEYS}, **metrics, "train_seconds": round(train_seconds, 2),
              "preset": job.preset, "mlflow_run_id": run_id, "run_name": run_name, "run_dir": str(out)}
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(record, indent=2))
    (model_dir / "metrics.json").write_text(json.dumps(record, indent=2))
    tracking.log_results(uri, run_id, record, model_dir)  # metrics and plots; the model is logged once, below
    if job.register:
        import mlflow

        from ..registry.pyfunc import log_and_register

        mlflow.set_tracking_uri(uri)
        name = tracking.registered_name(job.method, job.category)
        tags = {**data_identity(job.dataset, job.data_root, job.category), "threshold": record.get("threshold"),
                **({"threshold_fpr": record["threshold_fpr"]} if record.get("threshold_fpr") is not None else {})}
        record["model_uri"] = log_and_register(run_id, model_dir / MODEL_FILE, name, tags)
        record["registered_model"] = name
    ray_model = _local_checkpoint_model(job, result)
    record["written"] = _written(job, uri, run_id, record, ray_model)
    (out / "metrics.json").write_text(json.dumps(record, indent=2))
    tracking.end_run(uri, run_id)
    point_latest(Path(job.output_dir), out)
    return record


def _local_checkpoint_model(job: TrainJob, result) -> Path | None:
    """The final Ray checkpoint's model file when the Ray storage is this machine's disk."""
    if job.storage_filesystem is not None or result.checkpoint is None:
        return None
    path = Path(result.checkpoint.path) / MODEL_FILE
    return path if path.is_file() else None


def _written(job: TrainJob, uri: str, run_id: str, record: dict[str, Any], ray_model: Path | None) -> dict[str, str]:
    """Every place the run wrote to (for the closing line), after making the copies of the lean
    model on this disk one file (`keep_one_copy`): the run folder's, the final Ray checkpoint's
    and the logged MLflow model's model.pt."""
    run_model = Path(record["run_dir"]) / "model" / MODEL_FILE
    run_artifacts = tracking.run_artifact_location(uri, run_id)
    places = {"run": record["run_dir"], "Ray checkpoints": record["ray_run_dir"],
              "MLflow run artifacts": artifact_place(run_artifacts)}
    logged = keep_one_copy(uri, record.get("model_uri"), run_model, [ray_model] if ray_model else [])
    copies = [ray_model.parent if ray_model else None, tracking.local_folder(run_artifacts)]
    link_results(run_model.parent, [folder for folder in copies if folder is not None])
    if logged:
        places["MLflow model"] = logged
    return places


def keep_one_copy(uri: str, model_uri: str | None, model_file: Path, others: list[Path] = ()) -> str | None:
    """Make `model_file` and `others` hard links to the logged MLflow model's model.pt when that is
    on this disk and byte-identical (else to `model_file`; see run_dirs.link_identical); where
    the logged model lives (folder or URI), None without one."""
    canonical, place = model_file, None
    if model_uri:
        location = tracking.logged_model_location(uri, model_uri)
        place = artifact_place(location)
        folder = tracking.local_folder(location)
        found = sorted(folder.rglob(MODEL_FILE)) if folder is not None else []
        canonical = found[0] if found else model_file
    link_identical(canonical, [p for p in (model_file, *others) if p != canonical and p.is_file()])
    return place


def link_results(model_dir: Path, folders: list[Path]) -> None:
    """The plots and other files of the run's model folder (model.pt aside, see `keep_one_copy`)
    that `folders` (the final Ray checkpoint, the MLflow run's artifacts) hold byte-identical
    under the same name become hard links to the run folder's."""
    for file in files_below(model_dir):
        if file.name != MODEL_FILE:
            name = file.relative_to(model_dir)
            link_identical(file, [folder / name for folder in folders if (folder / name).is_file()])


def artifact_place(location: str) -> str:
    """An artifact location as the closing line names it: the local folder (relative to the
    working directory when below it), else the URI."""
    folder = tracking.local_folder(location)
    if folder is None:
        return location
    return str(folder.relative_to(Path.cwd())) if folder.is_relative_to(Path.cwd()) else str(folder)
