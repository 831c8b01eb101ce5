"""The pass/fail decision stored with a model: a score threshold chosen on normal images for a
stated false-positive rate, and the confusion counts it gives on a labelled test split.

An image is anomalous when its score is strictly above the threshold. The threshold is the
smallest validation-normal score that leaves at most `fpr` of the normals above it, so the
validation false-positive rate never exceeds `fpr`. With n normals the rate moves in steps of
1/n: any `fpr` below 1/n (e.g. 1 % with 20 normals) gives the largest normal score, where no
normal is called anomalous.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

#: the false-positive rate on validation normals that a model's threshold is chosen for
DEFAULT_FPR = 0.01
ANOMALOUS_KINDS = ("logical", "structural")


class ThresholdError(ValueError):
    """A threshold that cannot be chosen from what was given; the message says why."""


@dataclass(frozen=True)
class Threshold:
    """A fitted threshold with what it was fitted for and on."""

    value: float
    fpr: float  # the false-positive rate asked for
    n_normals: int  # how many normal images it was chosen on
    normals_above: int  # how many of them score above it (<= fpr * n_normals)

    def metrics(self) -> dict[str, Any]:
        """The keys a model's metrics record it under (`threshold_fpr` is also a payload field)."""
        return {"threshold": self.value, "threshold_fpr": self.fpr, "threshold_n_normals": self.n_normals,
                "threshold_validation_fpr": self.normals_above / self.n_normals}


def check_fpr(fpr: float) -> float:
    """`fpr` as a float in [0, 1); anything else fails in one line."""
    if isinstance(fpr, bool) or not isinstance(fpr, (int, float)) or not 0.0 <= float(fpr) < 1.0:
        raise ThresholdError(f"fpr {fpr!r}: expected a false-positive rate in [0, 1), e.g. 0.01 for 1 %")
    return float(fpr)


def fpr_threshold(normal_scores: Iterable[float], fpr: float = DEFAULT_FPR) -> Threshold:
    """The threshold above which at most `fpr` of `normal_scores` fall (see the module's note)."""
    fpr = check_fpr(fpr)
    scores = np.sort(np.asarray(list(normal_scores), dtype=np.float64))
    if scores.size == 0:
        raise ThresholdError("no normal images to choose a threshold on; expected at least one validation image")
    if not np.isfinite(scores).all():
        raise ThresholdError(f"{int((~np.isfinite(scores)).sum())} normal score(s) are not finite; "
                             "expected finite image scores")
    allowed = math.floor(fpr * scores.size + 1e-9)  # normals that may score above the threshold
    value = float(scores[scores.size - 1 - allowed])
    return Threshold(value, fpr, int(scores.size), int((scores > value).sum()))


def is_anomalous(scores: Sequence[float] | np.ndarray, threshold: float) -> np.ndarray:
    """The decision: True where a score is strictly above `threshold`."""
    return np.asarray(scores, dtype=np.float64) > threshold


def _counts(predicted: np.ndarray, actual: np.ndarray) -> dict[str, int]:
    return {"tp": int((predicted & actual).sum()), "fp": int((predicted & ~actual).sum()),
            "tn": int((~predicted & ~actual).sum()), "fn": int((~predicted & actual).sum())}


def _rate(hits: int, total: int) -> float | None:
    return hits / total if total else None


def confusion(scores: Sequence[float], kinds: Sequence[str], threshold: float) -> dict[str, Any]:
    """Confusion counts of the decision at `threshold` on a test split, flat for metrics.json:
    tp, fp, tn, fn and test_fpr, test_tpr over all images; the same with a `_logical` /
    `_structural` suffix for good images against that kind alone (rates are None without
    images to count)."""
    kinds = np.asarray(kinds)
    predicted = is_anomalous(scores, threshold)
    if predicted.shape != kinds.shape:
        raise ThresholdError(f"{predicted.size} scores but {kinds.size} kinds; expected one kind per score")
    out: dict[str, Any] = {}
    for suffix, keep in [("", np.ones(kinds.shape, bool)),
                         *((f"_{kind}", (kinds == "good") | (kinds == kind)) for kind in ANOMALOUS_KINDS)]:
        counts = _counts(predicted[keep], kinds[keep] != "good")
        out.update({f"{key}{suffix}": value for key, value in counts.items()})
        out[f"test_fpr{suffix}"] = _rate(counts["fp"], counts["fp"] + counts["tn"])
        out[f"test_tpr{suffix}"] = _rate(counts["tp"], counts["tp"] + counts["fn"])
    return out


def decision_line(metrics: dict[str, Any]) -> str:
    """One line on the decision for a run's summary, e.g. 'decision at threshold 0.512 (FPR 0.01
    on 20 validation normals): test FPR 0.050 (1 of 20 good), TPR 0.800 (48 of 60; logical 0.700,
    structural 0.900)'; '' when the metrics have no threshold."""
    if metrics.get("threshold") is None:
        return ""

    def rate(key: str) -> str:
        return "n/a" if metrics.get(key) is None else f"{metrics[key]:.3f}"

    fitted = (f"FPR {metrics['threshold_fpr']} on {metrics['threshold_n_normals']} validation normals"
              if metrics.get("threshold_n_normals") else f"recorded with the model, FPR {metrics.get('threshold_fpr')}")
    line = f"decision at threshold {metrics['threshold']:.4g} ({fitted})"
    if "tp" not in metrics:
        return line
    good, bad = metrics["fp"] + metrics["tn"], metrics["tp"] + metrics["fn"]
    return (f"{line}: test FPR {rate('test_fpr')} ({metrics['fp']} of {good} good), TPR {rate('test_tpr')} "
            f"({metrics['tp']} of {bad}; logical {rate('test_tpr_logical')}, structural {rate('test_tpr_structural')})")
