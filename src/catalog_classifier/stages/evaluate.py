"""Evaluate stage: validation and test metrics, predictions, confusion matrix, calibration and the auto-labelling
threshold, logged to the train run. The work is :func:`catalog_classifier.modeling.model_evaluation.evaluate_model`.
"""

from __future__ import annotations

from typing import Any

from catalog_classifier.config.layout import Project
from catalog_classifier.modeling.autolabel import autolabel_line, autolabel_metrics
from catalog_classifier.modeling.conformal import conformal_line, conformal_metrics
from catalog_classifier.modeling.model_evaluation import class_report_markdown, evaluate_model
from catalog_classifier.ops.io import read_json, write_csv, write_json, write_text
from catalog_classifier.registry.datasets import log_split_inputs
from catalog_classifier.registry.tracking import metric_key, setup_mlflow


def run_evaluate(project: Project, model_name: str) -> dict[str, Any]:
    """Score the trained model on validation and test; write metrics, predictions, confusion matrix, and the
    temperature / auto-labelling threshold fitted on validation with what they give on test."""
    import mlflow

    params = project.params
    classes = params.data.classes
    out_dir = project.eval_dir(model_name)
    evaluation = evaluate_model(project, model_name)
    results, frames, autolabel = evaluation.results, evaluation.frames, evaluation.autolabel
    write_json(project.autolabel(model_name), autolabel.summary)
    write_csv(out_dir / "precision_coverage.csv", autolabel.curve)
    write_csv(out_dir / "predictions.csv", frames["test"])
    write_csv(out_dir / "val_predictions.csv", frames["val"])
    write_text(out_dir / "report.md", class_report_markdown(model_name, results, classes))
    write_json(project.eval_metrics(model_name), results)

    run_id = read_json(project.run_record(model_name))["run_id"]
    setup_mlflow(params.mlflow, project.root)
    with mlflow.start_run(run_id=run_id):
        log_split_inputs(project, ("test",))  # train and val were logged by the train stage
        mlflow.log_metrics({
            "val/f1_macro_final": results["val"]["f1_macro"], "val/accuracy": results["val"]["accuracy"],
            "test/f1_macro": results["test"]["f1_macro"], "test/accuracy": results["test"]["accuracy"],
            **{f"{split}/f1_macro_{end}": results[split]["f1_macro_interval"][end]
               for split in ("val", "test") for end in ("low", "high")},
            "inference_images_per_s": results["inference_images_per_s"],
            "latency_p50_ms": results["latency_ms"]["p50"], "latency_p95_ms": results["latency_ms"]["p95"],
            **{metric_key(f"test/f1/{name}"): values["f1"] for name, values in results["test"]["per_class"].items()},
            **{name: value for name, value in autolabel_metrics(autolabel.summary).items() if value is not None},
            **{name: value for name, value in conformal_metrics(autolabel.summary["conformal"]).items()
               if value is not None},
            **{metric_key(f"test/set_coverage/{name}"): values["coverage"]
               for name, values in autolabel.summary["conformal"]["test"]["per_class"].items()
               if values["coverage"] is not None},
            **{metric_key(f"test/set_size/{name}"): values["mean_set_size"]
               for name, values in autolabel.summary["conformal"]["test"]["per_class"].items()
               if values["mean_set_size"] is not None},
        })
        for name in ("metrics.json", "predictions.csv", "val_predictions.csv", "confusion.png", "report.md",
                     "autolabel.json", "precision_coverage.csv", "reliability.png"):
            mlflow.log_artifact(str(out_dir / name), artifact_path="eval")
    test_interval, val_interval = results["test"]["f1_macro_interval"], results["val"]["f1_macro_interval"]
    print(f"{model_name}: test macro-F1 {results['test']['f1_macro']:.4f} [{test_interval['low']:.4f}, "
          f"{test_interval['high']:.4f}], accuracy {results['test']['accuracy']:.4f}; val macro-F1 "
          f"{results['val']['f1_macro']:.4f} [{val_interval['low']:.4f}, {val_interval['high']:.4f}]")
    print(autolabel_line(autolabel.summary))
    print(conformal_line(model_name, autolabel.summary["conformal"]))
    return results
