"""Run-to-run spread: the same recipe trained under several seeds, so a difference between two models can be read
against the noise of training itself.

Training on CPU is bit-identical only for the same seed, thread count, bf16 setting and CPU instruction set
(docs/reproducibility.md); any of them changes the trajectory. A fresh machine is like a new seed, so the seed
spread is the honest error bar of a single run. The seeds vary everything a seed controls: the head's
initialisation and the order of batches; the data, the split and the recipe stay fixed. Validation and test are both
scored; nothing here chooses anything.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from catalog_classifier.data.imageset import ImageSet
from catalog_classifier.modeling.fit_loop import FitSettings, macro_f1, predict_logits
from catalog_classifier.modeling.frozen import fit_model
from catalog_classifier.modeling.models import Classifier, WeightsInfo
from catalog_classifier.modeling.torch_setup import Runtime, seed_everything

log = logging.getLogger(__name__)

ModelFactory = Callable[[], tuple[Classifier, WeightsInfo]]


@dataclass(frozen=True)
class SeedRun:
    seed: int
    val_f1_macro: float
    test_f1_macro: float
    epochs_run: int
    fit_seconds: float


def _score(model: Classifier, images: ImageSet, runtime: Runtime, batch_size: int, num_classes: int) -> float:
    predictions = predict_logits(model, images, batch_size, runtime).argmax(1).numpy()
    return macro_f1(images.labels.numpy(), predictions, num_classes)


def summarize(runs: list[SeedRun]) -> dict[str, Any]:
    """Mean, sample standard deviation, min and max of val and test macro-F1 over the seeds."""
    summary: dict[str, Any] = {"n_seeds": len(runs), "seeds": [run.seed for run in runs]}
    for split in ("val", "test"):
        values = [getattr(run, f"{split}_f1_macro") for run in runs]
        summary[split] = {"mean": round(statistics.fmean(values), 4),
                          "std": round(statistics.stdev(values), 4) if len(values) > 1 else 0.0,
                          "min": round(min(values), 4), "max": round(max(values), 4)}
    summary["runs"] = [run.__dict__ for run in runs]
    return summary


def seed_spread(
    create: ModelFactory,
    images: dict[str, ImageSet],
    settings: FitSettings,
    frozen_backbone: bool,
    runtime: Runtime,
    seeds: list[int],
    num_classes: int,
    batch_size: int,
) -> dict[str, Any]:
    """Fit the recipe once per seed on ``images['train']`` (early stopping on ``images['val']``) and score val/test."""
    runs = []
    for seed in seeds:
        generator = seed_everything(seed)
        model, _ = create()
        started = time.perf_counter()
        result = fit_model(model, images["train"], images["val"], settings, runtime, generator, num_classes,
                           frozen_backbone=frozen_backbone)
        model = model.to(memory_format=torch.contiguous_format)
        run = SeedRun(seed=seed, val_f1_macro=round(_score(model, images["val"], runtime, batch_size, num_classes), 4),
                      test_f1_macro=round(_score(model, images["test"], runtime, batch_size, num_classes), 4),
                      epochs_run=result.epochs_run, fit_seconds=round(time.perf_counter() - started, 1))
        log.info("seed %d: val %.4f test %.4f (%d epochs, %.0fs)", seed, run.val_f1_macro, run.test_f1_macro,
                 run.epochs_run, run.fit_seconds)
        runs.append(run)
    return summarize(runs)


def spread_seeds(base_seed: int, count: int) -> list[int]:
    """``count`` seeds starting at the pipeline's own (so the pipeline's run is one of them)."""
    return list(range(base_seed, base_seed + count))
