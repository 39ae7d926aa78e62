"""Integration: the real dvc.yaml runs split → train → evaluate → compare on a tiny subset, and MLflow has it all."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from conftest import TINY_MODELS, run

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def reproduced(tiny_pipeline: Path) -> Path:
    return tiny_pipeline


def test_every_stage_wrote_its_metrics(reproduced: Path) -> None:
    quality = json.loads((reproduced / "artifacts/splits/quality.json").read_text())
    assert quality["rows"] == 42 and quality["usable_images"] == 42
    assert quality["split_counts"] == {"train": 28, "val": 7, "test": 7}
    for model in TINY_MODELS:
        trained = json.loads((reproduced / f"artifacts/models/{model}/train_metrics.json").read_text())
        assert trained["epochs_run"] == 2 and trained["weights_used"] == "random"
        history = pd.read_csv(reproduced / f"artifacts/history/{model}.csv")
        assert list(history["epoch"]) == [1, 2]
        evaluated = json.loads((reproduced / f"artifacts/eval/{model}/metrics.json").read_text())
        predictions = pd.read_csv(reproduced / f"artifacts/eval/{model}/predictions.csv")
        assert len(predictions) == 7
        # The reported macro-F1 is the one the predictions file gives.
        from sklearn.metrics import f1_score

        expected = f1_score(predictions["true_id"], predictions["pred_id"], labels=range(7), average="macro",
                            zero_division=0)
        assert evaluated["test"]["f1_macro"] == pytest.approx(expected)
        assert (reproduced / f"artifacts/eval/{model}/confusion.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    comparison = json.loads((reproduced / "artifacts/comparison.json").read_text())
    assert [row["model"] for row in comparison["models"]] == TINY_MODELS
    assert "| resnet10t |" in (reproduced / "artifacts/comparison.md").read_text()


def test_repro_again_has_nothing_to_do(reproduced: Path) -> None:
    status = run(["dvc", "status"], reproduced).stdout
    assert "up to date" in status, status
    metrics = run(["dvc", "metrics", "show", "--json"], reproduced).stdout
    assert "f1_macro" in metrics


def test_dvc_exp_show_answers_which_settings_gave_what(reproduced: Path) -> None:
    """One metrics file (per model val/test macro-F1 and fit time, the model selected) and the models and training
    params first among the params: no per-class figure before them, none at all."""
    shown = json.loads(run(["dvc", "exp", "show", "--json"], reproduced).stdout)
    workspace = next(row for row in shown if row["rev"] == "workspace")["data"]
    summary = json.loads((reproduced / "artifacts/summary_metrics.json").read_text())
    assert workspace["metrics"] == {"artifacts/summary_metrics.json": {"data": summary}}
    assert set(summary) == {"selected", *TINY_MODELS}
    comparison = {row["model"]: row for row in json.loads((reproduced / "artifacts/comparison.json").read_text())[
        "models"]}
    for model in TINY_MODELS:
        assert summary[model] == {"selection_f1_macro": round(comparison[model]["selection_f1_macro"], 4),
                                  "val_f1_macro": round(comparison[model]["val_f1_macro"], 4),
                                  "test_f1_macro": comparison[model]["test_f1_macro"],
                                  "fit_time_s": comparison[model]["fit_time_s"]}
    columns = run(["dvc", "exp", "show", "--csv"], reproduced).stdout.splitlines()[0].split(",")
    metrics = {"selected", *(f"{model}.{key}" for model in TINY_MODELS
                             for key in ("selection_f1_macro", "val_f1_macro", "test_f1_macro", "fit_time_s"))}
    first = min(columns.index(column) for column in metrics)  # the file's (sorted) key order
    assert set(columns[first:first + len(metrics)]) == metrics
    params = columns[first + len(metrics):]
    assert params[0] == "models" and params[1].startswith("train.")
    assert {"train.lr", "train.weights", "train.pretrained.lr", "train.max_epochs"} <= set(params)
    assert not [column for column in columns if "per_class" in column or "class_counts" in column
                or "challenger_class_f1" in column or "deletion" in column]


def test_mlflow_has_one_run_per_model_with_params_metrics_tags(reproduced: Path) -> None:
    mlflow.set_tracking_uri(f"sqlite:///{reproduced}/mlruns/mlflow.db")
    runs = mlflow.search_runs(experiment_names=["catalog-classifier"], output_format="list")
    assert sorted(r.data.tags["model"] for r in runs) == sorted(TINY_MODELS)
    for finished in runs:
        model = finished.data.tags["model"]
        assert finished.info.status == "FINISHED"
        assert finished.data.params["train.max_epochs"] == "2"
        assert finished.data.tags["weights_used"] == "random"
        assert finished.data.tags["data_version"] == "untracked"
        assert len(finished.data.tags["git_commit"]) >= 40
        evaluated = json.loads((reproduced / f"artifacts/eval/{model}/metrics.json").read_text())
        assert finished.data.metrics["test/f1_macro"] == pytest.approx(evaluated["test"]["f1_macro"])
        history = mlflow.MlflowClient().get_metric_history(finished.info.run_id, "val/f1_macro")
        assert [point.step for point in history] == [1, 2]
        artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(finished.info.run_id)}
        assert {"quality.json", "curves.png", "splits", "eval"} <= artifacts
        assert finished.info.artifact_uri.startswith(f"file://{reproduced}/mlruns/artifacts")


def test_logged_model_loads_back_with_identical_predictions(reproduced: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from catalog_classifier.modeling.models import load_classifier

    # The training run's model is MLflow's pickle flavour (lineage only; the registry serves safetensors): loading
    # it is allowed here, whatever a serve or predict run earlier in this worker set for itself.
    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "true")
    mlflow.set_tracking_uri(f"sqlite:///{reproduced}/mlruns/mlflow.db")
    model = TINY_MODELS[1]
    run_id = json.loads((reproduced / f"artifacts/models/{model}/run.json").read_text())["run_id"]
    logged = mlflow.pytorch.load_model(f"runs:/{run_id}/model").eval()
    local, config = load_classifier(reproduced / f"artifacts/models/{model}/model.pt")
    batch = torch.rand(3, 3, *config["input_size"], generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        np.testing.assert_array_equal(logged(batch).numpy(), local(batch).numpy())
    pyfunc = mlflow.pyfunc.load_model(f"runs:/{run_id}/model")
    assert pyfunc.metadata.get_input_schema() is not None
    np.testing.assert_allclose(pyfunc.predict(batch.numpy()), local(batch).detach().numpy(), rtol=1e-5, atol=1e-5)
