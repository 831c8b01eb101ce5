"""`logicad export --format onnx` and scoring with the exported file: every method exports with
parity on every validation and test image, a fresh onnxruntime session scores like torch, an
unexportable op fails in one line and leaves nothing, `predict` with the export writes the torch
path's scores.csv without importing torch, and a registered model's version records the parity."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from logicad.data import load_split
from logicad.models.base import Method, MethodConfig, build_method, method_class
from logicad.models.fusion import Fusion
from logicad.pipelines.cli import main
from logicad.pipelines.export.contract import CONTRACT_FILE, MODEL_FILE, PARITY_FILE
from logicad.pipelines.export.errors import ExportError
from logicad.pipelines.export.onnx_export import export_model
from logicad.pipelines.export.onnx_scoring import OnnxScorer
from logicad.pipelines.train.checkpoints import save_model
from torch.utils.data import DataLoader

pytestmark = pytest.mark.usefixtures("one_thread")

#: tiny members of every method (random backbones: the export is under test, not quality)
TINY = {
    "dfsc": {"image_size": 64, "out_channels": 16, "batch_size": 2, "precision": "bf16"},  # the preset's
    "fod": {"image_size": 32, "strides": (16,), "d_model": (16,), "heads": 2, "layers": 1, "batch_size": 2,
            "backbone": "resnet18", "backbone_weights": "random"},
    "glcf": {"sb_dim": 32, "sb_heads": 2, "sb_depth": 1, "decoder_dim": 32, "decoder_heads": 2, "decoder_depth": 1,
             "up_depths": (1, 1, 1), "backbone": "resnet18", "image_size": 64, "decoder": "resnet",
             "batch_size": 2},
    "slsg": {"image_size": 64, "batch_size": 2, "gpt_batch_size": 2, "precision": "32"},
    "patchcore": {"image_size": 64, "backbone_weights": "random"},
    "global_gaussian": {"image_size": 64, "backbone_weights": "random"},
}
METHODS = (*TINY, "fusion")


def _fitted(name: str, data: Path, category: str) -> Method:
    """A tiny untrained `name` with its statistics (prepare/finalize) fitted on the train split;
    the fusion: DFSC (64 px) and FOD (32 px: the graph downsizes for it)."""
    torch.manual_seed(0)
    if name == "fusion":
        method = Fusion.from_members([(member, _fitted(member, data, category)) for member in ("dfsc", "fod")])
    else:
        method = build_method(name, method_class(name).config_cls.build(TINY[name]))
    train = load_split("mvtec_loco", data, category, "train", method.config.image_size)
    method.prepare(DataLoader(train, batch_size=4))
    method.finalize(DataLoader(train, batch_size=4))
    return method.eval()


def _splits(method: Method, data: Path, category: str) -> dict:
    return {split: load_split("mvtec_loco", data, category, split, method.config.image_size)
            for split in ("validation", "test")}


@pytest.fixture(scope="module")
def exported(small_loco, category, tmp_path_factory):
    """name -> (method, export folder, parity report), exported lazily once per module."""
    cache: dict[str, tuple[Method, Path, dict]] = {}
    root = tmp_path_factory.mktemp("exports")

    def get(name: str):
        if name not in cache:
            method = _fitted(name, small_loco, category)
            out = root / name
            report = export_model(method, {"threshold": 0.5}, f"test:{name}", category, out,
                                  _splits(method, small_loco, category), batch_size=5)
            cache[name] = (method, out, report)
        return cache[name]

    return get


@pytest.mark.parametrize("name", METHODS)
def test_every_method_exports_with_parity_on_every_validation_and_test_image(name, exported):
    method, out, report = exported(name)
    assert sorted(p.name for p in out.iterdir()) == sorted([MODEL_FILE, CONTRACT_FILE, PARITY_FILE])
    assert not list(out.parent.glob(f"{name}.tmp-*"))
    assert report["pass"] and report["n_images"] == 12 and report["outputs"]["score"]["ranking_equal"]
    assert report["batch_sizes"] == [5, 32]
    assert report["outputs"]["map"]["max_rel_diff"] <= 1e-4 and report["outputs"]["score"]["max_rel_diff"] <= 1e-4
    assert json.loads((out / PARITY_FILE).read_text())["pass"] is True
    contract = json.loads((out / CONTRACT_FILE).read_text())
    size = method.config.image_size
    assert contract["method"] == name and contract["threshold"] == 0.5
    assert contract["input"]["shape"] == ["N", size, size, 3] and contract["input"]["dtype"] == "uint8"
    assert [o["name"] for o in contract["outputs"]] == ["map", "score"]
    assert contract["preprocessing"]["outside_graph"]["resize"]["function"] == "logicad.data.dataset.resize_image"
    # bf16 autocast (DFSC's preset, also inside the fusion) is exported and checked in float32, and said so
    assert contract["precision"]["model"] == ("bf16" if name in ("dfsc", "fusion") else "32")


def test_a_reloaded_onnx_file_scores_like_torch_in_a_fresh_session(exported, small_loco, category, tmp_path):
    method, out, _ = exported("fod")
    moved = tmp_path / "moved"
    moved.mkdir()
    for name in (MODEL_FILE, CONTRACT_FILE):
        (moved / name).write_bytes((out / name).read_bytes())
    test = load_split("mvtec_loco", small_loco, category, "test", method.config.image_size)
    scorer = OnnxScorer(moved / MODEL_FILE)
    for batch in (1, 3):  # traced at batch 2: other batch sizes run too
        maps, scores = scorer(np.stack(test.images[:batch]))
        want_maps, want_scores = method.score(torch.stack([test[i]["image"] for i in range(batch)]))
        spread = float(want_maps.max() - want_maps.min())
        assert np.abs(maps - want_maps[:, 0].numpy()).max() <= 1e-4 * spread
        assert np.abs(scores - want_scores.numpy()).max() <= 1e-4 * max(spread, 1e-6)


class _Unexportable(Method):
    """Test-only: a map through an FFT, which the ONNX exporter has no translation for."""

    name = "unexportable"
    config_cls = MethodConfig

    def anomaly_map(self, images: torch.Tensor) -> torch.Tensor:
        return torch.fft.fft2(images).abs().mean(dim=1, keepdim=True)


def test_a_method_that_cannot_export_fails_in_one_line_naming_it_and_writes_nothing(small_loco, category, tmp_path,
                                                                                     capfd):
    method = _Unexportable(MethodConfig(image_size=32))
    with pytest.raises(ExportError) as caught:
        export_model(method, {}, "test", category, tmp_path / "out", _splits(method, small_loco, category))
    message = str(caught.value)
    assert "\n" not in message and message.startswith("unexportable: cannot export to ONNX") and "fft" in message
    assert list(tmp_path.iterdir()) == []
    assert "Torch IR graph" not in "".join(capfd.readouterr())  # the exporter's dump of the traced graph


def _scores(path: Path) -> dict[str, tuple[float, str]]:
    with open(path) as handle:
        return {row["path"]: (float(row["score"]), row["verdict"]) for row in csv.DictReader(handle)}


@pytest.fixture(scope="module")
def cli_export(small_loco, category, tmp_path_factory):
    """A FOD model.pt with a threshold, exported by `logicad export`."""
    tmp = tmp_path_factory.mktemp("cli")
    method = _fitted("fod", small_loco, category)
    test = load_split("mvtec_loco", small_loco, category, "test", method.config.image_size)
    scores = method.score(torch.stack([test[i]["image"] for i in range(len(test))]))[1]
    model = save_model(tmp / "model" / "model.pt", method, {"threshold": float(scores.median())})
    code = main(["export", "--model", str(model), "--format", "onnx", "--data", str(small_loco), "--category",
                 category, "--out", str(tmp / "onnx")])
    assert code == 0
    return {"model": model, "onnx": tmp / "onnx", "tmp": tmp, "images": small_loco / category / "test"}


def test_predict_with_the_exported_folder_writes_the_torch_paths_scores_and_overlays(cli_export):
    tmp = cli_export["tmp"]
    assert main(["predict", "--model", str(cli_export["model"]), "--images", str(cli_export["images"]),
                 "--out", str(tmp / "torch")]) == 0
    assert main(["predict", "--model", str(cli_export["onnx"] / MODEL_FILE), "--images", str(cli_export["images"]),
                 "--out", str(tmp / "onnx-predict"), "--batch-size", "4"]) == 0
    want, got = _scores(tmp / "torch" / "scores.csv"), _scores(tmp / "onnx-predict" / "scores.csv")
    assert list(got) == list(want) and len(want) == 9
    spread = max(s for s, _ in want.values()) - min(s for s, _ in want.values())
    assert max(abs(got[p][0] - want[p][0]) for p in want) <= 1e-4 * spread + 1e-6  # csv keeps 6 decimals
    assert [v for _, v in got.values()] == [v for _, v in want.values()]
    assert {"anomalous", "good"} == {v for _, v in want.values()}
    overlays = sorted(p.relative_to(tmp / "torch") for p in (tmp / "torch" / "overlays").rglob("*.png"))
    assert overlays == sorted(p.relative_to(tmp / "onnx-predict")
                              for p in (tmp / "onnx-predict" / "overlays").rglob("*.png"))


def test_predict_with_an_exported_model_never_imports_torch(cli_export):
    out = cli_export["tmp"] / "no-torch"
    script = ("import sys; from logicad.pipelines.cli import main; "
              f"code = main(['predict', '--model', {str(cli_export['onnx'])!r}, '--images', "
              f"{str(cli_export['images'])!r}, '--out', {str(out)!r}]); "
              "assert code == 0, code; assert 'torch' not in sys.modules, 'torch was imported'; print('no torch')")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "no torch" in done.stdout and (out / "scores.csv").is_file()


def test_an_existing_non_empty_out_is_refused_in_one_line_before_any_work(cli_export, capsys):
    code = main(["export", "--model", str(cli_export["model"]), "--out", str(cli_export["onnx"])])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "exists and is not empty" in err


def test_exporting_a_registered_version_logs_parity_and_contract_to_it(cli_export, small_loco, category):
    import mlflow
    import mlflow.tracking
    from logicad.pipelines.registry import tracking
    from logicad.pipelines.registry.pyfunc import log_and_register

    tmp = cli_export["tmp"]
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    run_id = tracking.start_run(uri, tracking.DEFAULT_EXPERIMENT, "export-test", {}, {})
    mlflow.set_tracking_uri(uri)
    ref = log_and_register(run_id, cli_export["model"], "logicad-fod-export-test")
    tracking.end_run(uri, run_id)
    assert main(["export", "--model", ref, "--data", str(small_loco), "--category", category,
                 "--tracking-uri", uri, "--out", str(tmp / "registered")]) == 0
    client = mlflow.tracking.MlflowClient(uri)
    tags = client.get_model_version("logicad-fod-export-test", ref.rsplit("/", 1)[1]).tags
    assert tags["onnx_parity"] == "pass" and float(tags["onnx_max_rel_diff"]) <= 1e-4
    logged = {a.path for a in client.list_artifacts(run_id, "onnx")}
    assert logged == {f"onnx/{CONTRACT_FILE}", f"onnx/{PARITY_FILE}"}


def test_a_traced_patchcore_search_holds_for_more_queries_than_it_was_traced_with():
    from logicad.models.patchcore import nearest

    generator = torch.Generator().manual_seed(0)
    bank = torch.randn(50, 8, generator=generator)
    # a small block: eager search chunks the queries; traced at 4 queries, run at 40
    traced = torch.jit.trace(lambda q: nearest(q, bank, block_elements=200)[0], torch.randn(4, 8))
    queries = torch.randn(40, 8, generator=generator)
    assert torch.allclose(traced(queries), nearest(queries, bank, block_elements=200)[0], atol=1e-6)
