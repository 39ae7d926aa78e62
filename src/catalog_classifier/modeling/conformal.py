"""Conformal prediction sets for the review queue: the labels a reviewer should choose among.

Split conformal with the LAC score (Sadinle, Lei and Wasserman 2019), computed by MAPIE: on calibration predictions
(today the validation split after temperature scaling; any ``n x classes`` probability matrix with its true labels
works, e.g. out-of-fold predictions) the score of an image is ``1 - p(true class)``, and the quantile ``q`` is the
``ceil((n + 1)(1 - alpha))``-th smallest score. A new image's set holds every class with ``1 - p <= q``; on
exchangeable data it contains the true class with probability >= 1 - alpha (marginally, not per class).

Two choices of ours on top: a set is never empty (an image whose every class is below the cut gets its top-1
label, which can only raise coverage), and its labels are listed most probable first. When ``n`` is too small
for the level (``ceil((n + 1)(1 - alpha)) > n``, or ``n <= 1 / alpha``, which MAPIE refuses), ``q = 1`` and every
set holds every class. The quantile travels with the model (``autolabel.json``), so batch prediction and the
served model build the same sets as the evaluate stage measured. No I/O here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin

from catalog_classifier.modeling.autolabel import wilson_interval

# MAPIE's own slack on "1 - p <= q" (mapie._machine_precision.EPSILON): the same rule at serving time.
SET_TOLERANCE = 1e-8
SET_SEPARATOR = "|"


class _GivenProbabilities(ClassifierMixin, BaseEstimator):
    """A "classifier" whose input rows are already its class probabilities: lets MAPIE conformalize predictions
    that were made elsewhere (a calibrated network, out-of-fold heads) without refitting anything."""

    def __init__(self, n_classes: int = 2) -> None:
        self.n_classes = n_classes

    def fit(self, features: Any = None, labels: Any = None) -> _GivenProbabilities:
        self.classes_ = np.arange(self.n_classes)
        return self

    def predict_proba(self, features: Any) -> np.ndarray:
        return np.asarray(features, dtype=np.float64)

    def predict(self, features: Any) -> np.ndarray:
        return self.predict_proba(features).argmax(1)


@dataclass(frozen=True)
class ConformalFit:
    """The calibrated quantile of the LAC score at level ``alpha``, and how many calibration images gave it."""

    alpha: float
    quantile: float
    n: int


def _probabilities(probabilities: Any) -> np.ndarray:
    array = np.asarray(probabilities, dtype=np.float64)
    if array.ndim != 2:
        raise ValueError(f"probabilities must be (images, classes), got shape {array.shape}")
    return array


def fit_conformal(probabilities: Any, labels: Any, alpha: float) -> ConformalFit:
    """The split-conformal quantile of ``1 - p(true class)`` over calibration predictions (MAPIE, prefit)."""
    from mapie.classification import SplitConformalClassifier

    probs = _probabilities(probabilities)
    labels = np.asarray(labels, dtype=np.int64).ravel()
    if len(labels) != len(probs):
        raise ValueError(f"{len(probs)} probability rows but {len(labels)} labels")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    n = len(labels)
    # Too few images for the level (MAPIE also refuses n <= 1/alpha): no finite quantile, every class.
    if math.ceil((n + 1) * (1 - alpha)) > n or n <= max(1 / alpha, 1 / (1 - alpha)):
        return ConformalFit(alpha=alpha, quantile=1.0, n=n)
    estimator = _GivenProbabilities(probs.shape[1]).fit()
    conformal = SplitConformalClassifier(estimator, confidence_level=1 - alpha, conformity_score="lac", prefit=True)
    conformal.conformalize(probs, labels)
    # MAPIE computes the quantile when it first predicts sets and keeps it on its conformity score (one per level).
    conformal.predict_set(probs[:1])
    quantile = float(np.ravel(conformal._mapie_classifier.conformity_score_function_.quantiles_)[0])
    return ConformalFit(alpha=alpha, quantile=quantile, n=n)


def set_members(probabilities: Any, quantile: float) -> np.ndarray:
    """(images, classes) bool: ``1 - p <= q`` (MAPIE's LAC rule and slack), plus the top-1 class of any empty row."""
    probs = _probabilities(probabilities)
    members = (1.0 - probs) - quantile <= SET_TOLERANCE
    empty = ~members.any(1)
    if empty.any():
        members[np.flatnonzero(empty), probs[empty].argmax(1)] = True
    return members


def set_labels(probabilities: Any, quantile: float, classes: list[str]) -> list[list[str]]:
    """Each image's prediction set as class names, most probable first."""
    probs = _probabilities(probabilities)
    members = set_members(probs, quantile)
    sets = []
    for row, chosen in zip(probs, members, strict=True):
        order = [index for index in np.argsort(-row, kind="stable") if chosen[index]]
        sets.append([classes[index] for index in order])
    return sets


def join_set(labels: list[str]) -> str:
    """``a|b|c``: the CSV form of a prediction set (class names never hold ``|``)."""
    return SET_SEPARATOR.join(labels)


def split_set(text: str) -> list[str]:
    return text.split(SET_SEPARATOR) if text else []


def set_coverage(members: Any, labels: Any, classes: list[str], confidence_level: float) -> dict[str, Any]:
    """Empirical coverage (true class in the set) and mean set size, overall and per TRUE class, with a Wilson
    interval on the overall coverage and how many sets had each size."""
    members = np.asarray(members, dtype=bool)
    labels = np.asarray(labels, dtype=np.int64).ravel()
    n = len(labels)
    covered = members[np.arange(n), labels] if n else np.zeros(0, dtype=bool)
    sizes = members.sum(1)
    per_class: dict[str, dict[str, Any]] = {}
    for index, name in enumerate(classes):
        rows = labels == index
        count = int(rows.sum())
        per_class[name] = {"n": count,
                           "coverage": round(float(covered[rows].mean()), 6) if count else None,
                           "mean_set_size": round(float(sizes[rows].mean()), 6) if count else None}
    interval = wilson_interval(int(covered.sum()), n, confidence_level)
    return {"n": n, "coverage": round(float(covered.mean()), 6) if n else None,
            "coverage_interval": None if interval is None else [round(interval[0], 6), round(interval[1], 6)],
            "mean_set_size": round(float(sizes.mean()), 6) if n else None,
            "size_counts": {str(size): int((sizes == size).sum()) for size in range(1, len(classes) + 1)
                            if (sizes == size).any()},
            "per_class": per_class}


def conformal_summary(calibration_probabilities: Any, calibration_labels: Any, test_probabilities: Any,
                      test_labels: Any, classes: list[str], alpha: float, confidence_level: float,
                      calibration: str = "val") -> dict[str, Any]:
    """The ``conformal`` block of ``autolabel.json``: the quantile fitted on the calibration predictions (named by
    ``calibration``) and what its sets give on test. The quantile is kept unrounded, as the threshold is."""
    fit = fit_conformal(calibration_probabilities, calibration_labels, alpha)
    test = set_coverage(set_members(test_probabilities, fit.quantile), test_labels, classes, confidence_level)
    return {"score": "lac", "alpha": alpha, "quantile": fit.quantile, "calibration": calibration,
            "n_calibration": fit.n, "test": test}


def conformal_metrics(summary: dict[str, Any]) -> dict[str, float | None]:
    """Flat figures of the ``conformal`` block (metrics.json, MLflow)."""
    test = summary["test"]
    return {"set_quantile": summary["quantile"], "set_coverage_test": test["coverage"],
            "set_mean_size_test": test["mean_set_size"]}


def conformal_line(model_name: str, summary: dict[str, Any]) -> str:
    test = summary["test"]
    coverage = "n/a" if test["coverage"] is None else f"{test['coverage']:.3f}"
    size = "n/a" if test["mean_set_size"] is None else f"{test['mean_set_size']:.2f}"
    return (f"{model_name}: prediction sets at alpha {summary['alpha']:g} (LAC quantile {summary['quantile']:.4f} "
            f"on {summary['n_calibration']} {summary['calibration']} images): test coverage {coverage}, mean set "
            f"size {size}")
