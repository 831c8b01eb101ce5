"""Lean, single-copy models: the registered file holds no optimizer state and scores like the
trained model, interrupted and finished runs still resume from their Ray checkpoints, a run's
lean model is on disk once (hard links), and the closing line's sizes add up."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from logicad.models.base import build_method
from logicad.pipelines.config import resolve_config
from logicad.pipelines.train.checkpoints import (has_resume_state, lean_payload, method_from_payload,
                                                 read_model_file, save_lean_copy, save_model)
from logicad.pipelines.train.driver import TrainJob, disk_summary, run_train
from logicad.pipelines.train.run_dirs import files_below, human_bytes, link_identical, measure_places

TINY = ["image_size=64", "batch_size=2", "max_steps=3", "precision=32"]


def _full_payload(method) -> dict:
    """A model file as a mid-training Ray checkpoint holds it: with an optimizer's state."""
    optimizer = torch.optim.Adam(method.parameters(), lr=1e-3)
    for parameter in method.parameters():
        parameter.grad = torch.ones_like(parameter)
    optimizer.step()  # Adam's two moments per parameter: the state a lean file leaves out
    return {"training": {"stage": 0, "step": 1, "stages": 1, "optimizers": [[optimizer.state_dict()]],
                         "schedulers": [[None]]}, "threshold": 0.5}


def test_a_lean_copy_drops_optimizer_state_keeps_the_rest_and_scores_identically(tmp_path):
    torch.manual_seed(0)
    method = build_method("dfsc", image_size=64)
    full = save_model(tmp_path / "full" / "model.pt", method, _full_payload(method))
    lean = save_lean_copy(full, tmp_path / "lean" / "model.pt", threshold_fpr=0.01)
    before, after = read_model_file(full), read_model_file(lean)
    assert has_resume_state(before) and not has_resume_state(after)
    assert after["training"] == {"stage": 0, "step": 1, "stages": 1}
    assert (after["threshold"], after["threshold_fpr"]) == (0.5, 0.01)
    assert lean.stat().st_size < full.stat().st_size
    images = torch.rand(2, 3, 64, 64)
    with torch.inference_mode():
        old_map, old_score = method_from_payload(before).score(images)  # old full files still load
        new_map, new_score = method_from_payload(after).score(images)
    assert torch.equal(old_map, new_map) and torch.equal(old_score, new_score)
    assert lean_payload({"format": "x"}) == {"format": "x"}  # no training entry: nothing to drop


def test_only_identical_files_on_one_disk_become_hard_links(tmp_path):
    source, same, other = tmp_path / "a.pt", tmp_path / "b.pt", tmp_path / "c.pt"
    source.write_bytes(b"weights")
    same.write_bytes(b"weights")
    other.write_bytes(b"changed")
    assert link_identical(source, [same, other]) == [same]
    assert same.samefile(source) and not other.samefile(source) and other.read_bytes() == b"changed"
    assert not source.stat().st_mode & 0o222  # read-only: an in-place write cannot change every copy
    places = measure_places({"first": str(source), "second": str(same)})
    assert [(p.own, p.linked) for p in places] == [(7, 0), (0, 7)]


@pytest.fixture(scope="module")
def ray_runtime():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=300 * 2**20, log_to_driver=False)
    yield
    ray.shutdown()


def _job(tmp: Path, data: Path, category: str, **kw) -> TrainJob:
    return TrainJob("dfsc", resolve_config("dfsc", TINY), "mvtec_loco", str(data), category,
                    output_dir=str(tmp / "outputs"), storage_path=str(tmp / "ray"), run_name="run",
                    tracking_uri=f"sqlite:///{tmp / 'mlflow.db'}", log_every=1, **kw)


@pytest.fixture(scope="module")
def run(ray_runtime, small_loco, category, tmp_path_factory):
    """A registered 3-step run that checkpoints every step and keeps two checkpoints: step 2's
    (mid-training, full) and the final one (lean)."""
    tmp = tmp_path_factory.mktemp("lean")
    return tmp, run_train(_job(tmp, small_loco, category, checkpoint_every=1, keep_checkpoints=2))


def _ray_checkpoints(tmp: Path) -> dict[bool, list[Path]]:
    """The run's Ray checkpoint folders, by whether they are the final one."""
    folders = sorted(p.parent for p in (tmp / "ray" / "run").glob("checkpoint_*/model.pt"))
    finished = {folder: bool(read_model_file(folder / "model.pt")["training"].get("finished")) for folder in folders}
    return {final: [f for f in folders if finished[f] == final] for final in (True, False)}


def _ray_models(tmp: Path) -> dict[bool, list[dict]]:
    return {final: [read_model_file(f / "model.pt") for f in folders]
            for final, folders in _ray_checkpoints(tmp).items()}


def test_the_registered_model_has_no_optimizer_state_and_scores_like_the_trained_one(run, small_loco, category):
    from logicad.pipelines.evaluate.scoring import validation_threshold
    from logicad.pipelines.registry.pyfunc import load_payload_any

    tmp, record = run
    registered = load_payload_any(record["model_uri"])
    assert not has_resume_state(registered) and "threshold_fpr" in registered
    (final,) = _ray_models(tmp)[True]
    by_run = load_payload_any(f"runs:/{record['mlflow_run_id']}/model")  # the run's logged model, not a copy
    latest = read_model_file(tmp / "outputs" / "latest" / "model")
    for key, value in final["state_dict"].items():
        assert all(torch.equal(p["state_dict"][key], value) for p in (registered, by_run, latest)), key
    # the threshold the worker computed with the trained model, recomputed with the registered one
    again = validation_threshold(method_from_payload(registered), "mvtec_loco", small_loco, category,
                                 torch.device("cpu"))
    assert float(getattr(again, "value", again)) == pytest.approx(record["threshold"], rel=1e-6)


def test_the_mid_training_checkpoint_keeps_what_resuming_needs_and_both_resume(run, small_loco, category):
    from local_session import LocalSession

    from logicad.pipelines.train.worker import WorkerSpec, run_loop

    tmp, _ = run
    checkpoints = _ray_checkpoints(tmp)
    (middle,), (final,) = checkpoints[False], checkpoints[True]
    assert has_resume_state(read_model_file(middle / "model.pt"))
    assert not has_resume_state(read_model_file(final / "model.pt"))  # nothing left to train
    spec = WorkerSpec(method="dfsc", config=resolve_config("dfsc", TINY).to_dict(), dataset="mvtec_loco",
                      data_root=str(small_loco), category=category, evaluate=False)
    for folder, resumed_from in ((middle, {"stage": 0, "step": 2}), (final, {"stage": 1, "step": 3})):
        session = LocalSession(folder)
        run_loop(spec, session)
        training = session.reports[-1][1]["training"]
        assert training["finished"] and training["resumed_from"] == resumed_from and training["step"] == 3


def test_the_mlflow_run_holds_plots_and_one_model_whose_bytes_are_on_disk_once(run):
    from mlflow.tracking import MlflowClient

    tmp, record = run
    client = MlflowClient(f"sqlite:///{tmp / 'mlflow.db'}")
    artifacts = {a.path for a in client.list_artifacts(record["mlflow_run_id"])}
    assert {"heatmaps.png", "metrics.json"} <= artifacts and "model.pt" not in artifacts
    logged = sorted(Path(record["written"]["MLflow model"]).rglob("model.pt"))
    assert len(logged) == 1
    run_model = Path(record["run_dir"]) / "model" / "model.pt"
    assert run_model.samefile(logged[0])


def test_the_closing_line_counts_every_place_once_and_adds_up(run):
    tmp, record = run
    written = record["written"]
    assert set(written) == {"run", "Ray checkpoints", "MLflow run artifacts", "MLflow model"}
    places = measure_places(written)
    inodes = {}
    for place in written.values():
        for file in files_below(Path(place)):
            inodes[(file.stat().st_dev, file.stat().st_ino)] = file.stat().st_size
    assert sum(p.own for p in places) == sum(inodes.values())
    assert sum(p.linked for p in places) > 0  # the lean model, linked into the Ray checkpoint and MLflow
    line = disk_summary(written)
    assert line.endswith(f"{human_bytes(sum(inodes.values()))} in all (hard links counted once)")
    assert all(f"{what} {where} (" in line for what, where in written.items())
    assert json.loads((Path(record["run_dir"]) / "metrics.json").read_text())["written"] == written
