"""`logicad promote`: a registry gate that moves an alias (`champion`) to a better version.

The candidate (newest version, or `--version`) is compared with the alias holder on a
metric recorded in each version's run. The alias moves only if the candidate is better
by more than `min_delta`; the first version becomes champion. Versions evaluated on
different data (dataset, category, test-file fingerprint) are never compared. The
decision, both values and the reason are written as tags on the candidate version.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from .tracking import TrackingError

IDENTITY_TAGS = ("dataset", "category", "data_fingerprint")


class PromotionError(TrackingError):
    """A version that cannot be judged; the message says which and why."""


@dataclass
class Decision:
    model: str
    alias: str
    candidate: str
    champion: str | None
    metric: str
    candidate_value: float
    champion_value: float | None
    promoted: bool
    reason: str

    def line(self) -> str:
        verb = "promoted" if self.promoted else "kept"
        holder = f"v{self.champion} ({self.champion_value:.4f})" if self.champion else "no holder"
        who = f"v{self.candidate}" if self.promoted else f"v{self.champion}"
        return (f"{self.model}@{self.alias}: {verb} {who}; candidate v{self.candidate} {self.metric} "
                f"{self.candidate_value:.4f} vs {holder}: {self.reason}")


def _candidate(client, name: str, version: str | None):
    if version is not None:
        return client.get_model_version(name, str(version))
    versions = client.search_model_versions(f"name='{name}'")
    if not versions:
        raise PromotionError(f"registered model {name!r} has no versions; train one with logicad train first")
    return max(versions, key=lambda v: int(v.version))


def _value(client, version, metric: str) -> float:
    run = client.get_run(version.run_id)
    if metric not in run.data.metrics:
        raise PromotionError(f"version {version.version} of {version.name}: its run {version.run_id} recorded no "
                             f"{metric!r}; recorded metrics: {sorted(run.data.metrics)}")
    return float(run.data.metrics[metric])


def _identity(version) -> dict[str, str | None]:
    return {key: version.tags.get(key) for key in IDENTITY_TAGS}


def _holder(client, name: str, alias: str):
    try:
        return client.get_model_version_by_alias(name, alias)
    except Exception:  # MLflow raises RestException / MlflowException for a missing alias
        return None


def decide(client, name: str, metric: str, min_delta: float, alias: str, version: str | None) -> Decision:
    """Judge the candidate against the alias holder (no side effects)."""
    cand = _candidate(client, name, version)
    value = _value(client, cand, metric)
    holder = _holder(client, name, alias)
    base = dict(model=name, alias=alias, candidate=cand.version, metric=metric, candidate_value=value)
    if holder is None:
        return Decision(**base, champion=None, champion_value=None, promoted=True, reason="first version")
    held = _value(client, holder, metric)
    base.update(champion=holder.version, champion_value=held)
    if holder.version == cand.version:
        return Decision(**base, promoted=False, reason="the candidate already holds the alias")
    if _identity(cand) != _identity(holder):
        raise PromotionError(f"{name}: refusing to compare v{cand.version} ({_identity(cand)}) with "
                             f"v{holder.version} ({_identity(holder)}): evaluated on different data")
    if value > held + min_delta:
        return Decision(**base, promoted=True, reason=f"better by {value - held:.4f} > min_delta {min_delta}")
    return Decision(**base, promoted=False, reason=f"not better by more than min_delta {min_delta} "
                                                   f"(difference {value - held:+.4f})")


def promote(uri: str, name: str, metric: str = "image_auroc", min_delta: float = 0.0, alias: str = "champion",
            version: str | None = None) -> dict[str, Any]:
    """Decide, move the alias if promoted, record the decision on the candidate version."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    try:
        client.get_registered_model(name)
    except Exception:
        raise PromotionError(f"registered model {name!r} not found in {uri}") from None
    decision = decide(client, name, metric, min_delta, alias, version)
    if decision.promoted:
        client.set_registered_model_alias(name, alias, decision.candidate)
    for key, value in {"decision": "promoted" if decision.promoted else "kept", "metric": metric,
                       "candidate_value": decision.candidate_value, "champion_value": decision.champion_value,
                       "compared_to": decision.champion, "reason": decision.reason}.items():
        client.set_model_version_tag(name, decision.candidate, f"promotion.{key}", str(value))
    return asdict(decision)
