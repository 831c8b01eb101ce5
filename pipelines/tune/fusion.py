"""`logicad fuse`: registered models of one category fused into one registered model.

1. Every member reference is pinned to an exact version (`models:/NAME@champion` ->
   `models:/NAME/3`) and loaded; one that cannot be loaded, or that was evaluated on another
   category, fails in one line naming it, before any scoring.
2. The fusion (`logicad.models.fusion`) copies the members' weights and statistics, and fits
   each member's normalisation on the validation normals.
3. A score-only Ray Tune sweep (`score_only.run_score_only_sweep`) searches the rule, the
   normalisation and the member weights on the members' cached outputs: every member scores
   the objective images once; trials only combine them. The objective is leak-free by default
   (validation normals vs anomalies synthesised from them); `--objective labelled --labelled DIR`
   scores validation normals vs a user's few labelled anomalies (DIR/logical/, DIR/structural/);
   `--objective test` reads the test split. The objective is recorded with the model.
4. The best fusion is evaluated on the test split, saved, logged to MLflow with each member's
   test AUROCs beside its own, and registered as `logicad-fusion-<category>`.
"""

from __future__ import annotations

import itertools
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from logicad.data import AnomalyDataset, load_split, scan
from logicad.data.errors import DatasetError
from logicad.data.layouts import Sample, images_below
from logicad.models.base import ConfigError, Method
from logicad.models.fusion import Fusion

from ..evaluate.metrics import bootstrap_aurocs, image_aurocs
from ..evaluate.scoring import evaluate_to_dir
from ..registry import tracking
from ..train.checkpoints import MODEL_FILE, ModelFileError, save_model
from .objective import OBJECTIVE_METRIC
from .score_only import cache_parts, check_score_only, objective_set, run_score_only_sweep, setting_scores
from .search_space import SPACES_DIR, SearchSpace, load_space

DEFAULT_SPACE = SPACES_DIR / "fusion.yaml"
#: per-member weight levels of the default weights grid
WEIGHT_LEVELS = (0.0, 0.5, 1.0)


@dataclass
class FusionJob:
    members: list[str]
    dataset: str
    data_root: str
    category: str | None
    tracking_uri: str
    space: str | None = None
    num_samples: int | None = None
    objective: str | None = None
    output_dir: str = "outputs/fusion"
    storage_path: str = "ray_results"
    name: str | None = None
    register: bool = True
    #: folder of labelled anomalies (`logical/`, `structural/`) for objective "labelled"
    labelled: str | None = None


# --- members -----------------------------------------------------------------------------
def pin(ref: str, uri: str) -> str:
    """`models:/NAME@ALIAS`, `models:/NAME` and `models:/NAME/latest` -> `models:/NAME/VERSION`;
    run URIs and files pass through (a fusion copies the weights, so they are pinned by value)."""
    if not ref.startswith("models:/"):
        return ref
    from ..registry.pyfunc import registered_version

    try:
        version = registered_version(ref, uri, default="latest")
    except Exception as exc:  # RestException, MlflowException, ValueError of an empty max
        raise ModelFileError(f"fusion member {ref}: not found in the registry at {uri} "
                             f"({exc.__class__.__name__})") from None
    return f"models:/{version.name}/{version.version}"


def load_members(refs: list[str], uri: str, category: str | None) -> list[tuple[str, Method]]:
    """(pinned ref, method) per member; one line naming the member that cannot be used."""
    from ..registry.pyfunc import check_store_exists, load_method_any, recorded_category

    if len(refs) < 2:
        raise ConfigError(f"--members: a fusion needs two members or more, got {refs}")
    members = []
    for ref in refs:
        pinned = pin(ref, uri)
        try:
            if ":/" in pinned and not Path(pinned).exists():
                check_store_exists(pinned, uri)
            method = load_method_any(pinned)
        except ModelFileError as exc:
            raise ModelFileError(f"fusion member {ref}: {exc}") from None
        trained_on = recorded_category(pinned, uri)
        if category and trained_on and trained_on != category:
            raise ConfigError(f"fusion member {ref} was evaluated on category {trained_on!r}, not {category!r}; "
                              "a fusion combines models of one category")
        members.append((pinned, method))
    return members


# --- the objective ------------------------------------------------------------------------
FUSION_OBJECTIVES = ("synthetic", "labelled", "test")


def labelled_set(job: FusionJob, size: int) -> AnomalyDataset:
    """Validation normals + the user's labelled anomalies, their kind from their folder."""
    root = Path(job.labelled or "")
    samples = list(scan(job.dataset, Path(job.data_root), job.category, "validation"))
    normals = len(samples)
    for kind in ("logical", "structural"):
        for name in (kind, f"{kind}_anomalies"):
            if (root / name).is_dir():
                samples += [Sample(path, 1, kind, name) for path in images_below(root / name)]
    if len(samples) == normals:
        raise DatasetError(f"{root}: no labelled anomalies; expected a folder with logical/ and/or structural/ "
                           "(or logical_anomalies/, structural_anomalies/) subfolders of images")
    return AnomalyDataset(samples, size)


def objective_images(job: FusionJob, fusion: Fusion, objective: str):
    """The images every setting is scored on (never the test split unless `objective` is test)."""
    if objective == "labelled":
        return labelled_set(job, fusion.config.image_size)
    return objective_set(fusion, objective, job.dataset, job.data_root, job.category, 0)


# --- the sweep ---------------------------------------------------------------------------
def weight_grid(count: int, levels: tuple[float, ...] = WEIGHT_LEVELS) -> list[str]:
    """Every weight vector over `levels` for `count` members, not all zero, as "w0,w1,..."."""
    return [",".join(f"{w:g}" for w in ws) for ws in itertools.product(levels, repeat=count) if any(ws)]


def fusion_space(path: str | None, fusion: Fusion) -> SearchSpace:
    """The space file (default tune_spaces/fusion.yaml), with the member-weight grid added
    when the file does not search `weights` itself; score-only keys only."""
    space = load_space(path or DEFAULT_SPACE, "fusion")
    if "weights" not in space.space and "weights" not in space.fixed:
        space.space["weights"] = {"choice": weight_grid(len(fusion.members))}
    check_score_only(space, fusion, str(path or DEFAULT_SPACE))  # also: fixed values fit these members
    return space


#: rule preference among settings the objective cannot tell apart
RULE_ORDER = {"sum": 0, "rank": 1, "max": 2}


def choose_setting(frame, space: SearchSpace, tolerance: float = 1e-6) -> tuple[dict[str, Any], float]:
    """(searched keys of the best trial, its objective). Among trials the objective cannot tell
    apart (within `tolerance`: few validation normals often put many settings at 1.0), keep every
    member rather than dropping one on no evidence: the most members with non-zero weight, then
    the most even weights, then sum before rank before max, then the first tried."""
    scores = frame[space.metric]
    best = scores.max() if space.mode == "max" else scores.min()
    ties = frame[(scores - best).abs() <= tolerance]

    def preference(row) -> tuple:
        weights = [float(w) for w in str(row.get("config/weights", "1")).split(",")]
        used = [w for w in weights if w > 0]
        return (-len(used), max(used) - min(used), RULE_ORDER.get(row.get("config/rule"), 3))

    chosen = min((row for _, row in ties.iterrows()), key=preference)
    params = {k: chosen[f"config/{k}"] for k in space.space}
    return {k: v.item() if hasattr(v, "item") else v for k, v in params.items()}, float(chosen[space.metric])


def best_member(on_objective: dict[str, dict[str, Any]]) -> int | None:
    """Index of the member with the highest headline AUROC on the objective; None if any lacks one."""
    headline = [aurocs["image_auroc"] for aurocs in on_objective.values()]
    return None if None in headline else max(range(len(headline)), key=headline.__getitem__)


def no_worse_than_a_member(params: dict[str, Any], best_value: float, on_objective: dict[str, dict[str, Any]],
                           space: SearchSpace) -> tuple[dict[str, Any], float]:
    """The chosen setting, or the member the objective ranks first alone where no trial reached it:
    a random search need not try each member alone. One-hot weights under the sum rule (an affine map
    of the member's score under either norm) rank images as that member does, so its AUROCs are the
    ones in `on_objective`. Only where the sweep searches `weights` and maximises the headline
    objective (a space tuned on `objective_logical` is compared on that, not here)."""
    searched = "weights" in space.space and space.metric == OBJECTIVE_METRIC and space.mode == "max"
    best = best_member(on_objective)
    refs = list(on_objective)
    if not searched or best is None or on_objective[refs[best]]["image_auroc"] <= best_value:
        return params, best_value
    value = on_objective[refs[best]]["image_auroc"]
    print(f"  no trial reached {refs[best]} alone on the objective ({value:.3f} against {best_value:.3f}): "
          "the fusion keeps that member alone", flush=True)
    alone = {"weights": ",".join("1" if i == best else "0" for i in range(len(refs)))}
    if "rule" in space.space:
        alone["rule"] = "sum"
    return {**params, **alone}, value


def member_aurocs(fusion: Fusion, parts: dict[str, torch.Tensor], kinds: list[str]) -> list[dict[str, Any]]:
    """Each member's own image AUROCs from cached parts."""
    return [image_aurocs(parts[f"score_{i}"].numpy(), kinds) for i in range(len(fusion.members))]


# --- the whole command ---------------------------------------------------------------------
def run_fusion(job: FusionJob) -> dict[str, Any]:
    """Pin and load members, fit, sweep, evaluate, save, log and register; the run's record."""
    members = load_members(job.members, job.tracking_uri, job.category)
    fusion = Fusion.from_members(members)
    space = fusion_space(job.space, fusion)
    objective = job.objective or space.objective
    if objective not in FUSION_OBJECTIVES or (objective == "labelled") != bool(job.labelled):
        raise ConfigError(f"objective {objective!r}: expected one of {list(FUSION_OBJECTIVES)}, and --labelled DIR "
                          "exactly when it is 'labelled'")
    images = objective_images(job, fusion, objective)  # bad labelled folders fail before any scoring
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    fusion.to(device)
    start = time.perf_counter()
    validation = load_split(job.dataset, job.data_root, job.category, "validation", fusion.config.image_size)
    fusion.finalize(torch.utils.data.DataLoader(validation, batch_size=fusion.config.batch_size))
    parts, kinds = cache_parts(fusion, images, device)
    families = getattr(images, "structural_families", None)  # of a synthetic objective
    print(f"fusion of {len(members)} members ({', '.join(r for r, _ in members)}): normalisation fitted on "
          f"{len(validation)} validation normals, {len(kinds)} {objective}-objective images cached in "
          f"{time.perf_counter() - start:.1f} s" + (f"; structural anomaly families {', '.join(families)}"
                                                    if families else ""), flush=True)
    on_objective = dict(zip((r for r, _ in members), member_aurocs(fusion, parts, kinds)))
    for ref, aurocs in on_objective.items():
        print(f"  {ref} on the {objective} objective: {_aurocs_line(aurocs)}", flush=True)
    from ..train.driver import ensure_ray

    ensure_ray()
    stamp = time.strftime('%Y%m%d-%H%M%S')
    name = job.name or f"fusion-{job.category or job.dataset}-{stamp}"
    num_samples = job.num_samples or space.budget_value("num_samples", 200)
    results = run_score_only_sweep(fusion, space, parts, kinds, num_samples, job.storage_path, name)
    frame = results.get_dataframe()
    params, best_value = choose_setting(frame, space)
    params, best_value = no_worse_than_a_member(params, best_value, on_objective, space)
    fusion.config = fusion.config.replace(**{**space.fixed, **params})
    fused = setting_scores(fusion, {}, parts).numpy()  # the chosen setting's scores of the objective images
    fused_aurocs = image_aurocs(fused, kinds)
    evidence = objective_evidence(fused, fused_aurocs, parts, kinds, on_objective, len(validation))
    sweep = {"objective": objective, "objective_structural_families": families,
             "best_objective": best_value, "best_params": params, "trials": len(frame),
             "seconds": round(time.perf_counter() - start, 2), "members_on_objective": on_objective,
             "fusion_on_objective": fused_aurocs, "objective_evidence": evidence}
    print(f"  the chosen fusion on the {objective} objective: {_aurocs_line(sweep['fusion_on_objective'])}", flush=True)
    if evidence:
        print(f"  {_evidence_line(evidence)}", flush=True)
    return _evaluate_and_save(job, fusion, members, name, sweep)


def objective_evidence(fused, fused_aurocs: dict[str, Any], parts: dict[str, torch.Tensor], kinds: list[str],
                       on_objective: dict[str, dict[str, Any]], normals: int) -> dict[str, Any]:
    """How sure the objective is that the chosen fusion (its image scores `fused` and their AUROCs)
    beats its best member there: the headline gain over that member with its paired bootstrap
    standard error (`bootstrap_aurocs`), and the fusion's own standard error; {} where the objective
    has no headline AUROC. The chosen setting won a search of many noisy trials, so the gain is if
    anything optimistic."""
    best = best_member(on_objective)
    if fused_aurocs["image_auroc"] is None or best is None:
        return {}
    ref = list(on_objective)[best]
    draws = bootstrap_aurocs([fused, parts[f"score_{best}"].numpy()], kinds)
    return {"best_member": ref, "gain_over_best_member": fused_aurocs["image_auroc"] - on_objective[ref]["image_auroc"],
            "gain_se": float((draws[:, 0] - draws[:, 1]).std(ddof=1)), "fusion_se": float(draws[:, 0].std(ddof=1)),
            "images": len(kinds), "validation_normals": normals}


def _evidence_line(evidence: dict[str, Any]) -> str:
    gain, se = evidence["gain_over_best_member"], evidence["gain_se"]
    line = (f"{gain:+.3f} +- {se:.3f} over the best member there ({evidence['best_member']}), and the fusion's own "
            f"AUROC +- {evidence['fusion_se']:.3f}: bootstrap standard errors over the {evidence['images']} objective "
            f"images ({evidence['validation_normals']} validation normals)")
    if abs(gain) < 2 * se:
        line += "; within two standard errors, so the objective cannot tell the fusion from that member"
    elif gain < 0:  # a random search need not try each member alone
        line += "; below that member by over two standard errors: no trial of the search beat it"
    return line


def _aurocs_line(aurocs: dict[str, Any]) -> str:
    return " / ".join(f"{kind} {aurocs[f'image_auroc{suffix}']:.3f}" for kind, suffix in
                      (("logical", "_logical"), ("structural", "_structural"), ("all", ""))
                      if aurocs.get(f"image_auroc{suffix}") is not None)


def _evaluate_and_save(job: FusionJob, fusion: Fusion, members: list[tuple[str, Method]], name: str,
                       sweep: dict[str, Any]) -> dict[str, Any]:
    """Test metrics of the fusion and of each member, the model file, the MLflow run and version.
    `sweep`: the objective, the chosen setting, and what it and each member scored on the objective."""
    device = next(fusion.buffers()).device
    out = Path(job.output_dir) / (job.category or job.dataset) / name
    model_dir = out / "model"
    metrics = evaluate_to_dir(fusion, job.dataset, job.data_root, job.category, model_dir, device)
    test = load_split(job.dataset, job.data_root, job.category, "test", fusion.config.image_size)
    parts, kinds = cache_parts(fusion, test, device)
    per_member = {ref: aurocs for (ref, _), aurocs in zip(members, member_aurocs(fusion, parts, kinds))}
    save_model(model_dir / MODEL_FILE, fusion.cpu(), {"threshold": metrics.get("threshold"),
                                                      "threshold_fpr": metrics.get("threshold_fpr")}, lean=True)
    record = {"method": "fusion", "dataset": job.dataset, "category": job.category, **metrics,
              "members": per_member, **sweep, "run_dir": str(out)}
    (out / "metrics.json").write_text(json.dumps(record, indent=2, default=str))
    (out / "fusion.yaml").write_text(yaml.safe_dump(
        {"members": [r for r, _ in members], **{k: list(v) if isinstance(v, tuple) else v
                                              for k, v in fusion.config.to_dict().items() if k != "members"}}))
    record.update(_track(job, fusion, members, name, sweep["objective"], record, model_dir))
    (out / "metrics.json").write_text(json.dumps(record, indent=2, default=str))
    return record


def _track(job: FusionJob, fusion: Fusion, members: list[tuple[str, Method]], name: str, objective: str,
           record: dict[str, Any], model_dir: Path) -> dict[str, Any]:
    """One MLflow run (params: pinned members, objective, chosen settings; metrics: test and
    per-member AUROCs) and, unless told not to, the registered version."""
    import mlflow

    from ..registry.pyfunc import log_and_register
    from ..train.driver import data_identity, keep_one_copy

    uri = job.tracking_uri
    c = fusion.config
    params = {"method": "fusion", "members": ",".join(r for r, _ in members), "objective": objective,
              "norm": c.norm, "rule": c.rule, "weights": ",".join(f"{w:g}" for w in c.member_weights()),
              "trials": record["trials"], "category": job.category, "dataset": job.dataset,
              "objective_structural_families": ",".join(record["objective_structural_families"] or [])}
    tags = {"logicad.sweep_kind": "fusion", "logicad.objective": objective}
    run_id = tracking.start_run(uri, tracking.DEFAULT_EXPERIMENT, name, params, tags)
    flat = {k: v for k, v in record.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    for i, (ref, aurocs) in enumerate(record["members"].items()):
        flat.update({f"member{i}_{k}": v for k, v in aurocs.items() if v is not None})
        flat.update({f"member{i}_objective_{k.removeprefix('image_')}": v
                     for k, v in record["members_on_objective"][ref].items() if v is not None})
    flat.update({f"objective_{k.removeprefix('image_')}": v for k, v in record["fusion_on_objective"].items()
                 if v is not None})
    evidence = record.get("objective_evidence") or {}
    flat.update({f"objective_{k}": evidence[k] for k in ("gain_over_best_member", "gain_se", "fusion_se")
                 if k in evidence})
    tracking.log_results(uri, run_id, flat, model_dir)
    out: dict[str, Any] = {"mlflow_run_id": run_id}
    if job.register:
        mlflow.set_tracking_uri(uri)
        registered = tracking.registered_name("fusion", job.category)
        version_tags = {**data_identity(job.dataset, job.data_root, job.category), "threshold": record.get("threshold"),
                        "members": params["members"], "objective": objective}
        out.update(model_uri=log_and_register(run_id, model_dir / MODEL_FILE, registered, version_tags),
                   registered_model=registered)
        keep_one_copy(uri, out["model_uri"], model_dir / MODEL_FILE)  # outputs' model.pt: a link to the logged one
    tracking.end_run(uri, run_id)
    return out
