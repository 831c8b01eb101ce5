"""The pass/fail decision: the threshold chosen for a false-positive rate on validation normals,
the confusion counts at it, evaluate's report of both, and the pyfunc's `anomalous`."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import DataLoader

from logicad.data import load_split
from logicad.models.base import build_method
from logicad.pipelines.evaluate.scoring import evaluate_method, score_batches
from logicad.pipelines.evaluate.thresholds import DEFAULT_FPR, ThresholdError, confusion, fpr_threshold, is_anomalous
from logicad.pipelines.registry import serving
from logicad.pipelines.registry.pyfunc import save_local
from logicad.pipelines.train.checkpoints import save_model

SIZE = 32


def test_default_fpr_is_one_percent():
    assert DEFAULT_FPR == 0.01


@pytest.mark.parametrize("n, fpr, above", [(20, 0.01, 0), (20, 0.05, 1), (20, 0.0, 0), (200, 0.01, 2),
                                           (100, 0.29, 29), (3, 0.5, 1)])
def test_threshold_leaves_at_most_the_stated_share_of_normals_above_it(n, fpr, above):
    scores = np.random.default_rng(n).normal(size=n)
    fitted = fpr_threshold(scores, fpr)
    ranked = np.sort(scores)
    assert fitted.normals_above == int((scores > fitted.value).sum()) == above
    assert fitted.value == ranked[n - 1 - above]  # the smallest such score: one lower lets one more through
    assert fitted.metrics() == {"threshold": fitted.value, "threshold_fpr": fpr, "threshold_n_normals": n,
                                "threshold_validation_fpr": above / n}


def test_fewer_normals_than_the_rate_can_resolve_give_the_largest_normal_score():
    scores = np.linspace(0.0, 1.0, 20)  # one normal is 5 %: 1 % allows none above
    assert fpr_threshold(scores, 0.01).value == 1.0
    assert not is_anomalous(scores, fpr_threshold(scores, 0.01).value).any()


@pytest.mark.parametrize("seed", range(20))
def test_random_scores_never_exceed_the_rate_and_the_threshold_is_the_lowest_that_does_not(seed):
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 12, size=int(rng.integers(1, 60))).astype(float)  # many ties
    fpr = float(rng.uniform(0, 0.5))
    fitted = fpr_threshold(scores, fpr)
    assert (scores > fitted.value).mean() <= fpr
    lower = scores[scores < fitted.value]
    if lower.size:
        assert (scores > lower.max()).mean() > fpr


@pytest.mark.parametrize("fpr", [-0.1, 1.0, 1.5, "0.01", True, None])
def test_a_rate_outside_0_to_1_fails_in_one_line(fpr):
    with pytest.raises(ThresholdError, match=r"fpr .*expected a false-positive rate in \[0, 1\)"):
        fpr_threshold([1.0, 2.0], fpr)


def test_no_normals_or_non_finite_scores_fail_naming_the_problem():
    with pytest.raises(ThresholdError, match="no normal images"):
        fpr_threshold([], 0.01)
    with pytest.raises(ThresholdError, match="1 normal score.*not finite"):
        fpr_threshold([1.0, float("nan")], 0.01)


def test_confusion_counts_a_hand_made_split():
    kinds = ["good", "good", "good", "good", "logical", "logical", "structural", "structural", "structural"]
    scores = [0.1, 0.2, 0.6, 0.5, 0.7, 0.3, 0.9, 0.8, 0.5]  # threshold 0.5: a score of 0.5 is good
    out = confusion(scores, kinds, 0.5)
    assert {k: out[k] for k in ("tp", "fp", "tn", "fn")} == {"tp": 3, "fp": 1, "tn": 3, "fn": 2}
    assert out["test_fpr"] == 0.25 and out["test_tpr"] == 0.6
    assert {k: out[f"{k}_logical"] for k in ("tp", "fp", "tn", "fn")} == {"tp": 1, "fp": 1, "tn": 3, "fn": 1}
    assert {k: out[f"{k}_structural"] for k in ("tp", "fp", "tn", "fn")} == {"tp": 2, "fp": 1, "tn": 3, "fn": 1}
    assert out["test_tpr_logical"] == 0.5 and out["test_tpr_structural"] == pytest.approx(2 / 3)


def test_confusion_rates_are_none_without_images_of_a_kind():
    out = confusion([0.1, 0.9], ["good", "structural"], 0.5)
    assert out["tp_logical"] == 0 and out["fn_logical"] == 0 and out["test_tpr_logical"] is None
    assert out["test_tpr_structural"] == 1.0


@pytest.fixture(scope="module")
def method(small_loco, category, one_thread):
    """A statistics-only PatchCore at 32 px (fits in about a second)."""
    method = build_method("patchcore", image_size=SIZE)
    method.prepare(DataLoader(load_split("mvtec_loco", small_loco, category, "train", SIZE), batch_size=4))
    method.finalize(DataLoader(load_split("mvtec_loco", small_loco, category, "validation", SIZE), batch_size=4))
    return method


def test_evaluate_fits_the_threshold_on_validation_and_reports_the_test_confusion(method, small_loco, category):
    metrics, details = evaluate_method(method, "mvtec_loco", small_loco, category, torch.device("cpu"), fpr=0.01)
    validation = load_split("mvtec_loco", small_loco, category, "validation", SIZE)
    normal = [s for _, _, s in score_batches(method, validation, torch.device("cpu"))]
    assert metrics["threshold"] == pytest.approx(max(normal))  # 3 normals: 1 % allows none above
    assert metrics["threshold_fpr"] == 0.01 and metrics["threshold_n_normals"] == 3
    assert metrics["threshold_source"] == "validation" and metrics["image_auroc"] is not None
    expected = confusion(details["scores"], details["kinds"], metrics["threshold"])
    assert {k: metrics[k] for k in expected} == expected
    assert metrics["tp"] + metrics["fp"] + metrics["tn"] + metrics["fn"] == metrics["n_test"]


def test_evaluate_uses_a_recorded_threshold_as_given(method, small_loco, category):
    metrics, _ = evaluate_method(method, "mvtec_loco", small_loco, category, torch.device("cpu"),
                                 threshold=-1.0, threshold_fpr=0.05)
    assert metrics["threshold"] == -1.0 and metrics["threshold_fpr"] == 0.05
    assert metrics["threshold_source"] == "recorded"
    assert metrics["fn"] == 0 and metrics["tn"] == 0 and metrics["test_fpr"] == 1.0


@pytest.fixture(scope="module")
def test_images(small_loco, category) -> list:
    return sorted((small_loco / category / "test").rglob("*.png"))


def _pyfunc(method, tmp_path, name: str, extra: dict):
    import mlflow.pyfunc

    model_file = save_model(tmp_path / name / "model.pt", method, extra)
    return mlflow.pyfunc.load_model(str(save_local(model_file, tmp_path / name / "pyfunc")))


def test_pyfunc_decides_at_the_recorded_threshold_and_gives_maps_only_when_asked(method, test_images, tmp_path):
    frame = pd.DataFrame({"image": [serving.encode_image(p) for p in test_images]})
    plain = _pyfunc(method, tmp_path, "plain", {"threshold": 0.0})
    scores = plain.predict(frame)["score"].to_numpy()
    threshold = float(np.sort(scores)[len(scores) // 2 - 1: len(scores) // 2 + 1].mean())  # between two scores
    model = _pyfunc(method, tmp_path, "decided", {"threshold": threshold})
    out = model.predict(frame)
    assert list(out.columns) == ["score", "anomalous", "threshold"]
    assert list(out["anomalous"]) == [bool(s > threshold) for s in out["score"]]
    assert 0 < out["anomalous"].sum() < len(out) and (out["threshold"] == threshold).all()
    with_maps = model.predict(frame, params={"return_map": True})
    assert np.asarray(with_maps["map"][0]).shape == (SIZE, SIZE)
    by_path = model.predict(pd.DataFrame({"path": [str(p) for p in test_images]}))
    np.testing.assert_allclose(by_path["score"], out["score"], rtol=1e-6)


def test_pyfunc_without_a_recorded_threshold_says_so_instead_of_deciding(method, test_images, tmp_path):
    model = _pyfunc(method, tmp_path, "undecided", {})
    out = model.predict(pd.DataFrame({"image": [serving.encode_image(test_images[0])]}))
    assert out["anomalous"].isna().all() and out["threshold"].isna().all() and out["score"].notna().all()


def test_rethreshold_on_the_validation_split_writes_a_new_model_and_never_overwrites(method, small_loco, category,
                                                                                    tmp_path):
    from logicad.pipelines.evaluate.scoring import validation_threshold
    from logicad.pipelines.evaluate.thresholds import ThresholdError
    from logicad.pipelines.registry.rethreshold import choose, write_model
    from logicad.pipelines.train.checkpoints import read_model_file

    payload = read_model_file(save_model(tmp_path / "old" / "model.pt", method, {"threshold": 7.0}))
    report = choose(payload, 0.5, torch.device("cpu"), split=("mvtec_loco", str(small_loco), category))
    expected = validation_threshold(method, "mvtec_loco", small_loco, category, torch.device("cpu"), fpr=0.5)
    assert report["threshold"] == pytest.approx(expected.value) and report["threshold_n_normals"] == 3
    assert report["threshold_validation_fpr"] == pytest.approx(1 / 3) and report["previous_threshold"] == 7.0
    written = read_model_file(write_model(payload, report, tmp_path / "new"))
    assert written["threshold"] == report["threshold"] and written["threshold_fpr"] == 0.5
    with pytest.raises(ThresholdError, match="already holds a model"):
        write_model(payload, report, tmp_path / "new")
    assert read_model_file(tmp_path / "old" / "model.pt")["threshold"] == 7.0


def test_decision_line_summarises_the_confusion_and_is_empty_without_a_threshold():
    from logicad.pipelines.evaluate.thresholds import decision_line

    metrics = {"threshold": 0.5, "threshold_fpr": 0.01, "threshold_n_normals": 20,
               **confusion([0.1, 0.6, 0.7, 0.2], ["good", "good", "logical", "structural"], 0.5)}
    assert decision_line(metrics) == ("decision at threshold 0.5 (FPR 0.01 on 20 validation normals): test FPR 0.500 "
                                      "(1 of 2 good), TPR 0.500 (1 of 2; logical 1.000, structural 0.000)")
    assert decision_line({"threshold": None}) == ""


def test_the_threshold_command_parser_builds_without_importing_torch_or_mlflow():
    import subprocess
    import sys

    code = ("import argparse, sys; from logicad.pipelines.registry.rethreshold import add_threshold; "
            "add_threshold(argparse.ArgumentParser().add_subparsers()); "
            "heavy = [m for m in ('torch', 'ray', 'mlflow') if m in sys.modules]; assert not heavy, heavy")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr[-1000:]
