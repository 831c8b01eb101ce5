"""Fusion of registered models: normalisation and rules, `logicad fuse` end to end through Ray Tune
and the MLflow registry, pinned member versions, a leak-free objective, and a registered fusion
that scores alone in a fresh process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from logicad.data import load_split
from logicad.models.base import ConfigError, build_method, method_class
from logicad.models.fusion import Fusion, FusionConfig, scoring
from logicad.pipelines.cli import main

#: two cheap members of different methods (random features: the pipeline is under test here)
MEMBERS = {
    "dfsc": {"image_size": 64, "out_channels": 16, "batch_size": 2, "precision": "32"},
    "fod": {"image_size": 32, "strides": (16,), "d_model": (16,), "heads": 2, "layers": 1, "batch_size": 2,
            "backbone": "resnet18", "backbone_weights": "random"},
}


def test_zscore_and_quantile_put_members_on_their_normals_scale():
    normals = torch.linspace(0.0, 10.0, 1001)
    stats = scoring.statistics(normals)
    assert float(scoring.normalise(torch.tensor(5.0), stats, "zscore")) == pytest.approx(0.0, abs=1e-4)
    q = scoring.normalise(torch.tensor([9.0, 9.95]), stats, "quantile")
    assert q.tolist() == pytest.approx([0.0, 1.0], abs=1e-3)


def test_the_rank_rule_is_the_normals_cdf_and_keeps_order_past_the_largest_normal():
    stats = scoring.statistics(torch.arange(100, dtype=torch.float32))
    values = scoring.cdf(torch.tensor([-50.0, 0.0, 49.5, 99.0, 150.0, 300.0]), stats)
    assert values[1:4].tolist() == pytest.approx([0.0, 0.5, 1.0], abs=0.01)
    assert values[0] < 0 and 1.0 < values[4] < values[5]


def test_rules_combine_members_by_weight():
    stats = [scoring.statistics(torch.randn(500)) for _ in range(2)]
    a, b = torch.tensor([0.0, 3.0]), torch.tensor([3.0, 0.0])
    only_a = scoring.combine([a, b], stats, "zscore", "sum", (1.0, 0.0))
    assert torch.allclose(only_a, scoring.normalise(a, stats[0], "zscore"))
    maxed = scoring.combine([a, b], stats, "zscore", "max", (1.0, 1.0))
    assert torch.allclose(maxed, torch.maximum(scoring.normalise(a, stats[0], "zscore"),
                                               scoring.normalise(b, stats[1], "zscore")))


def test_member_weights_must_fit_the_members():
    members = json.dumps([{"method": "dfsc", "config": {}}, {"method": "fod", "config": {}}])
    with pytest.raises(ConfigError, match="weights.*2 values"):
        FusionConfig.build({"members": members, "weights": "1,1,1"})


def _member(name: str, data: Path, category: str):
    config = method_class(name).config_cls.build(MEMBERS[name])
    torch.manual_seed(0)
    method = build_method(name, config)
    train = load_split("mvtec_loco", data, category, "train", config.image_size)
    val = load_split("mvtec_loco", data, category, "validation", config.image_size)
    method.prepare(DataLoader(train, batch_size=4))
    stats = train if method.finalize_split == "train" else val
    method.finalize(DataLoader(stats, batch_size=4))
    return method.eval()


def _register(method, data: Path, category: str, uri: str, tmp: Path) -> str:
    import mlflow

    from logicad.pipelines.registry import tracking
    from logicad.pipelines.registry.pyfunc import log_and_register
    from logicad.pipelines.train.checkpoints import save_model
    from logicad.pipelines.train.driver import data_identity

    model_file = save_model(tmp / f"{method.name}-{len(list(tmp.iterdir()))}" / "model.pt", method)
    run_id = tracking.start_run(uri, tracking.DEFAULT_EXPERIMENT, f"member-{method.name}", {}, {})
    mlflow.set_tracking_uri(uri)
    ref = log_and_register(run_id, model_file, tracking.registered_name(method.name, category),
                           data_identity("mvtec_loco", data, category))
    tracking.end_run(uri, run_id)
    return ref


@pytest.fixture(scope="module")
def registry(small_loco, category, tmp_path_factory):
    """A fresh sqlite store with one DFSC (alias champion) and one FOD registered on `category`."""
    import mlflow.tracking

    tmp = tmp_path_factory.mktemp("fusion")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    models = tmp / "members"
    models.mkdir()
    refs = {name: _register(_member(name, small_loco, category), small_loco, category, uri, models)
            for name in MEMBERS}
    mlflow.tracking.MlflowClient(uri).set_registered_model_alias(f"logicad-dfsc-{category}", "champion", "1")
    return {"uri": uri, "tmp": tmp, "refs": refs, "models": models}


@pytest.fixture(scope="module")
def fused(registry, small_loco, category, ray_local):
    """`logicad fuse` run once on the two members (the champion alias and a plain version)."""
    import mlflow.tracking

    tmp = registry["tmp"]
    code = main(["fuse", "--members", f"models:/logicad-dfsc-{category}@champion,{registry['refs']['fod']}",
                 "--data", str(small_loco), "--category", category, "--num-samples", "8", "--tracking-uri",
                 registry["uri"], "--out", str(tmp / "out"), "--storage", str(tmp / "ray"), "--name", "f1"])
    assert code == 0
    client = mlflow.tracking.MlflowClient(registry["uri"])
    version = client.get_model_version(f"logicad-fusion-{category}", "1")
    return {"version": version, "run_dir": tmp / "out" / category / "f1"}


@pytest.fixture(scope="module")
def ray_local():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=300 * 2**20, log_to_driver=False)
    yield
    ray.shutdown()


def test_fuse_registers_one_model_that_pins_each_members_version(fused, category):
    tags = fused["version"].tags
    assert tags["members"] == f"models:/logicad-dfsc-{category}/1,models:/logicad-fod-{category}/1"
    assert tags["objective"] == "synthetic" and tags["category"] == category
    record = json.loads((fused["run_dir"] / "metrics.json").read_text())
    assert record["trials"] == 8 and set(record["members"]) == {f"models:/logicad-dfsc-{category}/1",
                                                                f"models:/logicad-fod-{category}/1"}
    assert record["image_auroc"] is not None and record["threshold"] is not None


def test_fuse_records_what_each_member_and_the_chosen_fusion_scored_on_the_objective(fused, registry):
    import mlflow.tracking

    record = json.loads((fused["run_dir"] / "metrics.json").read_text())
    assert list(record["members_on_objective"]) == list(record["members"])
    for aurocs in [*record["members_on_objective"].values(), record["fusion_on_objective"]]:
        assert 0.0 <= aurocs["image_auroc_logical"] <= 1.0 and 0.0 <= aurocs["image_auroc_structural"] <= 1.0
    assert record["fusion_on_objective"]["image_auroc"] == pytest.approx(record["best_objective"])
    evidence = record["objective_evidence"]
    best = max(record["members_on_objective"], key=lambda ref: record["members_on_objective"][ref]["image_auroc"])
    assert evidence["best_member"] == best
    assert evidence["gain_over_best_member"] == pytest.approx(
        record["best_objective"] - record["members_on_objective"][best]["image_auroc"])
    assert evidence["gain_se"] >= 0.0 and evidence["fusion_se"] > 0.0
    logged = mlflow.tracking.MlflowClient(registry["uri"]).get_run(fused["version"].run_id).data.metrics
    assert {"member0_objective_auroc_logical", "member1_objective_auroc_structural", "objective_auroc",
            "objective_gain_over_best_member", "objective_gain_se", "objective_fusion_se"} <= set(logged)


def test_a_new_member_version_does_not_change_the_registered_fusion(fused, registry, small_loco, category):
    from logicad.pipelines.registry.pyfunc import load_method_any

    before = load_method_any(f"models:/logicad-fusion-{category}/1")
    changed = _member("dfsc", small_loco, category)
    with torch.no_grad():
        for p in changed.student.parameters():
            p.add_(1.0)
    _register(changed, small_loco, category, registry["uri"], registry["models"])  # logicad-dfsc-<c>/2
    after = load_method_any(f"models:/logicad-fusion-{category}/1")
    images = torch.randn(2, 3, before.config.image_size, before.config.image_size)
    assert torch.equal(before.score(images)[1], after.score(images)[1])


def test_a_registered_fusion_scores_alike_in_a_fresh_process(fused, registry, small_loco, category):
    from registry_check import assert_registered_model_scores_alike

    assert_registered_model_scores_alike(f"models:/logicad-fusion-{category}/1", fused["run_dir"] / "model",
                                         Path(registry["uri"].removeprefix("sqlite:///")), small_loco, category)


def test_the_fusion_objective_reads_validation_images_only_with_four_anomalies_of_each_kind_per_normal(
        registry, small_loco, category, monkeypatch):
    from logicad.pipelines.tune import fusion as fusion_cli

    seen = []
    real = fusion_cli.objective_set

    def spy(method, objective, dataset, root, category_, seed):
        images = real(method, objective, dataset, root, category_, seed)
        seen.append((objective, images))
        return images

    monkeypatch.setattr(fusion_cli, "objective_set", spy)
    monkeypatch.setattr(fusion_cli, "run_score_only_sweep", lambda *a, **k: pytest.skip("sweep not needed"))
    try:
        fusion_cli.run_fusion(fusion_cli.FusionJob(list(registry["refs"].values()), "mvtec_loco", str(small_loco),
                                                   category, registry["uri"]))
    except pytest.skip.Exception:
        pass
    (objective, images), = seen
    assert objective == "synthetic"
    paths = [str(s.path) for s in images.samples]
    assert paths and all("/validation/" in p for p in paths)
    kinds = images.kinds  # four synthesised anomalies of each kind per validation normal
    assert kinds.count("logical") == kinds.count("structural") == 4 * kinds.count("good") > 0


def test_a_member_that_cannot_be_loaded_fails_in_one_line_naming_it(capsys, registry, small_loco, category):
    code = main(["fuse", "--members", f"models:/logicad-dfsc-{category}/1,models:/logicad-nope-{category}/1",
                 "--data", str(small_loco), "--category", category, "--tracking-uri", registry["uri"]])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and f"fusion member models:/logicad-nope-{category}/1" in err


def test_a_member_of_another_category_is_refused(capsys, registry, small_loco, category):
    from logicad.data.synthetic import CATEGORIES

    other = next(c for c in CATEGORIES if c != category)
    code = main(["fuse", "--members", ",".join(registry["refs"].values()), "--data", str(small_loco),
                 "--category", other, "--tracking-uri", registry["uri"]])
    err = capsys.readouterr().err.strip()
    assert code == 2 and f"evaluated on category {category!r}, not {other!r}" in err


def test_a_fusion_is_built_from_members_and_scores_with_its_own_image_score(small_loco, category):
    members = [(f"m{i}", _member(name, small_loco, category)) for i, name in enumerate(MEMBERS)]
    fusion = Fusion.from_members(members, rule="sum", weights="1,0")
    val = load_split("mvtec_loco", small_loco, category, "validation", fusion.config.image_size)
    fusion.finalize(DataLoader(val, batch_size=4))
    images = torch.stack([val[i]["image"] for i in range(2)])
    maps, scores = fusion.score(images)
    assert maps.shape == (2, 1, 64, 64)
    own = members[0][1].score(images)[1]  # DFSC at its own 64 px: weight (1, 0) is DFSC alone
    assert torch.allclose(scores, scoring.normalise(own, fusion.score_stats[0], "zscore"), atol=1e-5)
    parts = fusion.score_parts(images)  # a sweep's trial: the same image scores, without the maps
    assert torch.equal(fusion.image_scores_from_parts(parts), fusion.scores_from_parts(parts)[1])


def test_a_labelled_objective_scores_validation_normals_against_the_users_anomalies(small_loco, category, tmp_path):
    import shutil

    from logicad.pipelines.tune.fusion import FusionJob, labelled_set

    for kind in ("logical", "structural"):
        (tmp_path / kind).mkdir()
        for path in sorted((small_loco / category / "test" / f"{kind}_anomalies").glob("*.png"))[:2]:
            shutil.copy(path, tmp_path / kind / path.name)
    job = FusionJob([], "mvtec_loco", str(small_loco), category, "sqlite:///unused.db", labelled=str(tmp_path))
    images = labelled_set(job, 32)
    kinds = [s.kind for s in images.samples]
    assert kinds.count("logical") == 2 and kinds.count("structural") == 2
    assert all("/validation/" in str(s.path) for s in images.samples if s.kind == "good")


def test_a_labelled_folder_without_kind_folders_fails_in_one_line(capsys, registry, small_loco, category, tmp_path):
    code = main(["fuse", "--members", ",".join(registry["refs"].values()), "--data", str(small_loco),
                 "--category", category, "--tracking-uri", registry["uri"], "--objective", "labelled",
                 "--labelled", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "no labelled anomalies" in err


def test_among_settings_the_objective_cannot_tell_apart_every_member_is_kept():
    import pandas as pd

    from logicad.pipelines.tune.fusion import choose_setting
    from logicad.pipelines.tune.search_space import SearchSpace

    space = SearchSpace(method="fusion", space={"rule": {"choice": ["sum", "max"]}, "weights": {"choice": ["1,0"]}})
    frame = pd.DataFrame({"objective": [1.0, 1.0, 1.0, 0.9], "config/rule": ["max", "sum", "sum", "sum"],
                          "config/weights": ["0,1", "1,0.5", "1,1", "1,1"]})
    assert choose_setting(frame, space) == ({"rule": "sum", "weights": "1,1"}, 1.0)
    frame.loc[3, "objective"] = 1.5  # a clear winner is taken whatever it drops
    assert choose_setting(frame, space) == ({"rule": "sum", "weights": "1,1"}, 1.5)
    frame.loc[3, "config/weights"] = "0,1"
    assert choose_setting(frame, space)[0]["weights"] == "0,1"


def test_a_member_alone_is_kept_where_it_beat_every_trial_on_the_objective():
    from logicad.pipelines.tune.fusion import no_worse_than_a_member
    from logicad.pipelines.tune.search_space import SearchSpace

    space = SearchSpace(method="fusion", space={"rule": {"choice": ["sum", "rank"]}, "weights": {"choice": ["1,1"]}})
    members = {"a": {"image_auroc": 0.80}, "b": {"image_auroc": 0.90}, "c": {"image_auroc": 0.70}}
    chosen = {"rule": "rank", "weights": "1,1,0.5"}
    assert no_worse_than_a_member(chosen, 0.85, members, space) == ({"rule": "sum", "weights": "0,1,0"}, 0.90)
    assert no_worse_than_a_member(chosen, 0.95, members, space) == (chosen, 0.95)  # a fusion that beat them stays
    fixed = SearchSpace(method="fusion", space={"rule": {"choice": ["sum"]}}, fixed={"weights": "1,1,1"})
    assert no_worse_than_a_member(chosen, 0.85, members, fixed) == (chosen, 0.85)  # the user fixed the weights
    logical = SearchSpace(method="fusion", space=space.space, metric="objective_logical")
    assert no_worse_than_a_member(chosen, 0.85, members, logical) == (chosen, 0.85)  # compared on another metric
