"""Registry promotion and predict against a real `mlflow server` process whose artifacts
live in a real S3 API (moto's server on 127.0.0.1); clients need no S3 credentials."""

from __future__ import annotations

import csv
from pathlib import Path

import mlflow
import pytest
from torch.utils.data import DataLoader

from logicad.data import load_split
from logicad.models.base import build_method
from logicad.pipelines.registry import tracking
from logicad.pipelines.train.checkpoints import save_model
from logicad.pipelines.cli import main
from logicad.pipelines.registry.pyfunc import log_and_register
from logicad.pipelines.registry.promote import PromotionError, promote
from servers import mlflow_server

NAME = "logicad-dfsc-test"


@pytest.fixture(scope="module")
def server(tmp_path_factory, s3_endpoint):
    from s3_server import ACCESS_KEY, REGION, SECRET_KEY, client

    client(s3_endpoint).create_bucket(Bucket="registry")
    env = {"MLFLOW_S3_ENDPOINT_URL": s3_endpoint, "AWS_ACCESS_KEY_ID": ACCESS_KEY,
           "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_DEFAULT_REGION": REGION}
    with mlflow_server(tmp_path_factory.mktemp("mlflow"), "s3://registry/mlflow", env) as url:
        yield url


@pytest.fixture(scope="module")
def model_file(small_loco, category, tmp_path_factory) -> Path:
    """A scoring-ready (untrained) DFSC at 64 px with its statistics and a threshold."""
    method = build_method("dfsc", image_size=64)
    method.prepare(DataLoader(load_split("mvtec_loco", small_loco, category, "train", 64), batch_size=4))
    method.finalize(DataLoader(load_split("mvtec_loco", small_loco, category, "validation", 64), batch_size=4))
    return save_model(tmp_path_factory.mktemp("model") / "model.pt", method, {"threshold": 0.5})


def _register(uri: str, model_file: Path, auroc: float, fingerprint: str = "abc") -> str:
    run_id = tracking.start_run(uri, "registry-test", "v", {"method": "dfsc"}, {})
    tracking.log_results(uri, run_id, {"image_auroc": auroc})
    mlflow.set_tracking_uri(uri)
    log_and_register(run_id, model_file, NAME, {"dataset": "mvtec_loco", "category": "c",
                                                "data_fingerprint": fingerprint, "threshold": 0.5})
    tracking.end_run(uri, run_id)
    return run_id


def test_alias_moves_only_to_a_better_version(server, model_file):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(server)
    decisions = []
    for auroc in (0.70, 0.80, 0.75, 0.80):  # first, better, worse, equal
        _register(server, model_file, auroc)
        decisions.append(promote(server, NAME, "image_auroc"))
    assert [d["promoted"] for d in decisions] == [True, True, False, False]
    assert client.get_model_version_by_alias(NAME, "champion").version == "2"
    worse = client.get_model_version(NAME, "3").tags
    assert worse["promotion.decision"] == "kept" and worse["promotion.compared_to"] == "2"
    assert float(worse["promotion.candidate_value"]) == 0.75 and float(worse["promotion.champion_value"]) == 0.8
    equal = client.get_model_version(NAME, "4").tags
    assert equal["promotion.decision"] == "kept" and "min_delta" in equal["promotion.reason"]


def test_min_delta_holds_back_a_small_improvement(server, model_file):
    _register(server, model_file, 0.81)
    decision = promote(server, NAME, "image_auroc", min_delta=0.05)
    assert not decision["promoted"] and decision["champion"] == "2"


def test_versions_evaluated_on_other_data_are_not_compared(server, model_file):
    _register(server, model_file, 0.99, fingerprint="other-data")
    with pytest.raises(PromotionError, match="different data"):
        promote(server, NAME, "image_auroc")


def test_promote_cli_prints_the_decision(server, capsys):
    code = main(["promote", "--model", NAME, "--version", "2", "--tracking-uri", server])
    assert code == 0 and "kept v2" in capsys.readouterr().out


def test_predict_scores_a_folder_with_the_champion(server, small_loco, category, tmp_path, capsys):
    images = small_loco / category / "test" / "structural_anomalies"
    code = main(["predict", "--model", f"models:/{NAME}@champion", "--images", str(images),
                 "--out", str(tmp_path / "pred"), "--tracking-uri", server])
    assert code == 0
    rows = list(csv.DictReader(open(tmp_path / "pred" / "scores.csv")))
    assert len(rows) == 3 and {r["verdict"] for r in rows} <= {"good", "anomalous"}
    assert all(r["verdict"] == ("anomalous" if float(r["score"]) > 0.5 else "good") for r in rows)
    assert len(list((tmp_path / "pred" / "overlays").glob("*.png"))) == 3


def test_model_artifacts_are_stored_in_the_bucket(server, s3_endpoint):
    from s3_server import client

    keys = [o["Key"] for o in client(s3_endpoint).list_objects_v2(Bucket="registry").get("Contents", [])]
    assert any(k.endswith("model.pt") for k in keys)


def test_predict_reads_images_from_an_s3_prefix(model_file, s3_endpoint, small_loco, category, tmp_path,
                                                monkeypatch):
    from s3_server import ACCESS_KEY, REGION, SECRET_KEY, client

    s3 = client(s3_endpoint)
    s3.create_bucket(Bucket="incoming")
    for path in sorted((small_loco / category / "test" / "good").glob("*.png")):
        s3.upload_file(str(path), "incoming", f"line1/{path.name}")
    for key, value in {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
                       "AWS_DEFAULT_REGION": REGION, "LOGICAD_CACHE": str(tmp_path / "cache")}.items():
        monkeypatch.setenv(key, value)
    code = main(["predict", "--model", str(model_file), "--images", "s3://incoming/line1",
                 "--s3-endpoint-url", s3_endpoint, "--out", str(tmp_path / "pred")])
    assert code == 0
    rows = list(csv.DictReader(open(tmp_path / "pred" / "scores.csv")))
    assert len(rows) == 3 and all(str(tmp_path / "cache") in r["path"] for r in rows)
