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


# The tiny pipeline's test split holds 7 images: no paired interval at 95 % can clear 0 there, so the registry
# mechanics tests (alias moves, rollback, dry run, races) judge with a 5 % interval, about the point difference.
# The rule's statistics are tested on constructed cases of realistic size (test_registry.py, test_uncertainty.py).
TINY_SPLIT_CONFIDENCE = 0.05


def cli_args(root: Path, registered_name: str, **settings: Any) -> list[str]:
    args = ["--params", str(root / "params.yaml"), "--set", f"registry.model_name={registered_name}"]
    settings = {"uncertainty__confidence": TINY_SPLIT_CONFIDENCE, **settings}
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


def calibrated(frame: pd.DataFrame, classes: list[str], temperature: float) -> pd.DataFrame:
    """Calibrated class probabilities from the evaluate stage's (uncalibrated) ``p_<class>`` columns, by hand:
    softmax(log p / T), the same as softmax(logits / T) since log p = logits - a per-row constant."""
    import numpy as np

    logp = np.log(np.clip(frame[[f"p_{name}" for name in classes]].to_numpy(dtype=float), 1e-12, None))
    scaled = np.exp((logp - logp.max(1, keepdims=True)) / temperature)
    return pd.DataFrame(scaled / scaled.sum(1, keepdims=True), columns=classes, index=frame.index)


def midpoint_threshold(confidences: list[float]) -> float:
    """A threshold in the middle of the widest gap between neighbouring confidences of the middle half: no
    confidence lies within rounding distance of it, so which images pass is known exactly."""
    values = sorted(set(round(value, 6) for value in confidences))
    assert len(values) >= 2, "every confidence is equal: no threshold splits them"
    pairs = list(zip(values, values[1:], strict=False))
    middle = pairs[len(pairs) // 4: max(len(pairs) // 4 + 1, 3 * len(pairs) // 4)]
    low, high = max(middle, key=lambda pair: pair[1] - pair[0])
    assert high - low > 1e-4, f"confidences too close to split safely: {values}"
    return round((low + high) / 2, 6)


def write_autolabel(eval_dir: Path, model: str, temperature: float, threshold: float | None,
                    target_precision: float = 0.9) -> Path:
    """A hand-made ``autolabel.json`` (the evaluate stage's calibration) with only what prediction reads."""
    path = eval_dir / model / "autolabel.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"model": model, "temperature": temperature, "target_precision": target_precision,
                                "reachable": threshold is not None, "threshold": threshold,
                                "val": {}, "test": {"coverage": 0.5, "precision": 0.9}, "ece": {}}))
    return path
