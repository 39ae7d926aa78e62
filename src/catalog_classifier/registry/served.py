"""The served model: an MLflow pyfunc that takes base64-encoded images and answers label, calibrated confidence,
top-3 and whether the label needs a human review.

The pipeline's "model" artifact (pytorch flavour) takes float tensors, which no HTTP client should have to
build. This wrapper carries the same weights with their own preprocessing config, so a request is just the
image file's bytes, base64-encoded, in a column named ``image``:

    POST /invocations  {"dataframe_records": [{"image": "<base64 of the JPEG/PNG file>"}, ...]}
    -> {"predictions": [{"label": ..., "confidence": ..., "top3": "label:p;label:p;label:p",
                         "needs_review": false, "prediction_set": ["label", ...], "error": ""}, ...]}

``confidence`` is calibrated (the temperature the evaluate stage fitted on validation, carried in the model's
``autolabel.json``); ``needs_review`` is false only at or above the threshold that reached
``autolabel.target_precision`` on validation; ``prediction_set`` is the conformal set (the model's quantile) a
reviewer chooses from. An unreadable image has ``confidence`` null, ``needs_review`` true, an empty set.

It is logged as "model from code" (``served_model.py``, no pickle) and the class lives in the package, so it
loads wherever ``catalog_classifier`` is importable: in this project's virtual environment, which is what
``mlflow models serve --env-manager local`` uses (offline: nothing is installed at serve time).
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

log = logging.getLogger(__name__)

SERVED_MODEL_NAME = "served_model"
ARTIFACT_KEY = "classifier"
INPUT_COLUMN = "image"
TRAIN_MANIFEST = "train_manifest.csv"
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


class CatalogClassifierModel(mlflow.pyfunc.PythonModel):
    """pyfunc wrapper: a DataFrame with a base64 ``image`` column in, one prediction row per image out."""

    def load_context(self, context: Any) -> None:
        self.directory = Path(context.artifacts[ARTIFACT_KEY])
        self.classifier = ImageClassifier.from_dir(self.directory)

    @property
    def training_manifest(self) -> Path:
        """The manifest of the images this model was trained on (the gate excludes them from its test set)."""
        return self.directory / TRAIN_MANIFEST

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
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


def log_served_model(classifier_dir: Path, example_image: Path) -> Any:
    """Log the pyfunc in the active run from a folder made by ``predict.write_classifier_dir``; returns ModelInfo."""
    classifier = ImageClassifier.from_dir(classifier_dir)
    example = pd.DataFrame({INPUT_COLUMN: [base64.b64encode(example_image.read_bytes()).decode("ascii")]})
    return mlflow.pyfunc.log_model(
        name=SERVED_MODEL_NAME,
        python_model=str(Path(__file__).with_name("served_model.py")),
        artifacts={ARTIFACT_KEY: str(classifier_dir)},
        signature=_signature(),
        input_example=example,
        pip_requirements=_requirements(),
        metadata={"classes": classifier.classes, "model_name": classifier.config["model_name"],
                  "request": f"base64-encoded image file bytes in column {INPUT_COLUMN!r}",
                  "temperature": classifier.calibration.temperature,
                  "autolabel_threshold": classifier.calibration.threshold,
                  "set_quantile": classifier.calibration.set_quantile, "set_alpha": classifier.calibration.set_alpha},
    )


def load_served_model(model_uri: str) -> CatalogClassifierModel:
    """The wrapper itself (not the pyfunc shell), to predict on files without base64 round trips."""
    return mlflow.pyfunc.load_model(model_uri).unwrap_python_model()


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
                   "MLFLOW_REGISTRY_URI": tracking_uri}
    print("serving: " + " ".join(command), file=sys.stderr, flush=True)
    os.execve(command[0], command, environment)
