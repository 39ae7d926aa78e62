"""Helpers for the registry, predict and serve tests, which share conftest's ``tiny_pipeline`` project.

Each test uses its own registered model name and sends its promotion report to its own file, so they share the
trained runs but never a registry state, and leave the project's DVC outputs as ``dvc repro`` wrote them.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd

_MLFLOW_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")


def repro_promotion(root: Path) -> dict[str, Any]:
    """What the pipeline's own promote stage decided (tests send their reports elsewhere)."""
    return json.loads((root / "artifacts/promotion.json").read_text())


@contextlib.contextmanager
def isolated_mlflow_env() -> Iterator[None]:
    """setup_mlflow exports MLFLOW_REGISTRY_URI; keep it from leaking into later tests' subprocesses."""
    saved = {key: os.environ.get(key) for key in _MLFLOW_ENV}
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def cli_args(root: Path, registered_name: str, **settings: Any) -> list[str]:
    args = ["--params", str(root / "params.yaml"), "--set", f"registry.model_name={registered_name}"]
    for key, value in settings.items():
        args += ["--set", f"{key.replace('__', '.')}={value}"]
    return args


def cli(args: list[str]) -> int:
    """``catalog-classifier`` in this process (its import and model-loading cost is paid once per session)."""
    from catalog_classifier.cli import main

    with isolated_mlflow_env():
        return main(args)


def promote(root: Path, registered_name: str, report: Path, *extra: str, floor: float = 0.0,
            min_delta: float = 0.01) -> dict:
    """Run ``promote`` through the CLI and return the report it wrote to ``report``."""
    args = ["promote", *cli_args(root, registered_name, registry__class_f1_floor=floor,
                                 registry__min_delta=min_delta, registry__out_json=report), *extra]
    assert cli(args) == 0
    return json.loads(report.read_text())


def client(root: Path) -> Any:
    from mlflow import MlflowClient

    uri = f"sqlite:///{root}/mlruns/mlflow.db"
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def eval_predictions(root: Path, model: str) -> pd.DataFrame:
    return pd.read_csv(root / f"artifacts/eval/{model}/predictions.csv")


def eval_f1(root: Path, model: str) -> float:
    return json.loads((root / f"artifacts/eval/{model}/metrics.json").read_text())["test"]["f1_macro"]


def split_images(root: Path) -> list[Path]:
    manifest = pd.read_csv(root / "artifacts/splits/test.csv")
    return [root / "data/Images" / name for name in manifest["image"]]
