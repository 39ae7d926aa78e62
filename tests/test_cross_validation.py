"""Cross-validation of a head on cached features: folds respect near-duplicate groups, every image is held out once
per repeat, and a separable problem scores what a person would expect."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from catalog_classifier.data.imageset import ImageSet
from catalog_classifier.modeling.cross_validation import calibration_logits, cross_validate_head, too_small
from catalog_classifier.modeling.fit_loop import FitSettings
from catalog_classifier.modeling.torch_setup import Runtime

FP32 = Runtime(threads=1, channels_last=False, bf16=False)
SETTINGS = FitSettings(max_epochs=30, patience=5, batch_size=16, optimizer="adamw", lr=0.05, weight_decay=0.0)


def blobs(per_class: int, classes: int, separation: float, seed: int) -> ImageSet:
    """Gaussian blobs as cached 'features' (float, scaled like pixels / 255 as the frozen path feeds them)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, separation, (classes, 8))
    labels = np.repeat(np.arange(classes), per_class)
    features = centres[labels] + rng.normal(0, 1, (len(labels), 8))
    return ImageSet(pixels=torch.tensor(features / 255.0, dtype=torch.float32), labels=torch.tensor(labels),
                    names=[f"img{i:03d}.jpg" for i in range(len(labels))])


def test_every_image_is_held_out_once_per_repeat_and_groups_stay_in_one_fold() -> None:
    features = blobs(20, 3, separation=6.0, seed=0)
    # Pairs of images form near-duplicate groups (0-1, 2-3, ...), all within one class.
    groups = [f"g{i // 2}" for i in range(len(features))]
    cv = cross_validate_head(nn.Linear(8, 3), features, groups, SETTINGS, FP32, folds=5, repeats=2, seed=0,
                             num_classes=3)
    assert cv.used and len(cv.scores) == 10
    for repeat in (0, 1):
        held = cv.oof[cv.oof["repeat"] == repeat]
        assert sorted(held["image"]) == features.names  # once each
        fold_of = dict(zip(held["image"], held["fold"], strict=True))
        for i in range(0, len(features), 2):
            assert fold_of[features.names[i]] == fold_of[features.names[i + 1]]
    # Well separated blobs: every fold's head gets (nearly) everything right.
    assert cv.mean > 0.9
    logits, labels = calibration_logits(cv.oof)
    assert logits.shape == (60, 3) and list(labels) == list(features.labels.numpy())
    assert cv.summary()["n_images"] == 60 and cv.summary()["fold_f1_macro"] == [round(s, 6) for s in cv.scores]


def test_the_spread_of_fold_scores_is_their_sample_sd() -> None:
    cv = cross_validate_head(nn.Linear(8, 3), blobs(20, 3, separation=3.0, seed=1), [f"g{i}" for i in range(60)],
                             SETTINGS, FP32, folds=5, repeats=1, seed=0, num_classes=3)
    assert cv.sd == pytest.approx(np.std(cv.scores, ddof=1)) and cv.sd > 0
    assert cv.mean == pytest.approx(np.mean(cv.scores))


def test_too_few_images_per_class_skips_cross_validation_with_the_reason() -> None:
    labels = np.array([0, 0, 0, 1, 1, 1, 1, 1, 1])
    assert too_small(labels, [str(i) for i in range(9)], 5) == (
        "too few images for 5-fold cross-validation (smallest class: 3 group(s))")
    cv = cross_validate_head(nn.Linear(8, 2), ImageSet(torch.zeros(9, 8), torch.tensor(labels),
                                                       [str(i) for i in range(9)]),
                             [str(i) for i in range(9)], SETTINGS, FP32, folds=5, repeats=1, seed=0, num_classes=2)
    assert not cv.used and cv.reason.startswith("too few images") and cv.oof is None
    assert cv.summary()["f1_macro_mean"] is None
