"""Integration: `dvc repro explain@<model>` on a tiny project writes figures and metrics and logs them to MLflow."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import yaml
from conftest import make_tiny_project, run

from catalog_classifier.explanations.explainers import METHODS
from catalog_classifier.explanations.faithfulness import auc

pytestmark = pytest.mark.slow

MODEL = "resnet10t"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def explained(tmp_path_factory: pytest.TempPathFactory, real_data: Path) -> Path:
    root = make_tiny_project(tmp_path_factory.mktemp("explain") / "project", real_data)
    named = sorted(path.name for path in (root / "data" / "Images").iterdir())[0]
    params = yaml.safe_load((root / "params.yaml").read_text())
    # 64 px, not the tiny default 32: resnet10t's last map must be more than 1x1 for a heatmap to have a shape.
    params["train"]["image_size"] = 64
    params["explain"].update(images=[named, "missing.jpg"], n_correct=1, n_wrong=1, batch_size=16)
    params["explain"]["shap"]["max_evals"] = 32
    params["explain"]["faithfulness"].update(n_images=4, steps=4)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["dvc", "repro", f"explain@{MODEL}"], root)
    return root


def test_metrics_are_the_areas_under_the_recorded_curves(explained: Path) -> None:
    metrics = json.loads((explained / f"artifacts/explain/{MODEL}/metrics.json").read_text())
    summary = json.loads((explained / f"artifacts/explain/{MODEL}/summary.json").read_text())
    assert metrics["n_images"] == 4 and metrics["steps"] == 4
    assert len(summary["shap_sample"]["images"]) == 4
    for method in METHODS:
        curves = summary["faithfulness_mean_curves"][method]
        assert len(curves["deletion"]) == len(curves["insertion"]) == 5
        assert metrics[method]["deletion_auc"] == pytest.approx(auc(curves["deletion"]), abs=1e-3)
        assert metrics[method]["insertion_auc"] == pytest.approx(auc(curves["insertion"]), abs=1e-3)
        assert curves["deletion"][0] == pytest.approx(curves["insertion"][-1], abs=1e-4)  # both: the full image
    assert summary["gradcam"]["target_layer"] == "backbone.layer4.-1"
    assert summary["shap"]["masker"] == "blur(16,16)"  # 64 px * blur_fraction 0.25
    assert summary["input_size"] == [64, 64]
    assert sum(entry["n"] for entry in summary["class_means"].values()) == len(
        pd.read_csv(explained / "artifacts/splits/test.csv"))
    assert any(entry["top20_share"] > 0.2 for entry in summary["class_means"].values())  # heat has a shape
    assert metrics["explain_time_s"] > 0


def test_local_figures_for_named_correct_and_wrong_images(explained: Path) -> None:
    summary = json.loads((explained / f"artifacts/explain/{MODEL}/summary.json").read_text())
    predictions = pd.read_csv(explained / f"artifacts/eval/{MODEL}/predictions.csv")
    named = yaml.safe_load((explained / "params.yaml").read_text())["explain"]["images"][0]
    assert summary["named_missing"] == ["missing.jpg"]
    local = summary["local"]
    assert local[0]["image"] == named and local[0]["kind"] == "named"
    others = predictions[predictions["image"] != named]
    expected_kinds = (["correct"] * min(1, int(others["correct"].sum()))
                      + ["wrong"] * min(1, int((~others["correct"]).sum())))
    assert [record["kind"] for record in local[1:]] == expected_kinds
    for record in local[1:]:
        row = predictions.set_index("image").loc[record["image"]]
        assert record["true"] == row["true_label"] and record["predicted"] == row["pred_label"]
    figures = explained / f"artifacts/explain/{MODEL}"
    for record in local:
        assert (figures / record["figure"]).read_bytes()[:8] == PNG_MAGIC
    assert len(list((figures / "figures/local").iterdir())) == len(local)
    for name in ("gradcam_class_means.png", "shap_summary.png", "faithfulness.png"):
        assert (figures / "figures" / name).read_bytes()[:8] == PNG_MAGIC


def test_mlflow_run_of_the_model_holds_the_explanations(explained: Path) -> None:
    metrics = json.loads((explained / f"artifacts/explain/{MODEL}/metrics.json").read_text())
    run_id = json.loads((explained / f"artifacts/models/{MODEL}/run.json").read_text())["run_id"]
    mlflow.set_tracking_uri(f"sqlite:///{explained}/mlruns/mlflow.db")
    logged = mlflow.get_run(run_id)
    for method in METHODS:
        assert logged.data.metrics[f"explain/{method}/deletion_auc"] == pytest.approx(metrics[method]["deletion_auc"])
    client = mlflow.MlflowClient()
    assert {a.path for a in client.list_artifacts(run_id, "explain")} >= {
        "explain/figures", "explain/metrics.json", "explain/summary.json"}
    figures = {a.path for a in client.list_artifacts(run_id, "explain/figures")}
    assert "explain/figures/shap_summary.png" in figures and "explain/figures/local" in figures


def test_stage_is_up_to_date_after_repro(explained: Path) -> None:
    assert "up to date" in run(["dvc", "status", f"explain@{MODEL}"], explained).stdout


def test_a_model_family_without_a_target_layer_is_a_one_line_error(
    explained: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from catalog_classifier.cli import main

    code = main(["explain", "--model", MODEL, "--params", str(explained / "params.yaml"),
                 "--set", "explain.target_layers={mobilevitv2: backbone.stages.-1.-1}"])
    assert code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "catalog-classifier explain: error: no Grad-CAM target layer for resnet10t: add a key prefixing it to "
        "explain.target_layers (known prefixes: mobilevitv2)")
