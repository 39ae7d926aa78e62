"""Train stage: one model, early stopping, weights + history + metrics, one MLflow run per call."""

from __future__ import annotations

import logging
import time
from typing import Any

import pandas as pd
import torch

from catalog_classifier.config.layout import Project
from catalog_classifier.data.imageset import decode_manifest
from catalog_classifier.data.manifests import read_manifest
from catalog_classifier.data.splitting import SPLITS
from catalog_classifier.modeling.evaluation import plot_curves
from catalog_classifier.modeling.frozen import fit_model
from catalog_classifier.modeling.models import create_classifier, save_classifier
from catalog_classifier.modeling.training import history_columns, settings_from
from catalog_classifier.ops.io import read_json, write_csv, write_json
from catalog_classifier.ops.runtime import resolve_runtime, runtime_facts, seed_everything
from catalog_classifier.registry.tracking import data_version, flatten, git_commit, setup_mlflow

log = logging.getLogger(__name__)

def recipe_name(weights_used: str) -> str:
    """Which training recipe a model got: train.pretrained on top of train.*, or train.* alone."""
    return "pretrained" if weights_used == "imagenet" else "default"


def _run_tags(project: Project, model_name: str) -> dict[str, str]:
    return {
        "model": model_name,
        "git_commit": git_commit(project.root),
        "data_version": data_version(project.root),
    }


def run_train(project: Project, model_name: str) -> dict[str, Any]:
    """Train one model with early stopping; save weights, history and metrics; one MLflow run per call."""
    import mlflow

    params = project.params
    train_params = params.train
    classes = params.data.classes
    experiment_id = setup_mlflow(params.mlflow, project.root)  # fails fast before any training
    runtime = resolve_runtime(train_params.channels_last, train_params.bf16, train_params.num_threads)
    generator = seed_everything(train_params.seed)
    model, weights = create_classifier(
        model_name,
        len(classes),
        weights=train_params.weights,
        weights_file=project.weights_file(model_name),
        allow_fallback=train_params.allow_random_fallback,
        image_size=train_params.image_size,
    )
    # A pretrained backbone gets its own recipe (train.pretrained); random init keeps train.* as it is.
    train_params = train_params.recipe_for(weights.used)
    images_dir = project.path(params.data.images_dir)
    decode_started = time.perf_counter()
    train_images = decode_manifest(read_manifest(project, "train"), images_dir, model.data_config)
    val_images = decode_manifest(read_manifest(project, "val"), images_dir, model.data_config)
    decode_seconds = time.perf_counter() - decode_started
    n_params = sum(p.numel() for p in model.parameters())
    log.info("%s: %d params, input %s, weights %s (%s), threads=%d bf16=%s channels_last=%s",
             model_name, n_params, model.data_config.input_size, weights.used, weights.source,
             runtime.threads, runtime.bf16, runtime.channels_last)

    tags = {**_run_tags(project, model_name), **{key: str(value) for key, value in weights.record().items()},
            "recipe": recipe_name(weights.used), "threads": str(runtime.threads), "bf16": str(runtime.bf16),
            "channels_last": str(runtime.channels_last), "stage": "train", **runtime_facts()}
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"{model_name}", tags=tags) as run:
        mlflow.log_params({**flatten("train", train_params.model_dump(mode="json")), "model": model_name,
                           "input_size": "x".join(map(str, model.data_config.input_size)),
                           "interpolation": model.data_config.interpolation,
                           "split.seed": params.split.seed, "n_params": n_params,
                           "augment_applied": train_params.augment and not train_params.freeze_backbone})
        quality = read_json(project.quality_report())
        mlflow.log_metrics({"data/rows": quality["rows"], "data/usable_images": quality["usable_images"],
                            "data/train_images": len(train_images), "data/val_images": len(val_images)})

        def log_epoch(epoch: int, row: dict[str, float]) -> None:
            mlflow.log_metrics({"train/loss": row["train_loss"], "train/f1_macro": row["train_f1_macro"],
                                "val/loss": row["val_loss"], "val/f1_macro": row["val_f1_macro"]}, step=epoch)

        result = fit_model(model, train_images, val_images, settings_from(train_params), runtime, generator,
                           len(classes), frozen_backbone=train_params.freeze_backbone, on_epoch=log_epoch)
        model = model.to(memory_format=torch.contiguous_format)
        metrics = {
            "fit_time_s": round(result.fit_seconds, 3),
            "fit_cpu_time_s": round(result.fit_cpu_seconds, 3),
            "decode_time_s": round(decode_seconds, 3),
            "epochs_run": result.epochs_run,
            "best_epoch": result.best_epoch,
            "stopped_early": result.stopped_early,
            "best_val_loss": round(result.best["val_loss"], 6),
            "best_val_f1_macro": round(result.best["val_f1_macro"], 6),
            "n_params": n_params,
            **weights.record(),
            "recipe": recipe_name(weights.used),
            "freeze_backbone": train_params.freeze_backbone,
            "threads": runtime.threads,
            "bf16": runtime.bf16,
            "channels_last": runtime.channels_last,
            # Images augmented during the fit (never cached features: config refuses augment + freeze_backbone).
            "augment_applied": train_params.augment and not train_params.freeze_backbone,
            **runtime_facts(),
        }
        model_dir = project.model_dir(model_name)
        save_classifier(model, model_name, classes, project.weights(model_name))
        write_csv(project.history(model_name), pd.DataFrame(result.history, columns=history_columns()).round(6))
        plot_curves(pd.DataFrame(result.history), model_name, model_dir / "curves.png")
        write_json(project.train_metrics(model_name), metrics)

        mlflow.log_metrics({"fit_time_s": result.fit_seconds, "fit_cpu_time_s": result.fit_cpu_seconds,
                            "epochs_run": result.epochs_run,
                            "best_epoch": result.best_epoch, "best_val_f1_macro": result.best["val_f1_macro"],
                            "best_val_loss": result.best["val_loss"]})
        for path in (project.history(model_name), model_dir / "curves.png", project.train_metrics(model_name),
                     model_dir / "model_config.json", project.quality_report()):
            mlflow.log_artifact(str(path))
        for split in SPLITS:
            mlflow.log_artifact(str(project.manifest(split)), artifact_path="splits")
        log_model(model, train_images.pixels[:1])
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
