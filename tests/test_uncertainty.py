"""Intervals and bounds, checked against values computed by hand or by an independent route (sklearn, scipy)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import brentq
from scipy.stats import binom
from sklearn.metrics import f1_score

from catalog_classifier.modeling.autolabel import choose_threshold
from catalog_classifier.modeling.uncertainty import (
    bootstrap_macro_f1,
    clopper_pearson_lower,
    macro_f1,
    paired_bootstrap_delta,
)

TRUTH = [0, 0, 1, 1, 2, 2]
GOOD = [0, 0, 1, 1, 2, 0]  # F1 0: 4/5, 1: 1, 2: 2/3 -> macro 37/45


def test_macro_f1_is_the_hand_computed_value_and_sklearns() -> None:
    assert macro_f1(TRUTH, GOOD, 3) == pytest.approx(37 / 45)
    rng = np.random.default_rng(1)
    truth, predicted = rng.integers(0, 7, 300), rng.integers(0, 7, 300)
    assert macro_f1(truth, predicted, 7) == pytest.approx(f1_score(truth, predicted, average="macro"))


def test_macro_f1_averages_over_the_classes_present_and_counts_other_predictions_as_errors() -> None:
    # Class 2 has no true image: not averaged; predicting it for a 0 image is still a miss of class 0.
    truth, predicted = [0, 0, 1], [0, 2, 1]
    assert macro_f1(truth, predicted, 3) == pytest.approx((2 / 3 + 1) / 2)
    assert macro_f1(truth, predicted, 3) == pytest.approx(f1_score(truth, predicted, labels=[0, 1], average="macro"))


def test_bootstrap_interval_brackets_the_estimate_and_shrinks_with_n() -> None:
    small = bootstrap_macro_f1(TRUTH * 5, GOOD * 5, 3, resamples=2000, confidence=0.95, seed=0)
    large = bootstrap_macro_f1(TRUTH * 100, GOOD * 100, 3, resamples=2000, confidence=0.95, seed=0)
    assert small.estimate == large.estimate == pytest.approx(37 / 45)
    assert small.low < 37 / 45 < small.high and large.low < 37 / 45 < large.high
    # The width falls like 1 / sqrt(n): 20 times the images, about a 4.5th of the width.
    ratio = (small.high - small.low) / (large.high - large.low)
    assert 3.5 < ratio < 5.5
    assert (small.n, small.confidence) == (30, 0.95)
    # Seeded: the same call gives the same interval.
    again = bootstrap_macro_f1(TRUTH * 5, GOOD * 5, 3, resamples=2000, confidence=0.95, seed=0)
    assert (again.low, again.high) == (small.low, small.high)


def test_a_perfect_model_has_a_degenerate_interval() -> None:
    perfect = bootstrap_macro_f1(TRUTH, TRUTH, 3, resamples=500, confidence=0.95, seed=0)
    assert (perfect.estimate, perfect.low, perfect.high) == (1.0, 1.0, 1.0)


def test_paired_difference_of_identical_predictions_is_exactly_zero() -> None:
    same = paired_bootstrap_delta(TRUTH * 10, GOOD * 10, GOOD * 10, 3, resamples=500, confidence=0.95, seed=0)
    assert (same.estimate, same.low, same.high) == (0.0, 0.0, 0.0)


def test_pairing_is_narrower_than_resampling_each_model_on_its_own() -> None:
    # Two models that agree on 58 of 60 images. Scored on independent resamples, the difference swings with which
    # images each happened to draw; scored on the same resample, only the two images they disagree on move it.
    truth = TRUTH * 10
    first = GOOD * 10
    second = list(first)
    second[5] = second[11] = 2  # two more right (both are class-2 images)
    paired = paired_bootstrap_delta(truth, second, first, 3, resamples=2000, confidence=0.95, seed=0)
    rng = np.random.default_rng(0)
    unpaired = []
    for _ in range(300):
        a, b = rng.integers(0, 60, 60), rng.integers(0, 60, 60)
        unpaired.append(f1_score(np.take(truth, a), np.take(second, a), average="macro")
                        - f1_score(np.take(truth, b), np.take(first, b), average="macro"))
    low, high = np.percentile(unpaired, [2.5, 97.5])
    assert paired.estimate == pytest.approx(f1_score(truth, second, average="macro")
                                            - f1_score(truth, first, average="macro"))
    assert paired.high - paired.low < (high - low) / 2


def test_clopper_pearson_lower_bound_matches_the_closed_forms() -> None:
    # k = n: the bound solves p^n = 1 - confidence, so p = 0.05^(1/n).
    for n in (1, 10, 59, 150):
        assert clopper_pearson_lower(n, n, 0.95) == pytest.approx(0.05 ** (1 / n))
    # k = 1 of n: P(X >= 1) = 1 - (1 - p)^n = 0.05, so p = 1 - 0.95^(1/n).
    assert clopper_pearson_lower(1, 20, 0.95) == pytest.approx(1 - 0.95 ** (1 / 20))
    assert clopper_pearson_lower(0, 20, 0.95) == 0.0
    assert clopper_pearson_lower(0, 0, 0.95) == 0.0


def test_a_lucky_small_subset_does_not_set_the_threshold() -> None:
    # Confidence descending; the 10 most confident are all right, then one error every 25.
    confidence = np.linspace(0.999, 0.5, 400)
    correct = np.ones(400, dtype=bool)
    correct[10::25] = False
    point = choose_threshold(confidence, correct, 0.98)
    bounded = choose_threshold(confidence, correct, 0.98, bound_confidence=0.95)
    # The point rule takes the lucky top 10 (10/10 = 1.0; from 11 on, one error in 25 keeps it near 0.96).
    assert (point.n_auto, point.precision) == (10, 1.0)
    # The bound of 10/10 is 0.05^(1/10) = 0.74, and no larger subset comes near: 0.98 is never reached here.
    assert not bounded.reachable and bounded.threshold is None


def test_the_bounded_threshold_is_the_lowest_whose_bound_reaches_the_target() -> None:
    # 400 right in a row, then errors: 0.05^(1/n) >= 0.98 needs n >= 149 (0.05^(1/149) = 0.98010).
    confidence = np.linspace(0.999, 0.2, 500)
    correct = np.r_[np.ones(400, dtype=bool), np.zeros(100, dtype=bool)]
    choice = choose_threshold(confidence, correct, 0.98, bound_confidence=0.95)
    # Past 400 the errors start: 400/401, 400/402, ... the last n whose bound still reaches 0.98. The bound is
    # computed independently here: the p at which seeing >= k successes in n has probability 0.05.
    bounds = [brentq(lambda p, n=n: binom.sf(399, n, p) - 0.05, 0.5, 1 - 1e-12) for n in range(400, 420)]
    last = 400 + max(i for i, value in enumerate(bounds) if value >= 0.98)
    assert choice.n_auto == last and choice.threshold == pytest.approx(confidence[last - 1])
    assert choice.precision_lower_bound == pytest.approx(bounds[last - 400])
    assert 0.98 <= choice.precision_lower_bound < 0.99
