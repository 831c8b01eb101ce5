"""Score-only sweeps: a trained model's network outputs are computed once and Ray Tune
searches the keys that change no weight; training never runs and nothing is retrained."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
import yaml

from logicad.data import load_split
from logicad.models.base import ConfigError, build_method
from logicad.pipelines.train.checkpoints import read_model_file, save_model
from logicad.pipelines.tune.score_only import cache_parts, check_score_only, resolve_model_ref, score_setting
from logicad.pipelines.tune.search_space import SearchSpace

FUSION = """
method: glcf
metric: objective
mode: max
objective: synthetic
space:
  w_local: {uniform: [0.0, 5.0]}
  w_global: {uniform: [0.0, 5.0]}
budget: {num_samples: 12, max_concurrent: 2}
"""


def _glcf(data: Path, category: str):
    """A small GLCF (the preset's pretrained teacher, untrained decoders), finalized on the training
    images (no training: not needed here)."""
    from logicad.models.base import method_class

    torch.manual_seed(0)
    config = method_class("glcf").config_cls.build({"batch_size": 2}, preset="cpu-synthetic")
    method = build_method("glcf", config)
    train = load_split("mvtec_loco", data, category, "train", config.image_size)
    method.finalize([{"image": torch.stack([train[i]["image"] for i in range(len(train))]),
                      "label": torch.zeros(len(train), dtype=torch.long)}])
    return method.eval()


def test_a_key_that_changes_weights_is_refused_with_the_score_only_list(small_loco, category):
    method = _glcf(small_loco, category)
    space = SearchSpace(method="glcf", space={"w_local": {"uniform": [0, 1]}, "lr": {"uniform": [1e-4, 1e-3]}})
    with pytest.raises(ConfigError, match=r"\['lr'\] change trained weights.*w_local, w_global"):
        check_score_only(space, method, "space.yaml")


def test_scoring_cached_parts_never_trains_and_follows_the_config(small_loco, category, monkeypatch):
    method = _glcf(small_loco, category)
    monkeypatch.setattr(type(method), "training_step", lambda *a, **k: pytest.fail("training_step was called"))
    test = load_split("mvtec_loco", small_loco, category, "test", method.config.image_size)
    parts, kinds = cache_parts(method, test, torch.device("cpu"))
    assert len(kinds) == len(test)
    before = {k: v.clone() for k, v in method.state_dict().items()}
    fused = score_setting(method, {"w_local": 5.0, "w_global": 1.0}, parts, kinds)
    assert set(fused) >= {"image_auroc", "image_auroc_logical", "image_auroc_structural"}
    # the weights never moved; the scores depend on the fusion weights alone
    assert all(torch.equal(before[k], v) for k, v in method.state_dict().items())
    images = torch.stack([test[i]["image"] for i in range(4)])
    method.config = method.config.replace(w_local=1.0, w_global=0.0)
    assert torch.allclose(method.maps_from_parts({k: v[:4] for k, v in parts.items()}), method.anomaly_map(images),
                          atol=1e-5)
    local_scores = method.image_score(method.maps_from_parts(parts))
    method.config = method.config.replace(w_local=5.0, w_global=1.0)
    assert not torch.allclose(method.image_score(method.maps_from_parts(parts)), local_scores)


def test_a_bare_run_id_means_that_runs_logged_model(tmp_path):
    run_id = "0123456789abcdef0123456789abcdef"
    assert resolve_model_ref(run_id) == f"runs:/{run_id}/model"
    assert resolve_model_ref("models:/logicad-glcf-parts_box/2") == "models:/logicad-glcf-parts_box/2"


@pytest.fixture()
def ray_shut_after():
    """The CLI starts a local Ray in this process: stop it, so later tests start their own."""
    import ray

    yield
    ray.shutdown()


def test_tune_from_run_searches_fusion_weights_without_retraining(small_loco, category, tmp_path, ray_shut_after):
    from logicad.pipelines.cli import main

    method = _glcf(small_loco, category)
    model = save_model(tmp_path / "model" / "model.pt", method)
    (tmp_path / "fusion.yaml").write_text(FUSION)
    code = main(["tune", "--method", "glcf", "--from-run", str(model.parent), "--space", str(tmp_path / "fusion.yaml"),
                 "--data", str(small_loco), "--category", category, "--storage", str(tmp_path / "ray"),
                 "--name", "fusion", "--output", str(tmp_path / "out"),
                 "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", "--register"])
    assert code == 0
    best_file = next((tmp_path / "out").rglob("best_config.yaml"))
    best = yaml.safe_load(best_file.read_text())
    assert best["method"] == "glcf"
    best = best["config"]
    assert 0.0 <= best["w_local"] <= 5.0 and 0.0 <= best["w_global"] <= 5.0
    # the trained model's config, with only the searched keys changed
    assert best["image_size"] == method.config.image_size
    with open(next((tmp_path / "out").rglob("trials.csv"))) as handle:
        assert len(list(csv.DictReader(handle))) == 12
    assert torch.equal(read_model_file(model)["state_dict"][next(iter(method.state_dict()))],
                       next(iter(method.state_dict().values())))
    # --register: a new version with the chosen weights, which evaluate --config reproduces
    registered = json.loads((best_file.parent / "metrics.json").read_text())
    assert registered["model_uri"] == f"models:/logicad-glcf-{category}/1"
    assert registered["settings"]["w_local"] == pytest.approx(best["w_local"])
    code = main(["evaluate", "--model", str(model.parent), "--config", str(best_file), "--data", str(small_loco),
                 "--category", category, "--out", str(tmp_path / "eval"),
                 "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"])
    assert code == 0
    rescored = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert rescored["image_auroc"] == pytest.approx(registered["image_auroc"])


def test_evaluate_refuses_a_setting_that_changes_trained_weights(small_loco, category, tmp_path, capsys):
    from logicad.pipelines.cli import main

    model = save_model(tmp_path / "model" / "model.pt", _glcf(small_loco, category))
    code = main(["evaluate", "--model", str(model), "--set", "lr=0.1", "--data", str(small_loco),
                 "--category", category, "--out", str(tmp_path / "eval")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "['lr'] change trained weights" in err and "w_local" in err


def test_a_space_value_that_does_not_fit_the_trained_model_is_refused_before_any_trial(small_loco, category):
    method = _glcf(small_loco, category)
    scales = len(method.config.target_strides)
    too_many = ",".join(["1"] * (scales + 1))
    space = SearchSpace(method="glcf", space={"scale_weights": {"choice": [",".join(["1"] * scales), too_many]}})
    with pytest.raises(ConfigError, match=f"space.scale_weights value '{too_many}' does not fit this glcf model"):
        check_score_only(space, method, "space.yaml")
