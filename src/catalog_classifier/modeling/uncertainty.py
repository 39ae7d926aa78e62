"""How sure a figure is: bootstrap intervals of macro-F1, paired intervals of a difference, and a one-sided
binomial bound.

On 175 images one image moves macro-F1 by about 0.006, so every macro-F1 the pipeline reports carries a percentile
bootstrap interval (images resampled with replacement, seeded), and the promotion gate compares two models on the
SAME resampled images (a paired bootstrap), which cancels the images both get right or wrong and leaves the
difference. Auto-labelling promises a precision, so its threshold rests on a one-sided Clopper-Pearson bound, exact
for a binomial proportion at any n. No I/O here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.stats import beta


@dataclass(frozen=True)
class Interval:
    """A point estimate, its two-sided percentile interval, and the number of images behind it."""

    estimate: float
    low: float
    high: float
    n: int
    confidence: float

    def to_dict(self, digits: int = 6) -> dict[str, Any]:
        return {"estimate": round(self.estimate, digits), "low": round(self.low, digits),
                "high": round(self.high, digits), "n": self.n, "confidence": self.confidence}

    def text(self, digits: int = 3) -> str:
        """``0.907 [0.861, 0.948]``"""
        return f"{self.estimate:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}]"


def _encoded(values: Any) -> np.ndarray:
    array = np.asarray(values, dtype=np.int64).ravel()
    if array.size and array.min() < 0:
        raise ValueError("class ids must be >= 0")
    return array


def _macro_f1_rows(truth: np.ndarray, predicted: np.ndarray, labels: np.ndarray, n_classes: int) -> np.ndarray:
    """macro-F1 of each row of (resamples, n) class-id matrices: the mean F1 of the ``labels`` present in that
    row's truth (a resample that misses a class does not score it 0 for a photo nobody could get right)."""
    rows = truth.shape[0]
    offset = np.arange(rows)[:, None] * n_classes
    size = rows * n_classes
    hits = truth == predicted
    true_positive = np.bincount((offset + truth)[hits], minlength=size).reshape(rows, n_classes)
    true_count = np.bincount((offset + truth).ravel(), minlength=size).reshape(rows, n_classes)
    predicted_count = np.bincount((offset + predicted).ravel(), minlength=size).reshape(rows, n_classes)
    denominator = true_count + predicted_count  # = 2 TP + FP + FN
    f1 = np.divide(2.0 * true_positive, denominator, out=np.zeros_like(denominator, dtype=np.float64),
                   where=denominator > 0)
    present = true_count[:, labels] > 0
    return (f1[:, labels] * present).sum(1) / np.maximum(present.sum(1), 1)


def _scored_classes(truth: np.ndarray, n_classes: int) -> np.ndarray:
    """Classes macro-F1 averages over: those present in the (full) sample, as the gate and sklearn's labels=."""
    present = np.unique(truth)
    if not len(present):
        raise ValueError("no image to score")
    if present.max() >= n_classes:
        raise ValueError(f"class id {present.max()} >= n_classes {n_classes}")
    return present


def macro_f1(truth: Any, predicted: Any, n_classes: int) -> float:
    """macro-F1 over the classes present in ``truth`` (predictions of other classes still count as errors)."""
    truth, predicted = _encoded(truth), _encoded(predicted)
    labels = _scored_classes(truth, n_classes)
    return float(_macro_f1_rows(truth[None, :], predicted[None, :], labels, max(n_classes, predicted.max() + 1))[0])


def _resample_indices(n: int, resamples: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n))


def _percentiles(values: np.ndarray, confidence: float) -> tuple[float, float]:
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def bootstrap_macro_f1(truth: Any, predicted: Any, n_classes: int, *, resamples: int, confidence: float,
                       seed: int) -> Interval:
    """macro-F1 with a percentile bootstrap interval (images resampled with replacement, ``resamples`` times).

    Each resample averages over the classes present in its own truth, as the estimate does over the sample's.
    """
    truth, predicted = _encoded(truth), _encoded(predicted)
    if len(truth) != len(predicted):
        raise ValueError(f"{len(truth)} true labels but {len(predicted)} predictions")
    labels = _scored_classes(truth, n_classes)
    width = max(n_classes, int(predicted.max()) + 1)
    estimate = float(_macro_f1_rows(truth[None, :], predicted[None, :], labels, width)[0])
    index = _resample_indices(len(truth), resamples, seed)
    low, high = _percentiles(_macro_f1_rows(truth[index], predicted[index], labels, width), confidence)
    return Interval(estimate, low, high, len(truth), confidence)


def paired_bootstrap_delta(truth: Any, first: Any, second: Any, n_classes: int, *, resamples: int,
                           confidence: float, seed: int) -> Interval:
    """macro-F1(first) - macro-F1(second) on the same images, with a paired percentile bootstrap interval: each
    resample draws one set of images and scores both models on it."""
    truth, first, second = _encoded(truth), _encoded(first), _encoded(second)
    if not len(truth) == len(first) == len(second):
        raise ValueError(f"{len(truth)} true labels, {len(first)} and {len(second)} predictions")
    labels = _scored_classes(truth, n_classes)
    width = max(n_classes, int(max(first.max(), second.max())) + 1)
    estimate = float(_macro_f1_rows(truth[None, :], first[None, :], labels, width)[0]
                     - _macro_f1_rows(truth[None, :], second[None, :], labels, width)[0])
    index = _resample_indices(len(truth), resamples, seed)
    deltas = (_macro_f1_rows(truth[index], first[index], labels, width)
              - _macro_f1_rows(truth[index], second[index], labels, width))
    low, high = _percentiles(deltas, confidence)
    return Interval(estimate, low, high, len(truth), confidence)


def clopper_pearson_lower(successes: Any, trials: Any, confidence: float) -> np.ndarray:
    """One-sided exact lower confidence bound of a binomial proportion: the p below which seeing ``successes`` or
    more in ``trials`` has probability < 1 - confidence. 0 where successes = 0 (and where trials = 0)."""
    successes = np.asarray(successes, dtype=np.float64)
    trials = np.asarray(trials, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        bound = beta.ppf(1 - confidence, successes, trials - successes + 1)
    return np.where((successes > 0) & (trials > 0), np.nan_to_num(bound), 0.0)
