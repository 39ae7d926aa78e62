"""Explain stage: local Grad-CAM and SHAP figures, class-level views and faithfulness, logged to the model's run.

The work is :func:`catalog_classifier.explanations.model_explanation.explain_model`; this stage writes its summary
and metrics, logs them with the figures to the model's MLflow run and prints one line.
"""

from __future__ import annotations

from typing import Any

from catalog_classifier.config.layout import Project
from catalog_classifier.explanations.explainers import METHODS
from catalog_classifier.explanations.model_explanation import explain_model
from catalog_classifier.ops.io import read_json, write_json
from catalog_classifier.registry.tracking import setup_mlflow


def run_explain(project: Project, model_name: str) -> dict[str, Any]:
    """Explain one trained model, write its summary and metrics, log them to its run; the metrics."""
    summary, metrics = explain_model(project, model_name)
    write_json(project.explain_summary(model_name), summary)
    write_json(project.explain_metrics(model_name), metrics)
    _log_to_run(project, model_name, metrics)
    print(f"{model_name}: explained {len(summary['local'])} images in {metrics['explain_time_s']:.0f}s; "
          + "; ".join(f"{method} deletion/insertion AUC {metrics[method]['deletion_auc']:.3f}/"
                      f"{metrics[method]['insertion_auc']:.3f}" for method in METHODS))
    return metrics


def _log_to_run(project: Project, model_name: str, metrics: dict[str, Any]) -> None:
    """Figures, summary and faithfulness metrics go into the run train opened (its id is in run.json)."""
    import mlflow

    run_id = read_json(project.run_record(model_name))["run_id"]
    setup_mlflow(project.params.mlflow, project.root)
    with mlflow.start_run(run_id=run_id):
        mlflow.log_metrics({
            **{f"explain/{method}/{key}": metrics[method][key] for method in METHODS
               for key in ("deletion_auc", "insertion_auc")},
            "explain/time_s": metrics["explain_time_s"],
        })
        mlflow.log_artifacts(str(project.explain_figures(model_name)), artifact_path="explain/figures")
        mlflow.log_artifact(str(project.explain_metrics(model_name)), artifact_path="explain")
        mlflow.log_artifact(str(project.explain_summary(model_name)), artifact_path="explain")
