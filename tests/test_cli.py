"""The `logicad` command line: bad input fails in one line before training; distill-teacher
and evaluate work on files the tests write themselves."""

from __future__ import annotations

import json

import torch
from torch.utils.data import DataLoader

from logicad.data import load_split
from logicad.models.base import build_method
from logicad.pipelines.train.checkpoints import save_model
from logicad.pipelines.cli import main


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("logicad: error: ") and "\n" not in err
    return err


def test_train_on_a_missing_dataset_fails_before_ray_starts(capsys, tmp_path):
    import ray

    code = main(["train", "--data", str(tmp_path / "missing"), "--category", "c", "--output", str(tmp_path / "o")])
    assert code == 2 and str(tmp_path / "missing") in _one_error_line(capsys)
    assert not ray.is_initialized() and not (tmp_path / "o").exists()


def test_train_with_an_unreachable_mlflow_server_fails_before_training(capsys, small_loco, category, tmp_path):
    import ray

    code = main(["train", "--data", str(small_loco), "--category", category, "--tracking-uri",
                 "http://127.0.0.1:9", "--output", str(tmp_path / "o")])
    err = _one_error_line(capsys)
    assert code == 2 and "http://127.0.0.1:9" in err and "unreachable" in err
    assert not ray.is_initialized()


def test_distill_teacher_writes_a_teacher_that_dfsc_loads(capsys, small_loco, category, tmp_path):
    out = tmp_path / "teacher.pth"
    code = main(["distill-teacher", "--images", str(small_loco / category / "train"), "--backbone", "resnet18",
                 "--steps", "3", "--image-size", "64", "--batch-size", "2", "--out", str(out)])
    assert code == 0 and out.is_file()
    method = build_method("dfsc", image_size=64, teacher_weights=str(out))
    assert str(out) in method.describe()[0]


def test_distill_teacher_on_a_missing_folder_fails_in_one_line(capsys, tmp_path):
    assert main(["distill-teacher", "--images", str(tmp_path / "none"), "--steps", "1"]) == 2
    assert str(tmp_path / "none") in _one_error_line(capsys)


def _fitted_dfsc(small_loco, category):
    """An untrained DFSC at 64 px with its statistics: scoring-ready."""
    method = build_method("dfsc", image_size=64)
    method.prepare(DataLoader(load_split("mvtec_loco", small_loco, category, "train", 64), batch_size=4))
    method.finalize(DataLoader(load_split("mvtec_loco", small_loco, category, "validation", 64), batch_size=4))
    return method


def test_evaluate_rescores_a_saved_model(capsys, small_loco, category, tmp_path):
    method = _fitted_dfsc(small_loco, category)
    save_model(tmp_path / "model" / "model.pt", method)
    code = main(["evaluate", "--model", str(tmp_path / "model"), "--data", str(small_loco), "--category", category,
                 "--output", str(tmp_path / "eval"), "--cpu"])
    assert code == 0
    record = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert record["method"] == "dfsc" and record["n_test"] == 9 and 0 <= record["image_auroc"] <= 1
    assert (tmp_path / "eval" / "heatmaps.png").is_file() and (tmp_path / "eval" / "roc_curves.png").is_file()
    # an evaluation is never overwritten: the same --out is refused, no --out makes a new folder
    again = ["evaluate", "--model", str(tmp_path / "model"), "--data", str(small_loco), "--category", category, "--cpu"]
    assert main([*again, "--output", str(tmp_path / "eval")]) == 2
    assert "already holds an evaluation" in _one_error_line(capsys)


def test_evaluate_without_out_writes_a_new_folder_each_time(small_loco, category, tmp_path, monkeypatch):
    save_model(tmp_path / "model" / "model.pt", _fitted_dfsc(small_loco, category))
    monkeypatch.chdir(tmp_path)
    args = ["evaluate", "--model", str(tmp_path / "model"), "--data", str(small_loco), "--category", category, "--cpu"]
    assert main(args) == 0 and main(args) == 0
    folders = sorted((tmp_path / "outputs" / "evaluate").iterdir())
    assert len(folders) == 2 and all(f.name.startswith(f"dfsc-{category}-") for f in folders)


def test_the_category_a_model_was_evaluated_on_is_read_from_its_record(tmp_path):
    from logicad.pipelines.registry.pyfunc import recorded_category

    (tmp_path / "model").mkdir()
    (tmp_path / "metrics.json").write_text(json.dumps({"category": "screw_bag"}))
    (tmp_path / "model" / "metrics.json").write_text(json.dumps({"category": "screw_bag"}))
    assert recorded_category(str(tmp_path / "model"), f"sqlite:///{tmp_path / 'none.db'}") == "screw_bag"


def test_evaluate_on_a_file_that_is_no_model_fails_in_one_line(capsys, tmp_path):
    bad = tmp_path / "model.pt"
    torch.save({"weights": 1}, bad)
    assert main(["evaluate", "--model", str(bad), "--data", str(tmp_path), "--category", "c"]) == 2
    assert "not a logicad model file" in _one_error_line(capsys)


def test_a_missing_teacher_weights_file_fails_before_training(capsys, small_loco, category, tmp_path):
    import ray

    code = main(["train", "--data", str(small_loco), "--category", category, "--set",
                 f"teacher_weights={tmp_path / 'nope.pth'}", "--output", str(tmp_path / "o")])
    err = _one_error_line(capsys)
    assert code == 2 and "teacher_weights" in err and "nope.pth" in err and not ray.is_initialized()


def _registered(small_loco, category, tmp_path) -> tuple[str, str]:
    """A scoring-ready DFSC registered in a fresh sqlite store: (tracking URI, run id)."""
    import mlflow

    from logicad.pipelines.registry import tracking
    from logicad.pipelines.registry.pyfunc import log_and_register

    method = _fitted_dfsc(small_loco, category)
    model = save_model(tmp_path / "saved" / "model.pt", method)
    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    tracking.preflight(uri)
    run_id = tracking.start_run(uri, "logicad", "r", {"method": "dfsc"}, {})
    mlflow.set_tracking_uri(uri)
    log_and_register(run_id, model, "logicad-dfsc-eval", {"dataset": "mvtec_loco"})
    tracking.end_run(uri, run_id)
    return uri, run_id


def test_evaluate_from_the_registry_resolves_the_store_as_train_does(capsys, small_loco, category, tmp_path,
                                                                    monkeypatch):
    uri, run_id = _registered(small_loco, category, tmp_path)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    capsys.readouterr()
    base = ["evaluate", "--model", "models:/logicad-dfsc-eval/1", "--data", str(small_loco), "--category", category,
            "--cpu"]
    assert main([*base, "--tracking-uri", uri, "--out", str(tmp_path / "e1")]) == 0
    out = capsys.readouterr().out
    assert f"from MLflow run {run_id}" in out and "registered model logicad-dfsc-eval version 1" in out
    assert "None" not in out and "train " not in out
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    assert main([*base, "--output", str(tmp_path / "e2")]) == 0
    assert json.loads((tmp_path / "e2" / "metrics.json").read_text())["mlflow_run_id"] == run_id
    assert list(cwd.iterdir()) == []  # no stray ./mlflow.db or ./mlruns


def test_evaluate_of_a_missing_registered_model_names_the_store_in_one_line(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'empty' / 'mlflow.db'}"
    assert main(["evaluate", "--model", "models:/nope/1", "--tracking-uri", uri, "--data", str(tmp_path),
                 "--category", "c"]) == 2
    err = _one_error_line(capsys)
    assert "models:/nope/1" in err and uri in err


def test_every_command_takes_out_with_output_as_its_alias():
    from logicad.pipelines.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name, command in sub.choices.items():
        flags = {s for a in command._actions for s in a.option_strings}
        if flags & {"--out", "--output"}:
            assert {"--out", "--output"} <= flags, name
            action = next(a for a in command._actions if "--out" in a.option_strings)
            assert action.option_strings[0] == "--out", name


def test_predict_overlays_keep_each_images_size_and_are_named_by_its_relative_path(small_loco, category,
                                                                                 tmp_path):
    import cv2
    import numpy as np
    from PIL import Image

    method = _fitted_dfsc(small_loco, category)
    model = save_model(tmp_path / "model" / "model.pt", method, {"threshold": 0.5})
    source = sorted((small_loco / category / "test" / "good").glob("*.png"))[0]
    wide = np.asarray(Image.open(source).convert("RGB").resize((160, 96)))
    for rel in ("line1/a.png", "line2/a.png"):
        (tmp_path / "images" / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(wide).save(tmp_path / "images" / rel)
    assert main(["predict", "--model", str(model), "--images", str(tmp_path / "images"),
                 "--out", str(tmp_path / "pred")]) == 0
    from logicad.pipelines.registry.predict import overlay

    # the image at its own size, with a caption strip above and the colour bar beside it
    framed = overlay(np.zeros((96, 160, 3), np.uint8), np.zeros((8, 8)), 0.0, 1.0, "score").shape
    assert framed[0] > 96 and framed[1] > 160
    for rel in ("line1/a.png", "line2/a.png"):
        written = cv2.imread(str(tmp_path / "pred" / "overlays" / rel))
        assert written is not None and written.shape == framed


def test_predict_can_skip_unreadable_images_and_counts_the_verdicts(small_loco, category, tmp_path, capsys):
    import shutil

    method = _fitted_dfsc(small_loco, category)
    model = save_model(tmp_path / "model" / "model.pt", method, {"threshold": 0.5})
    images = tmp_path / "images"
    images.mkdir()
    for source in sorted((small_loco / category / "test" / "good").glob("*.png"))[:3]:
        shutil.copy(source, images / source.name)
    (images / "truncated.png").write_bytes((images / source.name).read_bytes()[:200])
    assert main(["predict", "--model", str(model), "--images", str(images), "--out", str(tmp_path / "strict")]) == 2
    assert "truncated.png" in capsys.readouterr().err
    assert main(["predict", "--model", str(model), "--images", str(images), "--out", str(tmp_path / "pred"),
                 "--skip-unreadable"]) == 0
    out = capsys.readouterr().out
    assert "skipped 1 unreadable image(s)" in out and "3 images scored: " in out and "(threshold 0.5)" in out
    assert "truncated.png" in (tmp_path / "pred" / "skipped.csv").read_text()
    assert "[predict] image 3/3" in out


def test_help_builds_the_parser_without_importing_torch():
    import subprocess
    import sys

    code = ("import sys; from logicad.pipelines.cli import build_parser; build_parser(); "
            "heavy = [m for m in ('torch', 'ray', 'mlflow') if m in sys.modules]; print(heavy); assert not heavy")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr[-1000:]


def test_every_flag_of_every_subcommand_has_help():
    import argparse

    from logicad.pipelines.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    missing = {name: [a.option_strings[0] for a in p._actions if a.option_strings and not a.help]
               for name, p in sub.choices.items()}
    assert {k: v for k, v in missing.items() if v} == {}


def test_the_cli_catalogue_is_the_method_registry():
    from logicad.models.base import METHODS as REGISTRY, method_class
    from logicad.pipelines.catalogue import METHODS, PRESETS

    method_class("dfsc")  # imports every built-in method
    assert set(METHODS) == set(REGISTRY) - {"fusion"}  # a fusion is built by `fuse`, not trained
    assert {m: tuple(sorted(REGISTRY[m].config_cls.PRESETS)) for m in METHODS} == \
        {m: tuple(sorted(p)) for m, p in PRESETS.items()}


def test_workers_zero_is_refused_before_anything_starts(capsys, tmp_path):
    import pytest

    with pytest.raises(SystemExit) as exit_:
        main(["train", "--workers", "0", "--output", str(tmp_path / "o")])
    assert exit_.value.code == 2 and "--workers: expected an integer >= 1, got 0" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_no_package_module_imports_the_cli():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    importers = [str(path.relative_to(root)) for folder in ("pipelines", "models", "data")
                 for path in (root / folder).rglob("*.py") if path.name != "cli.py"
                 and any(s in path.read_text() for s in ("from ..cli import", "from .cli import",
                                                          "pipelines.cli import", "from ...cli import"))]
    assert importers == []
