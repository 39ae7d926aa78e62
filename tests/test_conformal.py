"""Conformal prediction sets (split conformal, LAC score, MAPIE): the quantile, the sets and their coverage on
hand-computed cases, and agreement with MAPIE's own ``predict_set`` on random predictions."""

from __future__ import annotations

import math

import numpy as np
import pytest

from catalog_classifier.modeling.conformal import (
    conformal_summary,
    fit_conformal,
    join_set,
    set_coverage,
    set_labels,
    set_members,
    split_set,
)

CLASSES = ["a", "b", "c"]
# Nine calibration images of class a with p(a) = these: LAC scores 1 - p(a) are 0.1, 0.2, ..., 0.8 and 0.05.
P_TRUE = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.95]


def _calibration() -> tuple[np.ndarray, np.ndarray]:
    probs = np.array([[p, (1 - p) / 2, (1 - p) / 2] for p in P_TRUE])
    return probs, np.zeros(len(P_TRUE), dtype=int)


def test_the_quantile_is_the_hand_computed_order_statistic() -> None:
    probs, labels = _calibration()
    # n = 9, alpha = 0.2: k = ceil((9 + 1) * 0.8) = 8; sorted scores 0.05 0.1 0.2 0.3 0.4 0.5 0.6 0.7 0.8 -> 0.7.
    fit = fit_conformal(probs, labels, 0.2)
    assert fit.quantile == pytest.approx(0.7, abs=1e-12) and fit.n == 9 and fit.alpha == 0.2
    # alpha = 0.3: k = ceil(10 * 0.7) = 7 -> the 7th smallest score, 0.6.
    assert fit_conformal(probs, labels, 0.3).quantile == pytest.approx(0.6, abs=1e-12)


def test_too_few_calibration_images_for_the_level_give_every_class() -> None:
    probs, labels = _calibration()
    # n = 9, alpha = 0.05: k = ceil(10 * 0.95) = 10 > 9: no order statistic, q = 1 (all classes).
    fit = fit_conformal(probs, labels, 0.05)
    assert fit.quantile == 1.0
    assert set_members(probs[:2], fit.quantile).all()


def test_sets_hold_every_class_within_the_quantile_most_probable_first_never_empty() -> None:
    test = np.array([[0.5, 0.3, 0.2], [0.25, 0.25, 0.5], [0.34, 0.33, 0.33]])
    # q = 0.7: a class is in when 1 - p <= 0.7, i.e. p >= 0.3 (0.3 itself included).
    assert set_labels(test, 0.7, CLASSES) == [["a", "b"], ["c"], ["a", "b", "c"]]
    # q = 0.1 (p >= 0.9): no class of row 0 qualifies, so it keeps its top-1 label.
    assert set_labels(test, 0.1, CLASSES) == [["a"], ["c"], ["a"]]
    assert join_set(["Home Decor & Festive Needs", "Watches"]) == "Home Decor & Festive Needs|Watches"
    assert split_set("a|b") == ["a", "b"] and split_set("") == []


def test_coverage_and_set_size_overall_and_per_class_are_the_hand_computed_ones() -> None:
    test = np.array([[0.5, 0.3, 0.2], [0.25, 0.25, 0.5], [0.34, 0.33, 0.33]])
    labels = np.array([1, 0, 2])  # sets {a, b} holds b; {c} misses a; {a, b, c} holds c
    figures = set_coverage(set_members(test, 0.7), labels, CLASSES, 0.95)
    assert figures["n"] == 3 and figures["coverage"] == pytest.approx(2 / 3, abs=1e-6)
    assert figures["mean_set_size"] == 2.0 and figures["size_counts"] == {"1": 1, "2": 1, "3": 1}
    assert figures["per_class"] == {"a": {"n": 1, "coverage": 0.0, "mean_set_size": 1.0},
                                    "b": {"n": 1, "coverage": 1.0, "mean_set_size": 2.0},
                                    "c": {"n": 1, "coverage": 1.0, "mean_set_size": 3.0}}
    # Wilson 95 % interval of 2/3 by hand: z = 1.959964, centre (2/3 + z²/6) / (1 + z²/3), half-width below.
    z = 1.959963984540054
    centre = (2 / 3 + z * z / 6) / (1 + z * z / 3)
    half = z / (1 + z * z / 3) * math.sqrt((2 / 3) * (1 / 3) / 3 + z * z / 36)
    assert figures["coverage_interval"] == pytest.approx([centre - half, centre + half], abs=1e-6)


def test_the_summary_calibrates_on_one_split_and_measures_on_another() -> None:
    probs, labels = _calibration()
    test = np.array([[0.5, 0.3, 0.2], [0.25, 0.25, 0.5], [0.34, 0.33, 0.33]])
    summary = conformal_summary(probs, labels, test, [1, 0, 2], CLASSES, 0.2, 0.95, calibration="oof")
    assert summary["quantile"] == pytest.approx(0.7, abs=1e-12)
    assert summary["alpha"] == 0.2 and summary["n_calibration"] == 9 and summary["calibration"] == "oof"
    assert summary["test"]["coverage"] == pytest.approx(2 / 3, abs=1e-6) and summary["test"]["mean_set_size"] == 2


def test_sets_and_quantile_agree_with_mapie_and_the_order_statistic_on_random_predictions() -> None:
    from mapie.classification import SplitConformalClassifier
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(7)
    features = rng.normal(size=(600, 4))
    labels = (features[:, 0] + 0.7 * features[:, 1] + rng.normal(scale=0.8, size=600) > 0).astype(int) + (
        features[:, 2] > 0.8).astype(int)
    model = LogisticRegression().fit(features[:300], labels[:300])
    calibration = model.predict_proba(features[300:475])  # 175 calibration images, as on the real val split
    test = model.predict_proba(features[475:])
    alpha = 0.05
    fit = fit_conformal(calibration, labels[300:475], alpha)
    scores = np.sort(1 - calibration[np.arange(175), labels[300:475]])
    assert fit.quantile == scores[math.ceil(176 * 0.95) - 1]  # the 168th smallest score
    mapie = SplitConformalClassifier(model, confidence_level=1 - alpha, prefit=True).conformalize(
        features[300:475], labels[300:475])
    _, mapie_sets = mapie.predict_set(features[475:])
    expected = mapie_sets[:, :, 0].copy()
    empty = ~expected.any(1)
    expected[empty, test[empty].argmax(1)] = True  # ours never leaves a set empty
    assert np.array_equal(set_members(test, fit.quantile), expected)
