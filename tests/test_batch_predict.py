"""Batch scoring on Ray Data (`logicad predict --workers N`): the same scores as `predict` on a
local folder and on an s3:// prefix of the test S3 server, shards written as they finish, an
interrupted run resumed without rescoring finished shards, and the refusals (a non-empty output
folder, a different plan, an unreadable image). Real local Ray (2 CPUs) and moto's server."""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from images import square_images

from logicad.data.errors import DatasetError
from logicad.models.base import build_method
from logicad.pipelines.registry.batch_predict import run_batch_predict
from logicad.pipelines.registry.batch_shards import (BatchPlanError, Plan, fingerprint, list_inputs, model_digest,
                                                     open_output)
from logicad.pipelines.registry.predict import predict
from logicad.pipelines.train.checkpoints import read_model_file, save_model

pytestmark = pytest.mark.usefixtures("one_thread")

N_IMAGES = 10
SHARD = 3  # 4 shards: 3 + 3 + 3 + 1


@pytest.fixture(scope="module")
def ray_local():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=300 * 1024 ** 2, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def payload(tmp_path_factory) -> dict:
    """A 64 px global Gaussian on a random backbone, fitted on generated images, saved with a
    threshold between its scores so both verdicts occur."""
    torch.manual_seed(0)
    method = build_method("global_gaussian", image_size=64, backbone_weights="random")
    method.prepare([{"image": square_images(8, 64), "index": torch.arange(8), "label": torch.zeros(8)}])
    method.eval()
    scores = method.score(square_images(4, 64, seed=5))[1]
    path = save_model(tmp_path_factory.mktemp("model") / "model.pt", method,
                      {"threshold": float(scores.median())})
    return read_model_file(path)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """N_IMAGES PNGs and JPEGs of several sizes in nested folders (sorted order crosses them)."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for i in range(N_IMAGES):
        size = 48 + 8 * (i % 4)
        image = rng.integers(0, 255, (size, size + 4, 3), dtype=np.uint8)
        image[i * 3:i * 3 + 12, 10:22] = 255
        target = root / ("a" if i % 2 else "b") / f"img{i:02d}.{'png' if i % 3 else 'jpg'}"
        target.parent.mkdir(exist_ok=True)
        cv2.imwrite(str(target), image)
    return root


@pytest.fixture(scope="module")
def predicted(payload, folder, tmp_path_factory) -> Path:
    """`predict`'s output folder for the folder (single process)."""
    out = tmp_path_factory.mktemp("reference")
    predict(payload, folder, out, device=torch.device("cpu"))
    return out


@pytest.fixture(scope="module")
def reference(predicted) -> list[list[str]]:
    """`predict`'s scores.csv rows."""
    return _rows(predicted / "scores.csv")


def _rows(path: Path) -> list[list[str]]:
    with open(path, newline="") as handle:
        return list(csv.reader(handle))[1:]


def _overlays(out: Path) -> set[str]:
    return {p.relative_to(out / "overlays").as_posix() for p in (out / "overlays").rglob("*.png")}


def _assert_same_scores(got: list[list[str]], want: list[list[str]]) -> None:
    """Same paths and verdicts, scores equal to float32 rounding (a shard batches other images
    together than `predict` does, so the last digit may move)."""
    assert [(row[0], row[2]) for row in got] == [(row[0], row[2]) for row in want]
    assert np.allclose([float(row[1]) for row in got], [float(row[1]) for row in want], rtol=1e-6, atol=0)


def test_interrupted_run_resumed_on_two_workers_scores_only_the_missing_shards_and_equals_predict(
        ray_local, payload, folder, reference, predicted, tmp_path, capsys):
    out = tmp_path / "batch"
    first = run_batch_predict(payload, "model.pt", str(folder), out, workers=1, shard_size=SHARD, stop_after=2)
    assert first.scores is None and first.scored_shards == 2 and not (out / "scores.csv").exists()
    assert len(list((out / "shards").glob("part-*.csv"))) == 2
    second = run_batch_predict(payload, "model.pt", str(folder), out, workers=2, shard_size=SHARD, resume=True)
    assert (second.scored_shards, second.kept_shards, second.images) == (2, 2, N_IMAGES)
    _assert_same_scores(_rows(out / "scores.csv"), reference)
    assert {row[2] for row in reference} == {"good", "anomalous"}
    assert sorted(p.name for p in (out / "shards").iterdir()) == [f"part-{i:05d}.csv" for i in range(4)]
    assert _overlays(out) == _overlays(predicted)
    printed = capsys.readouterr().out
    assert "resuming" in printed and "2 of 4 shards already written, 2 to score" in printed
    assert f"{N_IMAGES}/{N_IMAGES} images (4/4 shards)" in printed and "images/s ETA" in printed
    assert f"{N_IMAGES} images scored:" in printed


def test_batch_over_an_s3_prefix_reads_on_workers_and_equals_predict(ray_local, payload, folder, reference,
                                                                     predicted, tmp_path, s3_endpoint, bucket,
                                                                     s3_env, monkeypatch):
    from s3_server import client

    s3 = client(s3_endpoint)
    for path in sorted(folder.rglob("*.*")):
        s3.upload_file(str(path), bucket, f"line/{path.relative_to(folder).as_posix()}")
    s3.put_object(Bucket=bucket, Key="line/notes.txt", Body=b"not an image")
    s3.put_object(Bucket=bucket, Key="line/b/zz-broken.png", Body=b"\x89PNG truncated")
    for key, value in s3_env.items():
        monkeypatch.setenv(key, value)
    out = tmp_path / "s3batch"
    run_batch_predict(payload, "model.pt", f"s3://{bucket}/line", out, workers=1, shard_size=4,
                      skip_unreadable=True)
    [(skipped, why)] = _rows(out / "skipped.csv")
    assert skipped == f"s3://{bucket}/line/b/zz-broken.png" and why.startswith(f"{skipped}: unreadable")
    got = [[row[0].removeprefix(f"s3://{bucket}/line/"), *row[1:]] for row in _rows(out / "scores.csv")]
    _assert_same_scores(got, [[str(Path(row[0]).relative_to(folder)), *row[1:]] for row in reference])
    assert _overlays(out) == _overlays(predicted)


def test_a_non_empty_output_folder_is_refused_and_nothing_is_overwritten(payload, folder, tmp_path):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "scores.csv").write_text("earlier results\n")
    with pytest.raises(BatchPlanError, match="not empty.*--resume"):
        run_batch_predict(payload, "m", str(folder), out, shard_size=SHARD)
    assert [p.name for p in out.iterdir()] == ["scores.csv"]
    assert (out / "scores.csv").read_text() == "earlier results\n"


def test_resume_with_another_plan_or_nothing_to_resume_is_refused_in_one_line(payload, folder, tmp_path):
    out = tmp_path / "planned"
    with pytest.raises(BatchPlanError, match="nothing to resume"):
        run_batch_predict(payload, "m", str(folder), out, shard_size=SHARD, resume=True)
    items = list_inputs(str(folder))
    plan = Plan("m", model_digest(payload), str(folder), len(items), fingerprint(items), SHARD, 0.5, True)
    open_output(out, plan, resume=False)
    with pytest.raises(BatchPlanError, match=r"shard_size: was 3, now 5") as caught:
        run_batch_predict(payload, "m", str(folder), out, shard_size=5, threshold=0.5, resume=True)
    assert "\n" not in str(caught.value)


def test_an_unreadable_image_stops_the_run_in_one_line_naming_it(ray_local, payload, folder, tmp_path):
    broken = tmp_path / "images"
    broken.mkdir()
    for path in sorted(folder.rglob("*.*"))[:4]:
        (broken / path.name).write_bytes(path.read_bytes())
    (broken / "img00b.png").write_bytes(b"\x89PNG truncated")
    with pytest.raises(DatasetError, match=r"img00b\.png: unreadable.*--skip-unreadable") as caught:
        run_batch_predict(payload, "m", str(broken), tmp_path / "stopped", shard_size=5, overlays=False)
    assert "\n" not in str(caught.value)
    assert not (tmp_path / "stopped" / "scores.csv").exists()


def test_batch_flags_choose_the_ray_path_and_refuse_zero_workers_without_importing_torch():
    import subprocess
    import sys

    code = ("import argparse, sys\n"
            "from logicad.pipelines.registry.batch_predict import add_batch_flags, wants_batch\n"
            "p = argparse.ArgumentParser(); add_batch_flags(p)\n"
            "assert not wants_batch(p.parse_args([]))\n"
            "args = p.parse_args(['--workers', '2', '--shard-size', '64', '--no-overlays'])\n"
            "assert wants_batch(args) and (args.workers, args.shard_size, args.overlays) == (2, 64, False)\n"
            "assert wants_batch(p.parse_args(['--resume'])) and wants_batch(p.parse_args(['--ray']))\n"
            "heavy = [m for m in ('torch', 'ray', 'mlflow', 'numpy') if m in sys.modules]; assert not heavy, heavy\n"
            "p.parse_args(['--workers', '0'])\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "--workers: expected an integer >= 1, got 0" in done.stderr, done.stderr
