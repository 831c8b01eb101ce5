"""The trained detector as an MLflow pyfunc model that loads, scores and decides by itself.

    model = mlflow.pyfunc.load_model("models:/logicad-dfsc-parts_box@champion")
    out = model.predict(pd.DataFrame({"image": [serving.encode_image("a.png")]}))
    out["score"], out["anomalous"]          # per image; anomalous is None without a recorded threshold
    model.predict(frame, params={"return_map": True})["map"]  # plus the anomaly maps (input size)

Input and answer: `serving.py` (the same over REST with `mlflow models serve`). The logged model
carries its signature, an input example, a copy of logicad's code and the third-party
requirements, so it serves where logicad is not installed.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import mlflow.tracking
import numpy as np
import pandas as pd
import torch

from ..train.checkpoints import MODEL_FILE, ModelFileError, method_from_payload, read_model_file
from . import serving

MODEL_ARTIFACT = "model"
#: the file MLflow logs as the model's code (models-from-code: nothing pickled)
MODEL_CODE = Path(__file__).with_name("model_code.py")


class LogicadModel(mlflow.pyfunc.PythonModel):
    """Owns loading (`model.pt` and its threshold), batched scoring and the decision."""

    #: inputs are described by the logged signature (serving.model_signature), which MLflow's
    #: type-hint validation cannot express; without this it warns on every import of this module
    _skip_type_hint_validation = True

    batch_size = 16

    def load_context(self, context) -> None:
        from ..evaluate.compiled import make_scorer

        payload = read_model_file(context.artifacts[MODEL_ARTIFACT])
        self.threshold = None if payload.get("threshold") is None else float(payload["threshold"])
        self.method = method_from_payload(payload)
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.method.to(self.device)
        # compiled on CUDA (warmed up per batch bucket on first use, checked against eager)
        self.scorer = make_scorer(self.method, self.device)

    def predict(self, context, model_input, params: dict | None = None) -> pd.DataFrame:
        """Per image: score, anomalous, threshold, and map when `params["return_map"]`."""
        return_map = bool((params or {}).get(serving.RETURN_MAP, False))
        scores, maps = self.score(serving.images_from_input(model_input, allow_paths=not serving.in_server()))
        return serving.predictions(scores, maps if return_map else None, self.threshold)

    def score(self, rgb_images: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """(N scores, N x H x W maps at the model's input size) for H x W x 3 uint8 images."""
        from logicad.data.dataset import resize_image
        from logicad.data.transforms import eval_transform

        transform = eval_transform()
        size = self.method.config.image_size
        images = [transform(image=resize_image(im, size))["image"] for im in rgb_images]
        scores, maps = [], []
        with torch.inference_mode():
            for start in range(0, len(images), self.batch_size):
                batch = torch.stack(images[start:start + self.batch_size]).to(self.device)
                amap, score = self.scorer(batch)
                scores.append(score.float().cpu().numpy())
                maps.append(amap[:, 0].float().cpu().numpy())
        return np.concatenate(scores), np.concatenate(maps)


def _model_arguments(model_file: Path, code_dir: Path) -> dict[str, Any]:
    """What `log_model` / `save_model` get: the code file, the model file, a copy of logicad's
    code (bundled under `code_dir`), the signature, an input example and the requirements."""
    return {"python_model": str(MODEL_CODE), "artifacts": {MODEL_ARTIFACT: str(model_file)},
            "code_paths": [str(serving.bundle_code(code_dir))], "signature": serving.model_signature(),
            "input_example": serving.input_example(), "pip_requirements": serving.pip_requirements()}


def save_local(model_file: Path, path: Path) -> Path:
    """Write `model_file` as a pyfunc model folder at `path` (no tracking store needed), the same
    model `log_and_register` logs: `mlflow.pyfunc.load_model(path)` or `mlflow models serve -m path`."""
    if Path(path).exists():
        raise FileExistsError(f"{path}: already exists; expected a new folder for the pyfunc model")
    with tempfile.TemporaryDirectory() as code:
        mlflow.pyfunc.save_model(str(path), **_model_arguments(Path(model_file), Path(code)))
    return Path(path)


def log_and_register(run_id: str, model_file: Path, registered_model_name: str | None,
                     version_tags: dict[str, Any] | None = None) -> str:
    """Log `model_file` as a pyfunc model in `run_id` (and register it, with `version_tags`
    saying what data it was evaluated on and its threshold); the model URI. The model carries
    its signature, an input example, a copy of logicad's code (`code_paths`) and the pinned
    third-party requirements (`serving.pip_requirements`). MLflow runs the input example through
    the model once while logging (its check that the example serves)."""
    with tempfile.TemporaryDirectory() as code, mlflow.start_run(run_id=run_id):
        info = mlflow.pyfunc.log_model(name=MODEL_ARTIFACT, registered_model_name=registered_model_name,
                                       **_model_arguments(Path(model_file), Path(code)))
    if registered_model_name and info.registered_model_version is not None:
        client = mlflow.tracking.MlflowClient()
        for key, value in (version_tags or {}).items():
            client.set_model_version_tag(registered_model_name, str(info.registered_model_version), key, str(value))
        return f"models:/{registered_model_name}/{info.registered_model_version}"
    return info.model_uri


def load_payload_any(model: str) -> dict[str, Any]:
    """A model file's payload from its path, its folder, or an MLflow model URI (models:/, runs:/)."""
    if ":/" not in model or Path(model).exists():
        return read_model_file(model)
    import mlflow.artifacts

    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model))
    except Exception as exc:  # MLflow raises several types for a missing model
        raise ModelFileError(f"{model}: cannot load this MLflow model ({exc.__class__.__name__}: {exc})") from None
    found = sorted(local.rglob(MODEL_FILE))
    if not found:
        raise ModelFileError(f"{model}: no {MODEL_FILE} among the model's artifacts; expected a logicad model")
    return read_model_file(found[0])


def load_method_any(model: str):
    """A method (eval mode) from a model path or MLflow model URI."""
    return method_from_payload(load_payload_any(model))


def check_store_exists(model: str, tracking_uri: str) -> None:
    """A models:/ or runs:/ URI against an embedded sqlite store that does not exist fails in
    one line (instead of MLflow creating an empty store and then not finding the model)."""
    if tracking_uri.startswith("sqlite:///") and not Path(tracking_uri.removeprefix("sqlite:///")).is_file():
        raise ModelFileError(f"{model}: the MLflow store {tracking_uri} does not exist, so nothing was "
                             "registered there; expected the store `logicad train` used (set --tracking-uri "
                             "or MLFLOW_TRACKING_URI)")


def registered_version(model: str, tracking_uri: str, default: str = "1"):
    """The registry's ModelVersion for `models:/NAME/V`, `models:/NAME@ALIAS` or
    `models:/NAME/latest` (the newest); `models:/NAME` means version `default`. MLflow's
    exceptions for a missing model pass through."""
    client = mlflow.tracking.MlflowClient(tracking_uri)
    name, _, version = model.removeprefix("models:/").partition("/")
    name, at, alias = name.partition("@")
    if at:
        return client.get_model_version_by_alias(name, alias)
    version = version.strip("/") or default
    if version == "latest":
        version = str(max(int(v.version) for v in client.search_model_versions(f"name='{name}'")))
    return client.get_model_version(name, version)


def folder_record(model: str) -> tuple[Path, dict[str, Any]]:
    """(path, contents) of the `metrics.json` that `logicad train` writes beside a model folder;
    contents {} when it is missing or unreadable."""
    import json

    path = Path(model)
    record = (path if path.is_dir() else path.parent) / "metrics.json"
    try:
        return record, json.loads(record.read_text()) if record.is_file() else {}
    except ValueError:
        return record, {}


def model_origin(model: str, tracking_uri: str) -> dict[str, Any]:
    """Where a model came from: {run_id, source} for a registered model (models:/NAME/V or
    models:/NAME@ALIAS), a run's model (runs:/ID/...) or a model folder that `logicad train`
    wrote (its metrics.json names the run); {} when nothing says."""
    if model.startswith("runs:/"):
        check_store_exists(model, tracking_uri)
        return {"run_id": model.removeprefix("runs:/").split("/")[0], "source": model}
    if model.startswith("models:/"):
        check_store_exists(model, tracking_uri)
        try:
            version = registered_version(model, tracking_uri)
        except Exception as exc:  # MLflow raises RestException / MlflowException for a missing model
            raise ModelFileError(f"{model}: not found in the registry at {tracking_uri} ({exc.__class__.__name__}); "
                                 "expected a model `logicad train` registered there (set --tracking-uri or "
                                 "MLFLOW_TRACKING_URI)") from None
        return {"run_id": version.run_id, "source": f"registered model {version.name} version {version.version}"}
    record, contents = folder_record(model)
    run_id = contents.get("mlflow_run_id")
    return {"run_id": run_id, "source": f"recorded in {record}"} if run_id else {}


def recorded_category(model: str, tracking_uri: str) -> str | None:
    """The category a model was evaluated on, where something records it: a registered
    version's tag, a run's param, or the `metrics.json` beside a model folder; else None."""
    if model.startswith("models:/"):
        return registered_version(model, tracking_uri).tags.get("category") or None
    if model.startswith("runs:/"):
        client = mlflow.tracking.MlflowClient(tracking_uri)
        return client.get_run(model.removeprefix("runs:/").split("/")[0]).data.params.get("category") or None
    return folder_record(model)[1].get("category") or None
