"""Training one pipeline model: the classifier with its weights, the recipe those weights call for, the decoded
train/val images, and the fit (frozen or full) with what it measured. The train stage wraps it in an MLflow run.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from catalog_classifier.config.layout import Project
from catalog_classifier.config.params import TrainParams
from catalog_classifier.data.imageset import ImageSet, decode_manifest
from catalog_classifier.data.manifests import read_manifest
from catalog_classifier.modeling.frozen import fit_model
from catalog_classifier.modeling.models import Classifier, WeightsInfo, create_classifier
from catalog_classifier.modeling.training import FitResult, settings_from
from catalog_classifier.ops.runtime import Runtime, resolve_runtime, runtime_facts, seed_everything


def recipe_name(weights_used: str) -> str:
    """Which training recipe a model got: train.pretrained on top of train.*, or train.* alone."""
    return "pretrained" if weights_used == "imagenet" else "default"


@dataclass
class TrainingJob:
    """One model ready to fit: everything its MLflow run records before the first epoch."""

    model_name: str
    model: Classifier
    weights: WeightsInfo
    train_params: TrainParams  # train.* with the recipe the weights call for merged in
    runtime: Runtime
    generator: torch.Generator
    train_images: ImageSet
    val_images: ImageSet
    decode_seconds: float
    n_classes: int

    @property
    def n_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    @property
    def augment_applied(self) -> bool:
        # Images augmented during the fit (never cached features: config refuses augment + freeze_backbone).
        return self.train_params.augment and not self.train_params.freeze_backbone

    def fit(self, on_epoch: Callable[[int, dict[str, float]], None]) -> FitResult:
        """Early-stopped fit (head only on cached features when the backbone is frozen); model left contiguous."""
        result = fit_model(self.model, self.train_images, self.val_images, settings_from(self.train_params),
                           self.runtime, self.generator, self.n_classes,
                           frozen_backbone=self.train_params.freeze_backbone, on_epoch=on_epoch)
        self.model = self.model.to(memory_format=torch.contiguous_format)
        return result

    def metrics(self, result: FitResult) -> dict[str, Any]:
        """``train_metrics.json``: what the fit took and reached, which weights, recipe and runtime."""
        return {
            "fit_time_s": round(result.fit_seconds, 3),
            "fit_cpu_time_s": round(result.fit_cpu_seconds, 3),
            "decode_time_s": round(self.decode_seconds, 3),
            "epochs_run": result.epochs_run,
            "best_epoch": result.best_epoch,
            "stopped_early": result.stopped_early,
            "best_val_loss": round(result.best["val_loss"], 6),
            "best_val_f1_macro": round(result.best["val_f1_macro"], 6),
            "n_params": self.n_params,
            **self.weights.record(),
            "recipe": recipe_name(self.weights.used),
            "freeze_backbone": self.train_params.freeze_backbone,
            "threads": self.runtime.threads,
            "bf16": self.runtime.bf16,
            "channels_last": self.runtime.channels_last,
            "augment_applied": self.augment_applied,
            **runtime_facts(),
        }


def prepare_training(project: Project, model_name: str) -> TrainingJob:
    """Seeded model creation (weights resolved and recorded), its recipe, and the decoded train/val images."""
    params = project.params
    train_params = params.train
    runtime = resolve_runtime(train_params.channels_last, train_params.bf16, train_params.num_threads)
    generator = seed_everything(train_params.seed)
    model, weights = create_classifier(
        model_name,
        len(params.data.classes),
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
    return TrainingJob(model_name, model, weights, train_params, runtime, generator, train_images, val_images,
                       time.perf_counter() - decode_started, len(params.data.classes))
