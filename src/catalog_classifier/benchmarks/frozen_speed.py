"""Frozen backbone against full fine-tuning: the head fitted on cached features, timed and scored on test, and its
speed-up over a recorded full fit (a fit on a capped subset is extrapolated by image count).
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from typing import Any

import torch

from catalog_classifier.data.imageset import ImageSet
from catalog_classifier.modeling.fit_loop import FitSettings
from catalog_classifier.modeling.models import Classifier
from catalog_classifier.modeling.torch_setup import Runtime

log = logging.getLogger(__name__)


FROZEN_SPEEDUP_TARGET = 20.0


def fit_settings_for_bench(settings: FitSettings, batch_size: int | None) -> FitSettings:
    return settings if batch_size is None else replace(settings, batch_size=batch_size)


def frozen_figures(
    model: Classifier,
    splits: dict[str, ImageSet],
    settings: FitSettings,
    runtime: Runtime,
    seed: int,
    num_classes: int,
) -> dict[str, Any]:
    """Fit only the head on cached backbone features (train.fit's early stopping) and score it on test."""
    from catalog_classifier.modeling.frozen import extract_features, fit_frozen, score_head

    generator = torch.Generator().manual_seed(seed)
    result, _, _ = fit_frozen(model, splits["train"], splits["val"], settings, runtime, generator, num_classes)
    started = time.perf_counter()
    test_features = extract_features(model, splits["test"], settings.batch_size, runtime)
    test_feature_s = time.perf_counter() - started
    return {
        "n_images": {name: len(images) for name, images in splits.items()},
        "feature_dim": int(test_features.pixels.shape[1]),
        "feature_s": result.feature_seconds,
        "head_fit_s": result.head_fit_seconds,
        "fit_s": result.fit_seconds,
        "fit_cpu_s": result.fit_cpu_seconds,
        "epochs_run": result.fit.epochs_run,
        "best_epoch": result.fit.best_epoch,
        "best_val_f1_macro": result.fit.best["val_f1_macro"],
        "test_feature_s": test_feature_s,
        "test_f1_macro": score_head(model, test_features, runtime, settings.batch_size, num_classes),
    }


def frozen_versus_full(frozen: dict[str, Any], full: dict[str, Any], n_train: int, n_val: int,
                       estimated_full_fit_s: float | None) -> dict[str, Any]:
    """Speed-up of the frozen fit over full fine-tuning; a fit on a capped subset is extrapolated by images."""
    used = frozen["n_images"]["train"] + frozen["n_images"]["val"]
    scale = (n_train + n_val) / used
    fit_s = frozen["feature_s"] * scale + frozen["head_fit_s"]
    comparison = {**frozen, "full": full, "fit_s_for_speedup": fit_s, "extrapolated": bool(scale != 1.0),
                  "speedup_target": FROZEN_SPEEDUP_TARGET}
    recorded = full.get("fit_time_s")
    comparison["speedup"] = recorded / fit_s if recorded else None
    comparison["meets_target"] = None if recorded is None else bool(recorded / fit_s >= FROZEN_SPEEDUP_TARGET)
    comparison["full_fit_s_estimated_this_run"] = estimated_full_fit_s
    comparison["speedup_vs_estimate"] = estimated_full_fit_s / fit_s if estimated_full_fit_s else None
    return comparison
