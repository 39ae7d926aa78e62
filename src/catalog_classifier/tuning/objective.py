"""One Optuna trial = one call of the pipeline's training with sampled ``train`` values; it reports validation
macro-F1 after every epoch so a pruner can stop weak trials early, and returns the F1 of the epoch the pipeline
would keep. Only the train and validation manifests are ever handed to this module: the test split stays unseen
until the final evaluation, or its score would be tuned on and stop being an honest estimate.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import optuna
import pandas as pd
from optuna.trial import TrialState

from catalog_classifier.config.params import TrainParams, TuneParams
from catalog_classifier.data.imageset import DataConfig, ImageSet, decode_manifest
from catalog_classifier.modeling.fit_loop import FitResult, settings_from
from catalog_classifier.modeling.frozen import fit_model
from catalog_classifier.modeling.models import create_classifier
from catalog_classifier.modeling.torch_setup import Runtime, seed_everything
from catalog_classifier.tuning.shared import WORKER_ATTR
from catalog_classifier.tuning.study import MODEL_KEY, suggest, trial_train_params

log = logging.getLogger(__name__)


class TrialTracker(Protocol):
    """Receives a trial's life (the stage records it in MLflow); kept out of the objective so it stays testable."""

    def start(self, trial: optuna.Trial, sampled: dict[str, Any]) -> None: ...

    def annotate(self, tags: dict[str, str]) -> None: ...

    def epoch(self, epoch: int, row: dict[str, float]) -> None: ...

    def finish(self, state: str, value: float | None, error: BaseException | None) -> None: ...


class NullTracker:
    def start(self, trial: optuna.Trial, sampled: dict[str, Any]) -> None:
        pass

    def annotate(self, tags: dict[str, str]) -> None:
        pass

    def epoch(self, epoch: int, row: dict[str, float]) -> None:
        pass

    def finish(self, state: str, value: float | None, error: BaseException | None) -> None:
        pass


class ImageCache:
    """Train/val images decoded once per preprocessing (size, interpolation) and shared by every later trial."""

    def __init__(self, train_manifest: pd.DataFrame, val_manifest: pd.DataFrame, images_dir: Path) -> None:
        self._manifests = (train_manifest, val_manifest)
        self._images_dir = images_dir
        self._sets: dict[tuple[tuple[int, int], str], tuple[ImageSet, ImageSet]] = {}

    def get(self, data_config: DataConfig) -> tuple[ImageSet, ImageSet]:
        key = (tuple(data_config.input_size), data_config.interpolation)
        if key not in self._sets:
            log.info("decoding train/val images at %s (%s)", key[0], key[1])
            self._sets[key] = tuple(decode_manifest(m, self._images_dir, data_config) for m in self._manifests)
        return self._sets[key]

    def __len__(self) -> int:
        return len(self._sets)


@dataclass
class Objective:
    """One Optuna trial = one call of the pipeline's ``fit`` with sampled train values; returns val macro-F1."""

    train_params: TrainParams
    tune_params: TuneParams
    models: list[str]
    num_classes: int
    images: ImageCache
    runtime: Runtime
    tracker: TrialTracker = field(default_factory=NullTracker)
    weights_root: Path = Path(".")  # train.weights_files paths are relative to the project root
    worker: int | None = None  # recorded on each trial (WORKER_ATTR): which worker ran it

    def weights_file(self, model_name: str) -> Path | None:
        relative = self.train_params.weights_files.get(model_name)
        return None if relative is None else self.weights_root / relative

    def __call__(self, trial: optuna.Trial) -> float:
        if self.worker is not None:
            trial.set_user_attr(WORKER_ATTR, self.worker)
        sampled = suggest(trial, self.tune_params.space, self.models)
        params = trial_train_params(self.train_params, sampled, self.tune_params.max_epochs)
        self.tracker.start(trial, sampled)
        state, value, error = TrialState.FAIL.name, None, None
        try:
            value = self._train(trial, sampled[MODEL_KEY], params)
            state = TrialState.COMPLETE.name
            return value
        except optuna.TrialPruned:
            state = TrialState.PRUNED.name
            raise
        except BaseException as err:
            error = err
            raise
        finally:
            self.tracker.finish(state, value, error)

    def _train(self, trial: optuna.Trial, model_name: str, params: TrainParams) -> float:
        # Same seed for every trial (as the pipeline): differences come from the sampled values, not the draw.
        generator = seed_everything(params.seed)
        model, weights = create_classifier(
            model_name, self.num_classes, weights=params.weights,
            weights_file=self.weights_file(model_name), allow_fallback=params.allow_random_fallback,
            image_size=params.image_size,
        )
        train_images, val_images = self.images.get(model.data_config)
        trial.set_user_attr("augment_applied", params.augment)
        trial.set_user_attr("weights_used", weights.used)
        self.tracker.annotate({"weights_used": weights.used, "weights_source": weights.source,
                               "augment_applied": str(params.augment),
                               "input_size": "x".join(map(str, model.data_config.input_size))})

        def on_epoch(epoch: int, row: dict[str, float]) -> None:
            self.tracker.epoch(epoch, row)
            trial.report(row["val_f1_macro"], epoch)
            if trial.should_prune():
                trial.set_user_attr("pruned_epoch", epoch)
                raise optuna.TrialPruned(f"epoch {epoch}: val macro-F1 {row['val_f1_macro']:.4f} below the bar")

        # Frozen-backbone trials train the head on cached features, exactly as the train stage would.
        result: FitResult = fit_model(model, train_images, val_images, settings_from(params), self.runtime,
                                      generator, self.num_classes, frozen_backbone=params.freeze_backbone,
                                      on_epoch=on_epoch)
        for key, value in (("best_epoch", result.best_epoch), ("epochs_run", result.epochs_run),
                           ("fit_seconds", round(result.fit_seconds, 3))):
            trial.set_user_attr(key, value)
        # The F1 of the weights the pipeline would keep (best validation loss), not the luckiest epoch's.
        return float(result.best["val_f1_macro"])
