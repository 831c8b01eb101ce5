"""MLflow tracking: one run per training, live step metrics, artifacts, the registered model.

Embedded default: `sqlite:///mlruns/mlflow.db` with artifacts under `mlruns/`;
`--tracking-uri` or `MLFLOW_TRACKING_URI` point at a server instead.
"""

from __future__ import annotations

import os
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

DEFAULT_EXPERIMENT = "logicad"


class TrackingError(RuntimeError):
    """The tracking store cannot be used; the message names the URI."""


def default_tracking_uri() -> str:
    """`MLFLOW_TRACKING_URI`, else sqlite under ./mlruns (absolute, so Ray workers agree)."""
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{Path('mlruns').absolute() / 'mlflow.db'}"


def preflight(uri: str, timeout: float = 5.0) -> None:
    """Fail before training if the store cannot be reached or created."""
    if uri.startswith(("http://", "https://")):
        url = uri.rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                if response.status != 200:
                    raise TrackingError(f"MLflow tracking server {uri} answered {response.status} on /health")
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise TrackingError(f"MLflow tracking server {uri} is unreachable ({reason}); expected a running "
                                "`mlflow server` at that address") from None
    elif uri.startswith("sqlite:///"):
        import logging

        for name in ("mlflow.store.db.utils", "alembic"):  # "Creating initial MLflow database tables..."
            logging.getLogger(name).setLevel(logging.WARNING)
        db = Path(uri.removeprefix("sqlite:///"))
        try:
            db.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise TrackingError(f"MLflow store {uri}: cannot create {db.parent} ({exc.strerror})") from None


def _client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def experiment_id(uri: str, name: str = DEFAULT_EXPERIMENT) -> str:
    """The experiment's id, created (artifacts beside a local sqlite store) if missing."""
    client = _client(uri)
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    location = None
    if uri.startswith("sqlite:///"):
        location = (Path(uri.removeprefix("sqlite:///")).parent / "artifacts").absolute().as_uri()
    try:
        return client.create_experiment(name, artifact_location=location)
    except Exception:  # created concurrently by another process
        return client.get_experiment_by_name(name).experiment_id


def start_run(uri: str, experiment: str, run_name: str, params: dict[str, Any], tags: dict[str, str],
              parent_run_id: str | None = None) -> str:
    """Create a run (nested under `parent_run_id` if given) with params and tags; its id."""
    from mlflow.entities import Param

    client = _client(uri)
    all_tags = {"mlflow.runName": run_name, **tags}
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
    run = client.create_run(experiment_id(uri, experiment), run_name=run_name, tags=all_tags)
    items = [Param(k, str(v)[:6000]) for k, v in params.items()]
    for start in range(0, len(items), 100):
        client.log_batch(run.info.run_id, params=items[start:start + 100])
    return run.info.run_id


#: run tags the driver sets so the first step log can project the run's time (see StepLogger)
PLAN_TAGS = ("logicad.total_steps", "logicad.device", "logicad.cpu_preset")
HOUR = 3600.0


def projection_line(step: int, total: int, steps_per_second: float, device: str, cpu_preset: str) -> str:
    """`[plan] projected ...`; on a CPU, a projection over an hour says so and names what fits."""
    from ..train.progress import format_seconds

    seconds = (total - step) / steps_per_second if steps_per_second > 0 else float("inf")
    text = "?" if seconds == float("inf") else format_seconds(seconds)
    line = f"[plan] projected training time {text} for {total - step} more steps at {steps_per_second:.2f} steps/s"
    if device == "cpu" and seconds > HOUR:
        fits = f"--preset {cpu_preset}" if cpu_preset else f"--max-steps {max(1, int(steps_per_second * HOUR))}"
        line += f"; that is over an hour on CPU: {fits} fits in about an hour (or ask for GPUs)"
    return line


class StepLogger:
    """Logs a training step's losses and throughput into a run (called by rank 0); the first
    call prints the projected training time from the run's plan tags."""

    def __init__(self, uri: str, run_id: str) -> None:
        self.client, self.run_id = _client(uri), run_id
        self.projected = False

    def _project(self, step: int, steps_per_second: float) -> None:
        self.projected = True
        tags = self.client.get_run(self.run_id).data.tags
        if tags.get(PLAN_TAGS[0]) and step > 0:
            print(projection_line(step, int(tags[PLAN_TAGS[0]]), steps_per_second, tags.get(PLAN_TAGS[1], ""),
                                  tags.get(PLAN_TAGS[2], "")), flush=True)

    def __call__(self, step: int, values: dict[str, float], steps_per_second: float) -> None:
        from mlflow.entities import Metric

        if not self.projected:
            self._project(step, steps_per_second)

        now = int(time.time() * 1000)
        metrics = [Metric(f"train/{k}", float(v), now, step) for k, v in values.items()]
        metrics.append(Metric("train/steps_per_second", float(steps_per_second), now, step))
        self.client.log_batch(self.run_id, metrics=metrics)


#: file names `log_results` leaves out of a run's artifacts: the model is logged once, as the
#: run's MLflow model (`pyfunc.log_and_register`), not a second time beside the plots
MODEL_FILES = ("model.pt",)


def log_results(uri: str, run_id: str, metrics: dict[str, Any], artifacts_dir: Path | None = None,
                skip: tuple[str, ...] = MODEL_FILES) -> None:
    """Numeric results-contract metrics (nulls skipped) and the files of `artifacts_dir` (its
    sub-folders kept) except those named in `skip`."""
    from mlflow.entities import Metric

    client = _client(uri)
    now = int(time.time() * 1000)
    values = [Metric(k, float(v), now, 0) for k, v in metrics.items()
              if isinstance(v, (int, float)) and not isinstance(v, bool)]
    client.log_batch(run_id, metrics=values)
    if artifacts_dir is None:
        return
    for path in sorted(Path(artifacts_dir).rglob("*")):
        if path.is_file() and path.name not in skip:
            folder = path.parent.relative_to(artifacts_dir).as_posix()
            client.log_artifact(run_id, str(path), None if folder == "." else folder)


def run_artifact_location(uri: str, run_id: str) -> str:
    """Where the run's artifacts live (file:// URI on a local store, the server's URI otherwise)."""
    return _client(uri).get_run(run_id).info.artifact_uri


def logged_model_location(uri: str, model_uri: str) -> str:
    """Where the files of the model behind `model_uri` (models:/NAME/V or MLflow 3's models:/m-ID)
    live: a file:// URI on a local store, the server's artifact URI otherwise."""
    client = _client(uri)
    reference = model_uri.removeprefix("models:/").strip("/")
    if not (reference.startswith("m-") and "/" not in reference):
        name, _, version = reference.partition("/")
        found = client.get_model_version(name, version)
        source = found.model_id or found.source  # a version's source is the logged model's URI
        if not source.startswith(("models:/", "m-")):
            return source  # a version registered from a plain artifact location
        reference = source.removeprefix("models:/").strip("/")
    return client.get_logged_model(reference).artifact_location


def local_folder(location: str) -> Path | None:
    """The folder of an artifact location on this machine's disk (file:// URI or plain path);
    None when it is on a server or in a bucket."""
    from urllib.parse import unquote, urlparse

    parsed = urlparse(location)
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    if parsed.scheme == "" or len(parsed.scheme) == 1:  # a plain path (or a Windows drive letter)
        return Path(location)
    return None


def artifact_bytes(uri: str, location: str) -> int:
    """Total size of the files under a (remote) artifact location, listed through MLflow."""
    import mlflow.artifacts

    total, folders = 0, [None]
    while folders:
        folder = folders.pop()
        for info in mlflow.artifacts.list_artifacts(artifact_uri=location, artifact_path=folder,
                                                    tracking_uri=uri):
            if info.is_dir:
                folders.append(info.path)
            else:
                total += info.file_size or 0
    return total


def end_run(uri: str, run_id: str, status: str = "FINISHED") -> None:
    _client(uri).set_terminated(run_id, status=status)


def find_or_start_run(uri: str, experiment: str, run_name: str, params: dict[str, Any],
                      tags: dict[str, str]) -> str:
    """The run tagged `logicad.sweep` = run_name (a resumed sweep), else a new one."""
    runs = _client(uri).search_runs([experiment_id(uri, experiment)],
                                    filter_string=f"tags.`logicad.sweep` = '{run_name}'", max_results=1)
    if runs:
        _client(uri).update_run(runs[0].info.run_id, status="RUNNING")
        return runs[0].info.run_id
    return start_run(uri, experiment, run_name, params, tags)


def _children(uri: str, parent_run_id: str, extra: str = ""):
    client = _client(uri)
    experiment = client.get_run(parent_run_id).info.experiment_id
    query = f"tags.`mlflow.parentRunId` = '{parent_run_id}'" + (f" and {extra}" if extra else "")
    return client.search_runs([experiment], filter_string=query, max_results=1000)


def trial_run_id(tracking_uri: str, parent_run_id: str, trial_path: str | None = None,
                 trial_id: str | None = None) -> str | None:
    """The child run of a sweep's trial, found by its trial id or its storage path."""
    for run in _children(tracking_uri, parent_run_id):
        tags = run.data.tags
        if trial_id is not None and tags.get("logicad.trial_id") == trial_id:
            return run.info.run_id
        if trial_path is not None and str(trial_path).rstrip("/").endswith(
                tags.get("logicad.trial_path", "\0").rstrip("/").split("/")[-1]):
            return run.info.run_id
    return None


def end_orphan_children(uri: str, parent_run_id: str) -> None:
    """Trials that ASHA stopped never report completion: close their runs as KILLED."""
    for run in _children(uri, parent_run_id, "attributes.status = 'RUNNING'"):
        end_run(uri, run.info.run_id, "KILLED")


def registered_name(method: str, category: str | None) -> str:
    return f"logicad-{method}-{category or 'default'}"
