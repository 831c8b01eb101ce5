"""`logicad tune`: a Ray Tune sweep over a method's config keys, tracked in MLflow.

Every trial runs the same loop as `logicad train` (`worker.tune_trial`) and reports the
leak-free objective every `report_every` steps with a checkpoint, so ASHA can stop weak
trials early and an interrupted sweep resumes (`--resume`, `Tuner.restore`). MLflow
gets one parent run for the sweep and one nested child run per trial; the best trial
is scored on the test split, its model registered, its config written as YAML that
`logicad train --config` accepts.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..registry import tracking
from ..train.checkpoints import MODEL_FILE, load_model, save_lean_copy
from ..config import flatten
from .search_space import SearchSpace, to_tune
from ..train.driver import (TrainJob, artifact_place, storage_run_names, check_inputs, data_identity, ensure_ray,
                            worker_spec)
from ..train.run_dirs import existing_names, latest_with_prefix, point_latest, refuse_reuse, timestamped
from ..train.resources import GpuDecision, cluster_gpu_view, decide_gpus
from .trial_runs import MlflowTrialRuns
from ..train.worker import WorkerSpec, tune_trial


#: How the best trial is chosen, everywhere (printout, best_config.yaml, registered version's
#: tags): each trial's LAST report, i.e. the objective of the model the trial ended with (the
#: final checkpoint, which is the one registered). ASHA-stopped trials count with their last rung.
SELECTION = "each trial's last report"
SCOPE = "last"


@dataclass
class TuneJob:
    job: TrainJob  # data, storage, tracking; its config is the base every trial starts from
    space: SearchSpace
    num_samples: int | None = None
    storage_filesystem: Any = None  # pyarrow filesystem for s3:// storage
    resume: bool = False
    gpus_per_trial: float | None = None  # --gpus-per-trial; None: the space's budget, else auto
    prune: bool = True  # after the sweep keep only the best trial's final checkpoint


def resolve_trial_gpus(tj: TuneJob) -> GpuDecision:
    """GPUs per trial: --gpus-per-trial, else the space's `budget.gpu_per_trial` (a number), else
    auto (GPUs when the cluster has or can autoscale them); printed before any trial starts."""
    requested = tj.gpus_per_trial
    if requested is None:
        budget = tj.space.budget_value("gpu_per_trial", "auto")
        requested = None if budget in (None, "auto") else float(budget)
    decision = decide_gpus(requested, 1, cluster_gpu_view(), unit="trial", flag="--gpus-per-trial")
    print(decision.line, flush=True)
    return decision


def _scheduler(space: SearchSpace, max_reports: int):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    options = dict(space.scheduler)
    if options.pop("type", "asha") == "fifo":
        return FIFOScheduler()
    return ASHAScheduler(time_attr="training_iteration", max_t=max_reports,
                         grace_period=int(options.get("grace_period", 1)),
                         reduction_factor=float(options.get("reduction_factor", 2)))


def search_algorithm(space: SearchSpace):
    """The space's search algorithm for Ray Tune: None (random) or Optuna TPE, concurrency-limited."""
    from ray.tune.search import ConcurrencyLimiter

    if space.search.get("algorithm", "random") != "optuna":
        return None
    from ray.tune.search.optuna import OptunaSearch

    return ConcurrencyLimiter(OptunaSearch(seed=int(space.search.get("seed", 0))),
                              max_concurrent=int(space.budget_value("max_concurrent", 2)))


def _trainable(space: SearchSpace, gpus: GpuDecision, spec: WorkerSpec):
    """The trial function with the shared spec bound through the object store: a trial's config
    is its sampled keys alone, so Ray's progress lines ("Current best trial ... params=") show
    what the trial tried, not the base config."""
    from ray import tune

    resources = {"cpu": float(space.budget_value("cpu_per_trial", 1)), "gpu": gpus.per_unit}
    return tune.with_resources(tune.with_parameters(tune_trial, spec=spec.to_dict()), resources)


def build_tuner(tj: TuneJob, spec: WorkerSpec, name: str, callbacks: list, gpus: GpuDecision):
    """A new Tuner, or the interrupted one restored from its storage."""
    from ray import tune
    from ray.tune import RunConfig, TuneConfig

    space, job = tj.space, tj.job
    storage = job.storage_path if tj.storage_filesystem else str(Path(job.storage_path).absolute())
    keep = tune.CheckpointConfig(num_to_keep=max(1, job.keep_checkpoints))
    run_config = RunConfig(name=name, storage_path=storage, storage_filesystem=tj.storage_filesystem,
                           callbacks=callbacks, checkpoint_config=keep)
    if tj.resume:
        path = f"{storage.rstrip('/')}/{name}"
        return tune.Tuner.restore(path, trainable=_trainable(space, gpus, spec), resume_unfinished=True,
                                  resume_errored=True, storage_filesystem=tj.storage_filesystem)
    max_reports = job.config.max_steps // max(spec.checkpoint_every, 1) + 1
    tune_config = TuneConfig(metric=space.metric, mode=space.mode, scheduler=_scheduler(space, max_reports),
                             search_alg=search_algorithm(space), num_samples=tj.num_samples or space.budget_value(
                                 "num_samples", 8), max_concurrent_trials=int(space.budget_value("max_concurrent", 2)))
    return tune.Tuner(_trainable(space, gpus, spec), param_space={"params": to_tune(space)},
                      tune_config=tune_config, run_config=run_config)


def sweep_name(tj: TuneJob, requested: str | None) -> str:
    """--name, or (with --resume) the latest sweep of this method/category, or a new timestamped
    name; a taken name is refused unless resuming, so no sweep's results are overwritten."""
    job = tj.job
    taken = set(storage_run_names(job)) | existing_names(Path(job.output_dir))
    if requested:
        refuse_reuse(requested, taken, tj.resume, "sweep", "--name", f"in {job.output_dir} or {job.storage_path}")
        return requested
    prefix = f"sweep-{job.method}-{job.category or job.dataset}"
    previous = latest_with_prefix(prefix, taken) if tj.resume else None
    return previous or timestamped(prefix, taken)


def run_tune(tj: TuneJob, name: str | None = None) -> dict[str, Any]:
    """Run (or resume) the sweep `name` (default: a new timestamped one); the best trial's record."""
    job, space = tj.job, tj.space
    check_inputs(job)
    uri = job.tracking_uri or tracking.default_tracking_uri()
    tracking.preflight(uri)
    name = sweep_name(tj, name)
    ensure_ray()
    gpus = resolve_trial_gpus(tj)
    parent = tracking.find_or_start_run(uri, job.experiment, name, {
        **flatten("space", space.space), **flatten("fixed", space.fixed), "method": job.method,
        "objective": space.objective, "metric": space.metric, "category": job.category, "preset": space.preset},
        {"logicad.sweep": name, "objective": space.objective})
    spec = worker_spec(job, checkpoint_every=int(space.budget_value("report_every", 50)), evaluate=False,
                       objective=space.objective)
    trial_runs = MlflowTrialRuns(uri, job.experiment, parent, job.config.max_steps)
    results = build_tuner(tj, spec, name, [trial_runs], gpus).fit()
    tracking.end_orphan_children(uri, parent)
    report_errors(results)
    best = best_result(results, space)
    record = _finish(tj, uri, parent, best, name)
    if tj.prune:
        removed = prune_checkpoints(results, best, tj.storage_filesystem)
        print(f"kept only the best trial's final checkpoint ({removed} others removed; "
              "--keep-trial-checkpoints keeps them)", flush=True)
    storage = job.storage_path if tj.storage_filesystem else str(Path(job.storage_path).absolute())
    record["ray_run_dir"] = f"{storage.rstrip('/')}/{name}"
    record["written"] = {**record["written"], "Ray trials": record["ray_run_dir"]}
    return record


def prune_checkpoints(results, best, filesystem=None) -> int:
    """Delete every checkpoint of the sweep but the best trial's final one; how many went."""
    from pyarrow import fs

    filesystem = filesystem or fs.LocalFileSystem()
    keep = best.checkpoint.path.rstrip("/") if best.checkpoint else None
    removed = 0
    for result in results:
        infos = filesystem.get_file_info(fs.FileSelector(result.path, allow_not_found=True))
        for info in infos:
            if info.type == fs.FileType.Directory and info.base_name.startswith("checkpoint_") and \
                    info.path.rstrip("/") != keep:
                filesystem.delete_dir(info.path)
                removed += 1
    return removed


def report_errors(results) -> None:
    """One line per errored trial (e.g. a non-finite loss); the sweep goes on without it."""
    for result in results:
        if result.error is not None:
            message = str(result.error).strip().splitlines()
            last = next((line for line in reversed(message) if line.strip()), type(result.error).__name__)
            print(f"trial {Path(result.path).name} errored: {last.strip()}", flush=True)


def best_result(results, space: SearchSpace):
    """The best trial by SELECTION; ConfigError when no trial reported the metric."""
    from logicad.models.base import ConfigError

    try:
        return results.get_best_result(metric=space.metric, mode=space.mode, scope=SCOPE, filter_nan_and_inf=True)
    except RuntimeError:
        raise ConfigError(f"no trial reported {space.metric!r} ({len(results.errors)} of {len(results)} "
                          "trials errored; see the lines above)") from None


def best_config(tj: TuneJob, params: dict[str, Any]) -> dict[str, Any]:
    """The whole config of the best trial (base + sampled keys)."""
    return tj.job.config.replace(**params).to_dict()


def best_config_text(method: str, sweep: str, metric: str, value: Any, config: dict[str, Any]) -> str:
    """best_config.yaml: the method, the sweep, how the trial was chosen, its objective and its whole
    config, headed by a note that max_steps is the sweep's per-trial budget (`logicad train --config
    FILE --max-steps N` trains longer)."""
    note = (f"# logicad train --config this file (the method is read from it). max_steps {config.get('max_steps')} "
            f"is the sweep's budget per trial;\n# pass --max-steps N for a longer run.\n")
    body = {"method": method, "sweep": sweep, "selection": SELECTION, metric: value,
            "config": {k: list(v) if isinstance(v, tuple) else v for k, v in config.items()}}
    return note + yaml.safe_dump(body, sort_keys=False)


def _finish(tj: TuneJob, uri: str, parent: str, best, name: str) -> dict[str, Any]:
    """Score the best trial on the test split, register its model, write the best config."""
    from ..evaluate.scoring import evaluate_to_dir
    from ..registry.pyfunc import log_and_register

    import mlflow
    import torch

    job = tj.job
    out = Path(job.output_dir) / name
    out.mkdir(parents=True, exist_ok=True)
    config = best_config(tj, best.config["params"])
    (out / "best_config.yaml").write_text(best_config_text(job.method, name, tj.space.metric,
                                                           best.metrics.get(tj.space.metric), config))
    with tempfile.TemporaryDirectory() as tmp:
        best.checkpoint.to_directory(tmp)
        method = load_model(Path(tmp) / MODEL_FILE)
        metrics = evaluate_to_dir(method, job.dataset, job.data_root, job.category, Path(tmp), torch.device("cpu"))
        # the registered file is lean (no optimizer state); the kept Ray checkpoint is the resume copy
        save_lean_copy(Path(tmp) / MODEL_FILE, Path(tmp) / MODEL_FILE, threshold=metrics["threshold"],
                       threshold_fpr=metrics.get("threshold_fpr"))
        record = {"method": job.method, "dataset": job.dataset, "category": job.category, **metrics,
                  "objective": tj.space.objective, "best_objective": best.metrics.get(tj.space.metric),
                  "best_params": best.config["params"], "sweep": name, "selection": SELECTION}
        (Path(tmp) / "metrics.json").write_text(json.dumps(record, indent=2, default=str))
        child = tracking.trial_run_id(uri, parent, best.path)
        tracking.log_results(uri, child or parent, {**metrics, "best_objective": record["best_objective"]}, Path(tmp))
        mlflow.set_tracking_uri(uri)
        if job.register:
            tags = {**data_identity(job.dataset, job.data_root, job.category), "threshold": metrics["threshold"],
                    "objective": tj.space.objective, "best_objective": record["best_objective"],
                    "selection": SELECTION, "sweep": name}
            record["model_uri"] = log_and_register(child or parent, Path(tmp) / MODEL_FILE,
                                                   tracking.registered_name(job.method, job.category), tags)
        record["written"] = {"sweep": str(out), "MLflow run artifacts": artifact_place(
            tracking.run_artifact_location(uri, child or parent))}
        if record.get("model_uri"):
            record["written"]["MLflow model"] = artifact_place(tracking.logged_model_location(uri, record["model_uri"]))
    tracking.log_results(uri, parent, {"best_objective": record["best_objective"]}, None)
    _client_log_artifact(uri, parent, out / "best_config.yaml")
    record.update(sweep_dir=str(out), mlflow_run_id=parent)
    (out / "metrics.json").write_text(json.dumps(record, indent=2, default=str))
    tracking.end_run(uri, parent)
    point_latest(Path(job.output_dir), out)
    return record


def _client_log_artifact(uri: str, run_id: str, path: Path) -> None:
    from mlflow.tracking import MlflowClient

    MlflowClient(uri).log_artifact(run_id, str(path))
