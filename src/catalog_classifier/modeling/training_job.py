"""Training one pipeline model: the classifier with its weights, the recipe those weights call for, the decoded
train/val images, and the fit (frozen or full) with what it measured. The train stage wraps it in an MLflow run.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from catalog_classifier.config.layout import Project
from catalog_classifier.config.params import TrainParams
from catalog_classifier.data.imageset import ImageSet, decode_manifest
from catalog_classifier.data.manifests import read_manifest
from catalog_classifier.modeling.cross_validation import (
    NOT_CHEAP,
    CrossValidation,
    concatenate,
    cross_validate_head,
    skipped,
)
from catalog_classifier.modeling.fit_loop import FitResult, settings_from
from catalog_classifier.modeling.frozen import fit_model
from catalog_classifier.modeling.models import Classifier, WeightsInfo, create_classifier
from catalog_classifier.modeling.torch_setup import Runtime, resolve_runtime, runtime_facts, seed_everything


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
    train_groups: list[str] = field(default_factory=list)  # near-duplicate group of each image (cv folds)
    val_groups: list[str] = field(default_factory=list)
    cv: CrossValidation | None = None

    @property
    def n_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    @property
    def augment_applied(self) -> bool:
        # Images augmented during the fit (never cached features: config refuses augment + freeze_backbone).
        return self.train_params.augment and not self.train_params.freeze_backbone

    def fit(self, on_epoch: Callable[[int, dict[str, float]], None]) -> FitResult:
        """Early-stopped fit (head only on cached features when the backbone is frozen); model left contiguous.

        A frozen backbone also gets its head cross-validated on train+val (``self.cv``, outside the fit time); a
        full fine-tuning keeps the validation split (``self.cv.used`` False, with the reason).
        """
        settings = settings_from(self.train_params)
        cv = self.train_params.cv
        self.cv = skipped(NOT_CHEAP, cv.folds, cv.repeats)
        untrained_head = copy.deepcopy(self.model.backbone.get_classifier())

        def cross_validate(train_features: ImageSet, val_features: ImageSet) -> None:
            self.cv = cross_validate_head(untrained_head, concatenate(train_features, val_features),
                                          [*self.train_groups, *self.val_groups], settings, self.runtime,
                                          folds=cv.folds, repeats=cv.repeats, seed=self.train_params.seed,
                                          num_classes=self.n_classes)

        result = fit_model(self.model, self.train_images, self.val_images, settings, self.runtime, self.generator,
                           self.n_classes, frozen_backbone=self.train_params.freeze_backbone, on_epoch=on_epoch,
                           on_features=cross_validate)
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
    manifests = {split: read_manifest(project, split) for split in ("train", "val")}
    train_images = decode_manifest(manifests["train"], images_dir, model.data_config)
    val_images = decode_manifest(manifests["val"], images_dir, model.data_config)
    return TrainingJob(model_name, model, weights, train_params, runtime, generator, train_images, val_images,
                       time.perf_counter() - decode_started, len(params.data.classes),
                       train_groups=group_column(manifests["train"]), val_groups=group_column(manifests["val"]))


def group_column(manifest: Any) -> list[str]:
    """Each row's near-duplicate group (a manifest from before groups existed: its content hash)."""
    return [str(key) for key in (manifest["group"] if "group" in manifest else manifest["sha256"])]
