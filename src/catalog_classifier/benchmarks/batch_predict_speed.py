"""Batch prediction, end to end: what ``catalog-classifier predict`` does to a folder, timed by part (decode and
resize, forward, the rest) on dataset images in a seeded order. Every figure is a measurement; nothing asserts on it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from catalog_classifier.modeling.models import create_classifier, load_classifier
from catalog_classifier.modeling.prediction import (
    Calibration,
    ImageClassifier,
    InferenceSettings,
    Loader,
)

log = logging.getLogger(__name__)


BATCH_PREDICT_PATH = ("prediction.ImageClassifier.predict_files (decode, resize, forward, calibrated softmax, top-3, "
                      "review flag), batches of evaluate.batch_size")


def predict_paths(manifests: Sequence[pd.DataFrame], images_dir: Path, n_images: int, seed: int) -> list[Path]:
    """Up to ``n_images`` distinct dataset files from the given manifests, in a seeded order (all when fewer).

    Why every split: a user's batch is a folder of photos each read once, and the train split alone holds too few
    to make the 1,000-image batch the target names; which images they are does not change the speed.
    """
    pool = pd.concat([manifest[["image"]] for manifest in manifests], ignore_index=True).drop_duplicates("image")
    chosen = pool.sample(frac=1.0, random_state=seed).head(n_images)
    return [images_dir / name for name in chosen["image"]]


def predict_classifier(model_name: str, classes: list[str], weights: Path, autolabel: Path,
                       settings: InferenceSettings, image_size: int | None, seed: int) -> tuple[ImageClassifier, str]:
    """The classifier ``predict`` would run: the trained weights and calibration when the pipeline left them,
    else random weights with the pipeline's architecture and input size (speed does not depend on the values).

    Returns it with what it was built from: ``trained`` or ``random``.
    """
    if weights.is_file():
        model, config = load_classifier(weights)
        calibration = Calibration.read(autolabel) if autolabel.is_file() else None
        return ImageClassifier(model, config, settings, calibration), "trained"
    torch.manual_seed(seed)
    model, _ = create_classifier(model_name, len(classes), weights="none", image_size=image_size)
    return ImageClassifier(model.eval(), {"classes": list(classes), **model.data_config.to_dict()}, settings), "random"


class TimedClassifier(ImageClassifier):
    """The predict path unchanged, adding up the seconds spent decoding + resizing and in forward + softmax.

    Why a subclass: the split comes from the very run that is timed (two clock reads per image and per batch),
    instead of a second decode pass that would double the cost of the figure.
    """

    def __init__(self, classifier: ImageClassifier) -> None:
        super().__init__(classifier.model, classifier.config, classifier.settings, classifier.calibration)
        self.decode_s = 0.0
        self.forward_s = 0.0

    def _decode(self, loader: Loader) -> np.ndarray:
        started = time.perf_counter()
        try:
            return super()._decode(loader)
        finally:
            self.decode_s += time.perf_counter() - started

    def _forward(self, pixels: np.ndarray) -> np.ndarray:
        started = time.perf_counter()
        try:
            return super()._forward(pixels)
        finally:
            self.forward_s += time.perf_counter() - started


def batch_predict_throughput(classifier: ImageClassifier, paths: Sequence[Path], n_requested: int,
                             target_img_s: float) -> dict[str, Any]:
    """Images/s of one ``predict_files`` call over ``paths``, as ``catalog-classifier predict`` runs a batch.

    Not warmed up: a user's batch pays its first batch's warm-up too. Model loading is not timed.
    """
    timed = TimedClassifier(classifier)
    started = time.perf_counter()
    frame = timed.predict_files(list(paths))
    seconds = time.perf_counter() - started
    images_per_s = len(paths) / seconds
    return {
        "path": BATCH_PREDICT_PATH, "n_images": len(paths), "n_requested": n_requested, "seconds": seconds,
        "images_per_s": images_per_s, "batch_size": timed.settings.batch_size, "threads": timed.runtime.threads,
        "channels_last": timed.runtime.channels_last, "bf16": timed.runtime.bf16,
        "decode_resize_s": timed.decode_s, "forward_s": timed.forward_s,
        "other_s": seconds - timed.decode_s - timed.forward_s,  # top-3, review flags, the output frame
        "errors": int((frame["error"] != "").sum()),
        "target_img_s": target_img_s, "meets_target": bool(images_per_s >= target_img_s),
    }
