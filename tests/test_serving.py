"""REST serving as a user runs it: a small PatchCore registered into a sqlite store, the real
`mlflow models serve -m models:/NAME/1` on 127.0.0.1 (stopped by its pid) in an environment where
logicad is not installed, a batch of base64 PNGs posted as the README's curl line posts them;
answers equal `logicad predict`'s scores.csv."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import sysconfig
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from logicad.data import load_split
from logicad.models.base import build_method
from logicad.pipelines.evaluate.scoring import score_batches
from logicad.pipelines.registry import serving, tracking
from logicad.pipelines.registry.predict import predict
from logicad.pipelines.registry.pyfunc import log_and_register
from logicad.pipelines.train.checkpoints import read_model_file, save_model
from servers import free_port, stop, wait_http

NAME = "logicad-patchcore-serving"
SIZE = 32


def _between_two_scores(scores: list[float]) -> float:
    """A threshold halfway between the two middle scores: mixed verdicts, none on the edge."""
    ranked = np.sort(scores)
    return float(ranked[len(ranked) // 2 - 1: len(ranked) // 2 + 1].mean())


@pytest.fixture(scope="module")
def registered(small_loco, category, tmp_path_factory, one_thread) -> dict:
    """PatchCore at 32 px fitted on the small tree, registered as NAME version 1."""
    method = build_method("patchcore", image_size=SIZE)
    method.prepare(DataLoader(load_split("mvtec_loco", small_loco, category, "train", SIZE), batch_size=4))
    method.finalize(DataLoader(load_split("mvtec_loco", small_loco, category, "validation", SIZE), batch_size=4))
    test = load_split("mvtec_loco", small_loco, category, "test", SIZE)
    threshold = _between_two_scores([s for _, _, s in score_batches(method, test, torch.device("cpu"))])
    work = tmp_path_factory.mktemp("serving")
    model_file = save_model(work / "model" / "model.pt", method, {"threshold": threshold, "threshold_fpr": 0.01})
    uri = f"sqlite:///{work / 'mlflow.db'}"
    run_id = tracking.start_run(uri, "serving-test", "serve", {"method": "patchcore"}, {})
    mlflow.set_tracking_uri(uri)
    model_uri = log_and_register(run_id, model_file, NAME, {"threshold": threshold})
    tracking.end_run(uri, run_id)
    return {"uri": uri, "model_uri": model_uri, "model_file": model_file, "threshold": threshold, "work": work}


@pytest.fixture(scope="module")
def bare(tmp_path_factory) -> dict:
    """A virtual environment without logicad: this one's third-party packages (a .pth naming the
    site-packages folder, whose own .pth files, logicad's editable install among them, are not
    read), and a `uvicorn` launcher, which `mlflow models serve` runs from PATH."""
    root = tmp_path_factory.mktemp("bare-env")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True, timeout=120)
    where = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    purelib = Path(subprocess.run([str(root / "bin" / "python"), "-c", where], check=True, capture_output=True,
                                  text=True).stdout.strip())
    (purelib / "third_party.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    launcher = root / "bin" / "uvicorn"
    launcher.write_text(f"#!{root / 'bin' / 'python'}\nfrom uvicorn.main import main\nmain()\n")
    launcher.chmod(0o755)
    env = {**os.environ, "PATH": f"{root / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("PYTHONPATH", None)
    return {"python": str(root / "bin" / "python"), "env": env}


def test_the_bare_environment_cannot_import_logicad(bare, tmp_path):
    result = subprocess.run([bare["python"], "-c", "import logicad"], cwd=tmp_path, env=bare["env"], check=False,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "No module named 'logicad'" in result.stderr


@pytest.fixture(scope="module")
def server(registered, bare) -> str:
    """`mlflow models serve -m models:/NAME/1 --env-manager local` on a free port, run in the
    environment without logicad (the model brings its own copy)."""
    port = free_port()
    command = [bare["python"], "-m", "mlflow", "models", "serve", "-m", registered["model_uri"], "--env-manager",
               "local", "-h", "127.0.0.1", "-p", str(port), "-w", "1"]
    url = f"http://127.0.0.1:{port}"
    with open(registered["work"] / "serve.log", "w") as log:
        env = {**bare["env"], "MLFLOW_TRACKING_URI": registered["uri"]}
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                   cwd=registered["work"], env=env)
        try:
            wait_http(f"{url}/ping", 180, process)
            yield url
        finally:
            stop(process)


def _post(url: str, body: dict) -> tuple[int, dict]:
    """POST JSON to /invocations, as `curl -H 'Content-Type: application/json' -d @body.json` does."""
    request = urllib.request.Request(f"{url}/invocations", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@pytest.fixture(scope="module")
def images(small_loco, category) -> list[Path]:
    return sorted((small_loco / category / "test").rglob("*.png"))


@pytest.fixture(scope="module")
def predicted(registered, small_loco, category, tmp_path_factory) -> dict[str, dict]:
    """`logicad predict`'s scores.csv for the test images, by path."""
    out = tmp_path_factory.mktemp("predict")
    scores = predict(read_model_file(registered["model_file"]), small_loco / category / "test", out,
                     device=torch.device("cpu"))
    return {row["path"]: row for row in csv.DictReader(open(scores))}


def test_served_scores_and_decisions_equal_predicts_and_the_map_is_left_out(server, images, predicted, registered):
    status, answer = _post(server, serving.request_body(images))
    assert status == 200, answer
    rows = answer["predictions"]
    assert len(rows) == len(images) and all(set(row) == {"score", "anomalous", "threshold"} for row in rows)
    expected = [predicted[str(path)] for path in images]
    np.testing.assert_allclose([r["score"] for r in rows], [float(e["score"]) for e in expected], rtol=1e-5, atol=2e-6)
    assert [r["anomalous"] for r in rows] == [e["verdict"] == "anomalous" for e in expected]
    assert 0 < sum(r["anomalous"] for r in rows) < len(rows)
    assert all(r["threshold"] == pytest.approx(registered["threshold"]) for r in rows)


def test_the_map_comes_back_only_when_asked(server, images):
    status, answer = _post(server, serving.request_body(images[:2], return_map=True))
    assert status == 200, answer
    maps = [np.asarray(row["map"]) for row in answer["predictions"]]
    assert [m.shape for m in maps] == [(SIZE, SIZE)] * 2 and all(np.isfinite(m).all() for m in maps)


def test_records_and_inputs_formats_give_the_same_answer(server, images):
    encoded = [serving.encode_image(p) for p in images[:3]]
    _, split = _post(server, serving.request_body(images[:3]))
    _, records = _post(server, {"dataframe_records": [{"image": e} for e in encoded]})
    _, inputs = _post(server, {"inputs": {"image": encoded}})
    assert split == records == inputs


def test_bad_requests_get_400_with_one_line_naming_the_problem(server, images):
    status, answer = _post(server, {"dataframe_split": {"columns": ["image"], "data": [["bm90IGFuIGltYWdl"]]}})
    assert status == 400 and "row 0: column 'image' does not decode as an image" in answer["message"]
    status, answer = _post(server, {"dataframe_records": [{"path": str(images[0])}]})
    assert status == 400 and "does not read files from its own disk" in answer["message"]


def test_logged_model_has_a_signature_an_example_and_no_logicad_requirement(registered):
    local = Path(mlflow.artifacts.download_artifacts(registered["model_uri"], dst_path=str(registered["work"] / "dl")))
    info = mlflow.models.get_model_info(registered["model_uri"])
    assert info.signature.inputs.input_names() == ["image", "path"]
    assert info.signature.params.params[0].name == "return_map" and info.signature.params.params[0].default is False
    assert {"score", "anomalous", "threshold", "map"} == set(info.signature.outputs.input_names())
    assert (local / "serving_input_example.json").is_file()
    requirements = (local / "requirements.txt").read_text().split()
    assert not any(r.startswith("logicad") for r in requirements)
    assert {r.split("==")[0] for r in requirements} == {"mlflow", *serving.SERVING_PACKAGES}
    assert (local / "code" / "logicad" / "pipelines" / "registry" / "pyfunc.py").is_file()


#: run in the environment without logicad: loads the model, scores one image, and lists the
#: third-party modules it imported that requirements.txt (and what those require) does not cover
_FRESH_CHECK = """
import base64, json, sys, importlib.metadata as md
from pathlib import Path
import pandas as pd
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
import mlflow.pyfunc
model_dir, image = sys.argv[1], sys.argv[2]
out = mlflow.pyfunc.load_model(model_dir).predict(
    pd.DataFrame({"image": [base64.b64encode(Path(image).read_bytes()).decode()]}))
import logicad
todo = [canonicalize_name(Requirement(r).name) for r in Path(model_dir, "requirements.txt").read_text().split()]
closure = set()
while todo:
    name = todo.pop()
    if name not in closure:
        closure.add(name)
        try:
            requires = md.requires(name) or []
        except md.PackageNotFoundError:
            continue
        todo += [canonicalize_name(r.name) for r in map(Requirement, requires)
                 if r.marker is None or r.marker.evaluate({"extra": ""})]
owners = md.packages_distributions()
tops = {m.split(".")[0] for m in list(sys.modules)} - {"logicad"}
unlisted = sorted(t for t in tops if owners.get(t) and not {canonicalize_name(d) for d in owners[t]} & closure)
print(json.dumps({"logicad": logicad.__file__, "score": float(out["score"][0]), "unlisted": unlisted}))
"""


def test_model_scores_where_logicad_is_not_installed_and_its_requirements_cover_every_import(
        registered, bare, images, predicted, tmp_path):
    local = Path(mlflow.artifacts.download_artifacts(registered["model_uri"], dst_path=str(tmp_path / "model")))
    result = subprocess.run([bare["python"], "-c", _FRESH_CHECK, str(local), str(images[0])], cwd=tmp_path,
                            env=bare["env"], check=False, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert Path(report["logicad"]).is_relative_to(local / "code")
    assert report["unlisted"] == [], "imported while scoring but not covered by requirements.txt"
    assert report["score"] == pytest.approx(float(predicted[str(images[0])]["score"]), rel=1e-5, abs=2e-6)


def _threshold_command(argv: list[str]) -> int:
    import argparse

    from logicad.pipelines.registry.rethreshold import add_threshold

    parser = argparse.ArgumentParser()
    add_threshold(parser.add_subparsers())
    args = parser.parse_args(["threshold", *argv])
    return args.func(args)


def test_threshold_command_refits_on_a_labelled_folder_and_registers_a_new_version(
        registered, small_loco, category, tmp_path, capsys):
    import shutil

    labelled = tmp_path / "labelled"
    shutil.copytree(small_loco / category / "test" / "good", labelled / "good")
    shutil.copytree(small_loco / category / "test" / "logical_anomalies", labelled / "missing_part")
    argv = ["--model", registered["model_uri"], "--fpr", "0.01", "--labelled", str(labelled), "--out",
            str(tmp_path / "new"), "--register", "--tracking-uri", registered["uri"], "--cpu"]
    assert _threshold_command(argv) == 0
    report = json.loads((tmp_path / "new" / "threshold.json").read_text())
    payload = read_model_file(tmp_path / "new" / "model.pt")
    good = sorted((labelled / "good").glob("*.png"))
    assert report["threshold_n_normals"] == len(good) and report["fp"] == 0  # 1 % of 3 normals: none above
    assert payload["threshold"] == report["threshold"] and payload["threshold_fpr"] == 0.01
    assert report["previous_threshold"] == pytest.approx(registered["threshold"])
    assert report["tp"] + report["fn"] == len(list((labelled / "missing_part").glob("*.png")))
    assert "registered as models:/logicad-patchcore-serving/2" in capsys.readouterr().out
    tags = mlflow.tracking.MlflowClient(registered["uri"]).get_model_version(NAME, "2").tags
    assert float(tags["threshold"]) == report["threshold"] and tags["threshold_from"] == f"models:/{NAME}/1"
    with pytest.raises(ValueError, match="already holds a model"):
        _threshold_command(argv)
