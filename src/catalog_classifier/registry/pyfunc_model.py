"""The served model: base64-encoded images in; label, calibrated confidence, top-3 and whether the label needs a
human review out, behind ``mlflow models serve``'s HTTP contract:

    POST /invocations  {"dataframe_records": [{"image": "<base64 of the JPEG/PNG file>"}, ...]}
    -> {"predictions": [{"label": ..., "confidence": ..., "top3": "label:p;label:p;label:p",
                         "needs_review": false, "prediction_set": ["label", ...], "error": ""}, ...]}

``confidence`` is calibrated (the temperature the evaluate stage fitted on validation, carried in the model's
``autolabel.json``); ``needs_review`` is false only at or above the threshold that reached
``autolabel.target_precision`` on validation; ``prediction_set`` is the conformal set (the model's quantile) a
reviewer chooses from. An unreadable image has ``confidence`` null, ``needs_review`` true, an empty set.

Nothing the server runs comes from the registry: ``serve`` downloads the champion's data files and checks their
hashes (:mod:`catalog_classifier.registry.artifact`), then writes a *local* pyfunc folder whose MLmodel names this
module as its ``loader_module`` (``_load_pyfunc``: the package's own code, importable in this virtual environment,
which is what ``mlflow models serve --env-manager local`` uses; offline, nothing installed at serve time). The
server runs with ``MLFLOW_ALLOW_PICKLE_DESERIALIZATION=false``.
"""

from __future__ import annotations

import base64
import binascii
import importlib.metadata
import logging
import os
import sys
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd

from catalog_classifier.modeling.conformal import split_set
from catalog_classifier.modeling.prediction import OUTPUT_COLUMNS, ImageClassifier
from catalog_classifier.registry.artifact import check_names

log = logging.getLogger(__name__)

INPUT_COLUMN = "image"
NO_PICKLE_ENV = "MLFLOW_ALLOW_PICKLE_DESERIALIZATION"
RESPONSE_COLUMNS = [column for column in OUTPUT_COLUMNS if column != "image"]
# Recorded with the model for other environments; the local env manager installs nothing.
REQUIREMENTS = ("mlflow", "torch", "torchvision", "timm", "pandas", "numpy", "pillow", "scikit-learn", "pydantic",
                "pyyaml")


def decode_base64(value: Any) -> bytes | None:
    """Bytes of one request cell, or ``None`` when it is not base64 (reported per row, never raised)."""
    if not isinstance(value, str | bytes):
        return None
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return None


class CatalogClassifierModel:
    """A verified classifier folder behind the pyfunc interface: a DataFrame with a base64 ``image`` column in,
    one prediction row per image out."""

    def __init__(self, directory: Path) -> None:
        check_names({path.name for path in directory.iterdir()}, str(directory))
        self.directory = directory
        self.classifier = ImageClassifier.from_dir(directory)

    def predict(self, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        if INPUT_COLUMN not in model_input:
            raise ValueError(f"the request needs a column named {INPUT_COLUMN!r} holding base64-encoded images")
        cells = list(model_input[INPUT_COLUMN])
        frame = self.classifier.predict_encoded([f"row {i}" for i in range(len(cells))],
                                                [decode_base64(cell) for cell in cells])
        # No confidence for an unreadable image: null in the JSON answer (NaN is not valid JSON).
        confidence = frame["confidence"].astype(object)
        frame["confidence"] = confidence.where(frame["confidence"].notna(), None)
        frame["needs_review"] = frame["needs_review"].astype(bool)
        frame["prediction_set"] = frame["prediction_set"].map(split_set)  # a JSON list of labels
        return frame[RESPONSE_COLUMNS]


def _load_pyfunc(data_path: str) -> CatalogClassifierModel:
    """MLflow's ``loader_module`` entry point for the local pyfunc folder :func:`write_local_pyfunc` writes."""
    return CatalogClassifierModel(Path(data_path))


def _requirements() -> list[str]:
    pinned = []
    for name in REQUIREMENTS:
        try:
            pinned.append(f"{name}=={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            pinned.append(name)
    return pinned


def _signature() -> Any:
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema
    from mlflow.types.schema import Array

    return ModelSignature(
        inputs=Schema([ColSpec("string", INPUT_COLUMN)]),
        outputs=Schema([ColSpec("string", "label"), ColSpec("double", "confidence", required=False),
                        ColSpec("string", "top3"), ColSpec("boolean", "needs_review"),
                        ColSpec(Array("string"), "prediction_set"), ColSpec("string", "error")]),
    )


def write_local_pyfunc(verified: Path, destination: Path) -> Path:
    """A pyfunc folder on this machine around a verified classifier folder: its MLmodel names this module (the
    package's code) as loader, so ``mlflow models serve`` runs nothing that came from the registry."""
    mlflow.pyfunc.save_model(path=str(destination), loader_module=__name__, data_path=str(verified),
                             signature=_signature(), pip_requirements=_requirements())
    return destination


def serve_command(model_uri: str, host: str, port: int) -> list[str]:
    """``mlflow models serve`` in this interpreter's environment: offline, nothing installed."""
    return [sys.executable, "-m", "mlflow", "models", "serve", "--model-uri", model_uri, "--env-manager", "local",
            "--host", host, "--port", str(port), "--workers", "1"]


def exec_server(model_uri: str, tracking_uri: str, host: str, port: int) -> None:
    """Replace this process with the model server (so signals reach it directly)."""
    command = serve_command(model_uri, host, port)
    # mlflow starts `uvicorn` by name: this interpreter's bin/ first, even when the venv is not activated.
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    environment = {**os.environ, "PATH": path, "MLFLOW_TRACKING_URI": tracking_uri,
                   "MLFLOW_REGISTRY_URI": tracking_uri, NO_PICKLE_ENV: "false"}
    print("serving: " + " ".join(command), file=sys.stderr, flush=True)
    os.execve(command[0], command, environment)
