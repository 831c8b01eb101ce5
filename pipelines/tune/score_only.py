"""Score-only sweeps: search the config keys that change no weight, without retraining.

Some keys only change how a trained model turns its network outputs into a map and a
score (GLCF's branch weights W_L, W_G and scale weights K). A method lists them in
`MethodConfig.SCORE_ONLY` and splits scoring into `score_parts` (the networks, run once
per image here) and `maps_from_parts` (cheap arithmetic under the current config). This
sweep loads a trained model once, caches the parts of the objective's images, puts them
in Ray's object store once, and lets Ray Tune score hundreds of settings in minutes;
`training_step` is never called.

The objective is the same as a training sweep's: leak-free by default (validation normals
vs anomalies synthesised from them), `--objective test` only when asked, and recorded.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from logicad.data import load_split
from logicad.models.base import ConfigError, Method

from ..evaluate.metrics import image_aurocs
from ..registry import tracking
from .objective import OBJECTIVE_METRIC, synthetic_objective_set
from .search_space import SearchSpace, load_space, to_tune

RUN_ID = re.compile(r"^[0-9a-f]{32}$")


def resolve_model_ref(ref: str) -> str:
    """A bare MLflow run id becomes that run's logged model (runs:/ID/model); paths and
    models:/ or runs:/ URIs pass through."""
    if RUN_ID.match(ref) and not Path(ref).exists():
        from ..registry.pyfunc import MODEL_ARTIFACT

        return f"runs:/{ref}/{MODEL_ARTIFACT}"
    return ref


def check_score_only(space: SearchSpace, method: Method, path: str) -> None:
    """Every searched (and fixed) key must be score-only for this method (anything else needs
    training), and every value the space can give must fit this trained model (e.g. one scale
    weight per scale it was trained with): refused in one line before any trial starts."""
    allowed = method.config_cls.SCORE_ONLY
    wrong = [k for k in [*space.space, *space.fixed] if k not in allowed]
    if wrong:
        raise ConfigError(
            f"{path}: {wrong} change trained weights, so a score-only sweep cannot search them; "
            f"score-only keys of {method.name}: {', '.join(allowed) or 'none'} (use `logicad tune` without --from-run)")
    base = method.config.replace(**space.fixed)
    for key, dist in space.space.items():
        (kind, values), = dist.items()
        for value in values if kind in ("choice", "grid") else values[:2]:
            try:
                base.replace(**{key: value})
            except ConfigError as exc:
                raise ConfigError(f"{path}: space.{key} value {value!r} does not fit this {method.name} model: "
                                  f"{exc}") from None


#: synthetic anomalies of each kind per validation normal in a score-only sweep: its images are
#: scored once, so four times the trained sweeps' one costs little and steadies the objective
SCORE_ONLY_PER_NORMAL = 4


def objective_set(method: Method, objective: str, dataset: str, root: str, category: str | None, seed: int,
                  per_normal: int = SCORE_ONLY_PER_NORMAL):
    """The images a trial is scored on: the test split, or the validation normals with
    `per_normal` synthesised anomalies of each kind per normal (`synthetic_objective_set`)."""
    size = method.config.image_size
    if objective == "test":
        return load_split(dataset, root, category, "test", size)
    return synthetic_objective_set(method, load_split(dataset, root, category, "validation", size), seed, per_normal)


@torch.no_grad()
def cache_parts(method: Method, images, device: torch.device, batch_size: int = 16) -> tuple[dict, list[str]]:
    """(every image's `score_parts` concatenated on the CPU, the images' kinds)."""
    from torch.utils.data import DataLoader

    method.eval().to(device)
    parts: dict[str, list[torch.Tensor]] = {}
    kinds: list[str] = []
    for batch in DataLoader(images, batch_size=batch_size, shuffle=False):
        with torch.inference_mode():
            for key, value in method.score_parts(batch["image"].to(device)).items():
                parts.setdefault(key, []).append(value.float().cpu())
        kinds.extend(batch["kind"])
    return {k: torch.cat(v) for k, v in parts.items()}, kinds


@torch.no_grad()
def setting_scores(method: Method, params: dict[str, Any], parts: dict[str, torch.Tensor],
                   chunk: int = 32) -> torch.Tensor:
    """Image scores of the cached parts under the config with `params` set (no network runs)."""
    method.config = method.config.replace(**params)
    total = len(next(iter(parts.values())))
    scores = []
    for start in range(0, total, chunk):
        piece = {k: v[start:start + chunk] for k, v in parts.items()}
        scores.append(method.image_scores_from_parts(piece).float())
    return torch.cat(scores)


def score_setting(method: Method, params: dict[str, Any], parts: dict[str, torch.Tensor], kinds: list[str],
                  chunk: int = 32) -> dict[str, float | None]:
    """Image AUROCs of the cached parts under the config with `params` set (no network runs)."""
    return image_aurocs(setting_scores(method, params, parts, chunk).numpy(), kinds)


def _trial(params: dict[str, Any], method: Method, parts: dict[str, torch.Tensor], kinds: list[str]) -> None:
    """Ray Tune function trainable: one setting, one report."""
    import ray.tune

    aurocs = score_setting(method, params, parts, kinds)
    ray.tune.report({OBJECTIVE_METRIC: aurocs["image_auroc"], f"{OBJECTIVE_METRIC}_logical":
                     aurocs["image_auroc_logical"], f"{OBJECTIVE_METRIC}_structural": aurocs["image_auroc_structural"]})


def run_score_only_sweep(method: Method, space: SearchSpace, parts: dict, kinds: list[str], num_samples: int,
                         storage: str, name: str):
    """Ray Tune over the space with the cached parts shared through the object store once."""
    from ray import tune
    from ray.tune import RunConfig, TuneConfig, Tuner

    from .tuner import search_algorithm

    trainable = tune.with_parameters(_trial, method=method.cpu(), parts=parts, kinds=kinds)
    trainable = tune.with_resources(trainable, {"cpu": 1})
    tuner = Tuner(
        trainable,
        param_space=to_tune(space),
        tune_config=TuneConfig(metric=space.metric, mode=space.mode, num_samples=num_samples,
                               search_alg=search_algorithm(space),
                               max_concurrent_trials=space.budget_value("max_concurrent", 0) or None,
                               reuse_actors=True),  # a trial takes ms; a fresh actor, seconds
        run_config=RunConfig(name=name, storage_path=str(Path(storage).absolute()), verbose=0),
    )
    return tuner.fit()


def cmd_score_only(args: argparse.Namespace) -> int:
    """`logicad tune --from-run RUN --space SPACE`: a score-only sweep of RUN's trained model."""
    from ..data_source import resolve_data
    from ..registry.pyfunc import check_store_exists, load_method_any
    from ..train.driver import ensure_ray

    uri = args.tracking_uri or tracking.default_tracking_uri()
    import mlflow

    mlflow.set_tracking_uri(uri)
    ref = resolve_model_ref(args.from_run)
    if ":/" in ref and not Path(ref).exists():
        check_store_exists(ref, uri)
    method = load_method_any(ref)
    space = load_space(args.space, method.name)
    if getattr(args, "method", None) and args.method != method.name:
        raise ConfigError(f"--method {args.method} but {args.from_run} is a {method.name} model")
    check_score_only(space, method, str(args.space))
    objective = args.objective or space.objective
    data, category, _ = resolve_data(args)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    start = time.perf_counter()
    parts, kinds = cache_parts(method, objective_set(method, objective, args.dataset, data, category, 0), device)
    cached = time.perf_counter() - start
    print(f"score-only sweep of {ref}: {len(kinds)} {objective}-objective images, parts cached in {cached:.1f} s "
          f"({sum(v.numel() * 4 for v in parts.values()) / 2**20:.0f} MB); searching {sorted(space.space)}",
          flush=True)
    ensure_ray()
    num_samples = args.num_samples or space.budget_value("num_samples", 64)
    name = args.name or f"score-only-{method.name}-{category or args.dataset}-{time.strftime('%Y%m%d-%H%M%S')}"
    results = run_score_only_sweep(method, space, parts, kinds, num_samples, args.storage, name)
    out, params = _report(args, uri, ref, method, space, objective, results, name, time.perf_counter() - start)
    if getattr(args, "register", False):
        register_setting(method, params, ref, uri, args.dataset, data, category, out, device)
    return 0


def register_setting(method: Method, params: dict[str, Any], ref: str, uri: str, dataset: str, data: str,
                     category: str | None, out: Path, device: torch.device) -> str:
    """The trained model under the chosen score-only settings, scored on the test split and
    registered as a new version of its model (same weights, new settings); the version's URI."""
    import mlflow

    from ..evaluate.scoring import evaluate_to_dir
    from ..registry.pyfunc import log_and_register
    from ..train.checkpoints import MODEL_FILE, save_model
    from ..train.driver import data_identity, keep_one_copy

    method.config = method.config.replace(**params)
    model_dir = out / "model"
    metrics = evaluate_to_dir(method.to(device), dataset, data, category, model_dir, device)
    save_model(model_dir / MODEL_FILE, method.cpu(), {"threshold": metrics.get("threshold"),
                                                      "threshold_fpr": metrics.get("threshold_fpr"),
                                                      "from_model": ref}, lean=True)
    run_id = tracking.start_run(uri, tracking.DEFAULT_EXPERIMENT, f"{out.name}-registered",
                                {"from_model": ref, **{f"setting.{k}": v for k, v in params.items()}},
                                {"logicad.sweep_kind": "score-only", "logicad.from_model": ref})
    tracking.log_results(uri, run_id, {k: v for k, v in metrics.items() if isinstance(v, (int, float))}, model_dir)
    mlflow.set_tracking_uri(uri)
    tags = {**data_identity(dataset, data, category), "threshold": metrics.get("threshold"), "from_model": ref,
            "score_only_settings": str(params)}
    model_uri = log_and_register(run_id, model_dir / MODEL_FILE, tracking.registered_name(method.name, category), tags)
    keep_one_copy(uri, model_uri, model_dir / MODEL_FILE)  # outputs' model.pt: a hard link to the logged one
    tracking.end_run(uri, run_id)
    (out / "metrics.json").write_text(json.dumps({"method": method.name, "dataset": dataset, "category": category,
                                                  **metrics, "model_uri": model_uri, "from_model": ref,
                                                  "settings": params}, indent=2, default=str))
    print(f"registered {model_uri}: {ref} with {params}; test image_auroc {metrics.get('image_auroc')} "
          f"(logical {metrics.get('image_auroc_logical')}, structural {metrics.get('image_auroc_structural')})")
    return model_uri


def _report(args, uri: str, ref: str, method: Method, space: SearchSpace, objective: str, results, name: str,
            seconds: float) -> tuple[Path, dict[str, Any]]:
    """Best setting: printed, written as a full config YAML, logged as one MLflow run."""
    best = results.get_best_result(metric=space.metric, mode=space.mode)
    params = {k: v for k, v in best.config.items() if k in space.space}
    config = method.config.replace(**params).to_dict()
    out = Path(getattr(args, "output", None) or "outputs/tune") / name
    out.mkdir(parents=True, exist_ok=False)
    (out / "best_config.yaml").write_text(yaml.safe_dump(
        {"method": method.name, "from_model": ref, "selection": "best setting on the cached objective images",
         space.metric: float(best.metrics[space.metric]),
         "config": {k: list(v) if isinstance(v, tuple) else v for k, v in config.items()}}, sort_keys=False))
    frame = results.get_dataframe()
    frame.to_csv(out / "trials.csv", index=False)
    value = best.metrics[space.metric]
    run_id = tracking.start_run(uri, tracking.DEFAULT_EXPERIMENT, name,
                                {"from_model": ref, "objective": objective, "trials": len(frame),
                                 **{f"best.{k}": v for k, v in params.items()}},
                                {"logicad.sweep": name, "logicad.sweep_kind": "score-only",
                                 "logicad.objective": objective})
    tracking.log_results(uri, run_id, {"best_objective": value, "seconds": round(seconds, 2)}, out)
    tracking.end_run(uri, run_id)
    print(f"best of {len(frame)} score-only settings ({objective} objective, {space.metric} {value:.4f}, "
          f"{seconds:.1f} s, no retraining): {params}")
    print(f"best config written to {out / 'best_config.yaml'} (logicad evaluate/predict --config FILE scores "
          f"with it; --register registers it as a new model version)")
    return out, params
