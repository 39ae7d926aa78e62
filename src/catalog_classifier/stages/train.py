"""Train stage: one model, early stopping, weights + history + metrics, one MLflow run per call.

The model, its weights, recipe and fit are :mod:`catalog_classifier.modeling.training_job`; this stage opens the
MLflow run around the fit, logs every epoch, and writes the weights, history, curves and metrics.
"""

from __future__ import annotations

import logging
from typing import Any

import pandas as pd
import torch

from catalog_classifier.config.layout import Project
from catalog_classifier.data.splitting import SPLITS
from catalog_classifier.modeling.fit_loop import history_columns
from catalog_classifier.modeling.metrics import plot_curves
from catalog_classifier.modeling.models import save_classifier
from catalog_classifier.modeling.torch_setup import runtime_facts
from catalog_classifier.modeling.training_job import TrainingJob, prepare_training, recipe_name
from catalog_classifier.ops.io import read_json, write_csv, write_json
from catalog_classifier.registry.datasets import log_split_inputs
from catalog_classifier.registry.tracking import data_version, flatten, git_tags, setup_mlflow, start_system_metrics

log = logging.getLogger(__name__)


def _run_tags(project: Project, job: TrainingJob) -> dict[str, str]:
    runtime = job.runtime
    return {"model": job.model_name, **git_tags(project.root), "data_version": data_version(project.root),
            **{key: str(value) for key, value in job.weights.record().items()},
            "recipe": recipe_name(job.weights.used), "threads": str(runtime.threads), "bf16": str(runtime.bf16),
            "channels_last": str(runtime.channels_last), "stage": "train", **runtime_facts()}


def _run_params(project: Project, job: TrainingJob) -> dict[str, Any]:
    config = job.model.data_config
    return {**flatten("train", job.train_params.model_dump(mode="json")), "model": job.model_name,
            "input_size": "x".join(map(str, config.input_size)), "interpolation": config.interpolation,
            "split.seed": project.params.split.seed, "n_params": job.n_params, "augment_applied": job.augment_applied}


def run_train(project: Project, model_name: str) -> dict[str, Any]:
    """Train one model with early stopping; save weights, history and metrics; one MLflow run per call."""
    import mlflow

    params = project.params
    experiment_id = setup_mlflow(params.mlflow, project.root)  # fails fast before any training
    job = prepare_training(project, model_name)
    log.info("%s: %d params, input %s, weights %s (%s), threads=%d bf16=%s channels_last=%s",
             model_name, job.n_params, job.model.data_config.input_size, job.weights.used, job.weights.source,
             job.runtime.threads, job.runtime.bf16, job.runtime.channels_last)
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"{model_name}", tags=_run_tags(project, job),
                          log_system_metrics=start_system_metrics(params.mlflow)) as run:
        mlflow.log_params(_run_params(project, job))
        log_split_inputs(project, ("train", "val"))
        quality = read_json(project.quality_report())
        mlflow.log_metrics({"data/rows": quality["rows"], "data/usable_images": quality["usable_images"],
                            "data/train_images": len(job.train_images), "data/val_images": len(job.val_images)})

        def log_epoch(epoch: int, row: dict[str, float]) -> None:
            mlflow.log_metrics({"train/loss": row["train_loss"], "train/f1_macro": row["train_f1_macro"],
                                "val/loss": row["val_loss"], "val/f1_macro": row["val_f1_macro"]}, step=epoch)

        result = job.fit(log_epoch)
        cv = job.cv.summary()
        metrics = {**job.metrics(result), "cv_used": cv["used"], "cv_f1_macro_mean": cv["f1_macro_mean"],
                   "cv_f1_macro_sd": cv["f1_macro_sd"]}
        model_dir = project.model_dir(model_name)
        save_classifier(job.model, model_name, params.data.classes, project.weights(model_name))
        write_csv(project.history(model_name), pd.DataFrame(result.history, columns=history_columns()).round(6))
        plot_curves(pd.DataFrame(result.history), model_name, model_dir / "curves.png")
        write_json(project.train_metrics(model_name), metrics)
        write_json(project.cv_summary(model_name), cv)
        write_csv(project.oof_predictions(model_name), job.cv.oof if job.cv.oof is not None else pd.DataFrame(
            columns=["image", "label_id", "repeat", "fold"]))
        if cv["used"]:
            mlflow.log_metrics({"cv/f1_macro_mean": cv["f1_macro_mean"], "cv/f1_macro_sd": cv["f1_macro_sd"],
                                "cv_time_s": cv["seconds"]})
            for step, score in enumerate(cv["fold_f1_macro"]):
                mlflow.log_metric("cv/fold_f1_macro", score, step=step)

        mlflow.log_metrics({"fit_time_s": result.fit_seconds, "fit_cpu_time_s": result.fit_cpu_seconds,
                            "epochs_run": result.epochs_run,
                            "best_epoch": result.best_epoch, "best_val_f1_macro": result.best["val_f1_macro"],
                            "best_val_loss": result.best["val_loss"]})
        for path in (project.history(model_name), model_dir / "curves.png", project.train_metrics(model_name),
                     model_dir / "model_config.json", project.quality_report(), project.cv_summary(model_name),
                     project.oof_predictions(model_name)):
            mlflow.log_artifact(str(path))
        for split in SPLITS:
            mlflow.log_artifact(str(project.manifest(split)), artifact_path="splits")
        log_model(job.model, job.train_images.pixels[:1])
        write_json(project.run_record(model_name),
                   {"run_id": run.info.run_id, "experiment_id": experiment_id})
    log.info("%s: fit %.1fs, %d epochs (best %d), best val macro-F1 %.4f", model_name, result.fit_seconds,
             result.epochs_run, result.best_epoch, result.best["val_f1_macro"])
    return metrics


def log_model(model: torch.nn.Module, example_pixels: torch.Tensor) -> None:
    """Log the model with a signature and an input example (float RGB in [0, 1], NCHW)."""
    import mlflow
    from mlflow.models import infer_signature

    example = example_pixels.float().div(255.0).numpy()
    with torch.inference_mode():
        output = model.eval()(torch.from_numpy(example)).numpy()
    # pickle (not pt2 export): exact same module, loads back with identical predictions, no tracing limits.
    mlflow.pytorch.log_model(model, name="model", signature=infer_signature(example, output),
                             input_example=example, serialization_format="pickle")
