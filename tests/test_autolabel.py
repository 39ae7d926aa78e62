"""Calibration (temperature, ECE) and the auto-labelling threshold: hand-computed cases, then the evaluate stage's
autolabel.json against the predictions it wrote in the tiny pipeline."""

from __future__ import annotations

import json
import math
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from conftest import TINY_MODELS

from catalog_classifier.config.params import AutolabelParams
from catalog_classifier.modeling.autolabel import (
    autolabel_report,
    choose_threshold,
    coverage_at,
    precision_coverage_curve,
    wilson_interval,
)
from catalog_classifier.modeling.calibration import (
    calibrated_probabilities,
    expected_calibration_error,
    fit_temperature,
    reliability_bins,
)

CONFIDENCE = [0.95, 0.9, 0.8, 0.7, 0.6, 0.5]
CORRECT = [True, True, True, False, True, False]


def test_threshold_is_the_lowest_confidence_reaching_the_target() -> None:
    # Subset precision at each threshold: 1, 1, 1, 3/4, 4/5, 4/6. At 0.75 both 0.7 (exactly 3/4) and 0.6 (4/5)
    # reach it: the lower one wins although precision dips at 0.7 in between.
    choice = choose_threshold(CONFIDENCE, CORRECT, 0.75)
    assert (choice.threshold, choice.reachable, choice.n_auto, choice.n) == (0.6, True, 5, 6)
    assert choice.coverage == pytest.approx(5 / 6) and choice.precision == pytest.approx(0.8)
    stricter = choose_threshold(CONFIDENCE, CORRECT, 0.9)
    assert (stricter.threshold, stricter.n_auto, stricter.coverage, stricter.precision) == (0.8, 3, 0.5, 1.0)


def test_an_unreachable_target_auto_labels_nothing() -> None:
    choice = choose_threshold([0.9, 0.8, 0.3], [False, True, True], 0.9)  # precisions 0/1, 1/2, 2/3
    assert (choice.threshold, choice.reachable, choice.coverage, choice.precision, choice.n_auto, choice.n) == (
        None, False, 0.0, None, 0, 3)
    measured = coverage_at(None, [0.9, 0.8, 0.3], [False, True, True], [0, 1, 1], ["a", "b"], 0.95)
    assert (measured.coverage, measured.precision, measured.n_auto, measured.precision_interval) == (0.0, None, 0, None)
    assert measured.per_class_coverage == {"a": 0.0, "b": 0.0}
    assert measured.coverage_interval[0] == 0.0 and measured.coverage_interval[1] == pytest.approx(0.561497, abs=1e-6)


def test_tied_confidences_are_all_in_or_all_out() -> None:
    confidence, correct = [0.9, 0.8, 0.8, 0.8, 0.5], [True, True, False, True, False]
    # Taking only the first 0.8 would give 2/2; the tie group as a whole gives 3/4, so 0.9 it is.
    strict = choose_threshold(confidence, correct, 0.9)
    assert (strict.threshold, strict.n_auto) == (0.9, 1)
    loose = choose_threshold(confidence, correct, 0.75)
    assert (loose.threshold, loose.n_auto, loose.precision) == (0.8, 4, 0.75)
    curve = precision_coverage_curve(confidence, correct)
    assert curve.to_dict("list") == {"threshold": [0.9, 0.8, 0.5], "coverage": [0.2, 0.8, 1.0],
                                     "precision": [1.0, 0.75, 0.6]}


def test_wilson_interval_matches_the_hand_computed_one() -> None:
    # 8/10 at 95 %: z = 1.959964, centre (0.8 + z²/20) / (1 + z²/10) = 0.716741, half-width 0.226578.
    low, high = wilson_interval(8, 10, 0.95)
    assert low == pytest.approx(0.490162, abs=1e-6) and high == pytest.approx(0.943318, abs=1e-6)
    assert wilson_interval(5, 5, 0.95)[1] == 1.0 and wilson_interval(0, 0, 0.95) is None
    # 0/5 and 5/5: the bounds are z²/(n + z²) = 3.841459 / 8.841459 = 0.434482 and n/(n + z²) = 0.565518.
    assert wilson_interval(0, 5, 0.95) == pytest.approx((0.0, 0.434482), abs=1e-6)
    assert wilson_interval(5, 5, 0.95) == pytest.approx((0.565518, 1.0), abs=1e-6)


def test_coverage_at_counts_per_true_class() -> None:
    measured = coverage_at(0.6, CONFIDENCE, CORRECT, [0, 0, 1, 1, 2, 2], ["a", "b", "c", "d"], 0.95)
    assert (measured.n_auto, measured.n) == (5, 6)
    assert measured.coverage == pytest.approx(5 / 6) and measured.precision == pytest.approx(0.8)
    assert measured.precision_interval == wilson_interval(4, 5, 0.95)
    assert measured.coverage_interval == wilson_interval(5, 6, 0.95)
    assert measured.per_class_coverage == {"a": 1.0, "b": 1.0, "c": 0.5, "d": None}


def test_ece_and_reliability_bins_on_a_hand_made_example() -> None:
    probabilities = np.array([[0.9, 0.05, 0.05], [0.8, 0.1, 0.1], [0.4, 0.3, 0.3], [0.2, 0.45, 0.35]])
    labels = np.array([0, 1, 0, 2])  # right, wrong, right, wrong
    # Bin (0, 0.5]: confidences 0.4, 0.45 -> mean 0.425, accuracy 0.5. Bin (0.5, 1]: 0.9, 0.8 -> 0.85, 0.5.
    rows = reliability_bins(probabilities, labels, 2)
    assert [(row["count"], row["confidence"], row["accuracy"]) for row in rows] == [
        (2, pytest.approx(0.425), 0.5), (2, pytest.approx(0.85), 0.5)]
    assert expected_calibration_error(probabilities, labels, 2) == pytest.approx(0.5 * 0.075 + 0.5 * 0.35)
    # A confidence exactly on a bin edge belongs to the lower bin (bins are right-closed).
    assert [row["count"] for row in reliability_bins(np.array([[0.5, 0.5]]), np.array([0]), 2)] == [1, 0]


def test_calibrated_probabilities_divide_the_logits_by_t() -> None:
    probabilities = calibrated_probabilities(np.array([[0.0, 2 * math.log(3)]]), 2.0)  # softmax([0, ln 3])
    assert probabilities.tolist() == [[pytest.approx(0.25), pytest.approx(0.75)]]


def _synthetic(scale: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Logits whose softmax is the true label distribution (labels drawn from it), then multiplied by ``scale``."""
    rng = np.random.default_rng(seed)
    true_logits = rng.normal(0.0, 2.0, size=(4000, 4))
    probabilities = calibrated_probabilities(true_logits, 1.0)
    labels = np.array([rng.choice(4, p=row) for row in probabilities])
    return true_logits * scale, labels


def test_temperature_fit_recovers_a_known_t() -> None:
    logits, labels = _synthetic(2.5, seed=0)  # over-confident by T0 = 2.5
    temperature = fit_temperature(logits, labels)
    assert temperature == pytest.approx(2.5, rel=0.06)
    before = expected_calibration_error(calibrated_probabilities(logits, 1.0), labels, 15)
    after = expected_calibration_error(calibrated_probabilities(logits, temperature), labels, 15)
    assert after < 0.03 < before
    calibrated_logits, calibrated_labels = _synthetic(1.0, seed=1)
    assert fit_temperature(calibrated_logits, calibrated_labels) == pytest.approx(1.0, abs=0.06)


def test_autolabel_report_chooses_on_val_and_measures_on_test() -> None:
    params = AutolabelParams(target_precision=0.9, ece_bins=10, interval_confidence=0.95)
    logits = {split: _synthetic(2.0, seed)[0] for split, seed in (("val", 2), ("test", 3))}
    labels = {split: _synthetic(2.0, seed)[1] for split, seed in (("val", 2), ("test", 3))}
    report = autolabel_report("m", logits, labels, ["a", "b", "c", "d"], params)
    summary = report.summary
    # No calibration set given: val is it (the threshold itself is checked by hand in the test below).
    val_confidence = calibrated_probabilities(logits["val"], summary["temperature"]).max(1)
    assert summary["reachable"] and summary["calibration"]["source"] == "val"
    auto_val = int((val_confidence >= summary["threshold"]).sum())
    assert summary["val"]["n_auto"] == summary["calibration"]["n_auto"] == auto_val
    assert summary["calibration"]["precision_lower_bound"] >= 0.9
    test_confidence = calibrated_probabilities(logits["test"], summary["temperature"]).max(1)
    auto_test = int((test_confidence >= summary["threshold"]).sum())
    assert summary["test"]["n_auto"] == auto_test == report.auto["test"].sum()
    assert summary["ece"]["test_after"] < summary["ece"]["test_before"]
    assert list(report.curve.columns) == ["split", "threshold", "coverage", "precision"]
    assert report.curve.groupby("split")["coverage"].max().to_dict() == {"test": 1.0, "val": 1.0}



def test_the_threshold_rests_on_the_precision_bound_worked_out_by_hand() -> None:
    # Two classes, so a higher margin is a higher confidence whatever temperature is fitted. Val: 40 images, margins
    # 9.8, 9.6, ..., 2.0; the 30 most confident are right, the 10 others wrong. One-sided 95 % Clopper-Pearson lower
    # bound of k right out of k: 0.05 ** (1 / k) >= 0.9 from k = 29 on (30: 0.904966). With the 31st image (30/31)
    # the bound is the 5 % quantile of Beta(30, 2), x**30 * (31 - 30 x) = 0.05 at x = 0.856 < 0.9, and it only falls
    # from there: 30 images are auto-labelled. (The point precision would take 33: 30/33 = 0.909 >= 0.9 > 30/34.)
    margins = 10 - 0.2 * np.arange(1, 41)
    val_logits = np.stack([margins, np.zeros(40)], axis=1)
    val_labels = np.array([0] * 30 + [1] * 10)
    # Test: the margins of val ranks 1-10 (above the threshold) and 31-40 (below it), all right.
    test_logits = np.concatenate([val_logits[:10], val_logits[30:]])
    params = AutolabelParams(target_precision=0.9, ece_bins=10, interval_confidence=0.95)
    summary = autolabel_report("m", {"val": val_logits, "test": test_logits},
                               {"val": val_labels, "test": np.zeros(20, dtype=int)}, ["a", "b"], params).summary
    assert summary["reachable"] and summary["val"]["n_auto"] == 30 and summary["test"]["n_auto"] == 10
    assert summary["calibration"]["precision_lower_bound"] == pytest.approx(0.904966, abs=1e-4)
    # The threshold is the calibrated confidence of the 30th image (margin 4.0): 1 / (1 + e^(-4.0 / T)).
    assert summary["threshold"] == pytest.approx(1 / (1 + math.exp(-4.0 / summary["temperature"])))

def _coverage(frame: pd.DataFrame) -> float:
    return float(frame["auto_labelled"].mean())


@pytest.mark.slow
def test_evaluate_writes_autolabel_json_that_agrees_with_its_predictions(tiny_pipeline: Path) -> None:
    mlflow.set_tracking_uri(f"sqlite:///{tiny_pipeline}/mlruns/mlflow.db")
    for model in TINY_MODELS:
        out = tiny_pipeline / "artifacts/eval" / model
        summary = json.loads((out / "autolabel.json").read_text())
        test = pd.read_csv(out / "predictions.csv")
        val = pd.read_csv(out / "val_predictions.csv")
        classes = [column[2:] for column in test.columns if column.startswith("p_")]
        assert summary["model"] == model and summary["target_precision"] == 0.98 and summary["ece"]["bins"] == 15
        # The calibrated confidence is softmax(log p / T) of the stage's own probabilities.
        powered = test[[f"p_{name}" for name in classes]].to_numpy() ** (1 / summary["temperature"])
        assert np.allclose(test["calibrated_confidence"], powered.max(1) / powered.sum(1), atol=1e-4)
        for frame, split in ((val, "val"), (test, "test")):
            figures = summary[split]
            assert (figures["n"], figures["n_auto"]) == (len(frame), int(frame["auto_labelled"].sum()))
            assert figures["coverage"] == pytest.approx(_coverage(frame), abs=1e-6)
            chosen = frame[frame["auto_labelled"]]
            assert figures["precision"] == (pytest.approx(chosen["correct"].mean(), abs=1e-6) if len(chosen) else None)
            if summary["reachable"]:
                assert (chosen["calibrated_confidence"] >= summary["threshold"] - 1e-6).all()
                rest = frame.loc[~frame["auto_labelled"], "calibrated_confidence"]
                assert (rest <= summary["threshold"] + 1e-6).all()
            else:
                assert summary["threshold"] is None and figures["n_auto"] == 0
        per_class = test.groupby("true_label")["auto_labelled"].mean().to_dict()
        assert summary["test"]["per_class_coverage"] == {
            name: pytest.approx(per_class[name], abs=1e-6) if name in per_class else None for name in classes}
        metrics = json.loads((out / "metrics.json").read_text())
        assert metrics["autolabel_coverage_test"] == summary["test"]["coverage"]
        assert metrics["temperature"] == summary["temperature"]
        assert metrics["autolabel_threshold"] == summary["threshold"]
        assert metrics["ece_test_before"] == summary["ece"]["test_before"]
        curve = pd.read_csv(out / "precision_coverage.csv")
        assert list(curve.columns) == ["split", "threshold", "coverage", "precision"]
        assert test["calibrated_confidence"].nunique() <= len(curve[curve["split"] == "test"]) <= len(test)
        assert (out / "reliability.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        run_id = json.loads((tiny_pipeline / f"artifacts/models/{model}/run.json").read_text())["run_id"]
        logged = mlflow.get_run(run_id).data.metrics
        assert logged["temperature"] == pytest.approx(summary["temperature"])
        assert logged["autolabel_coverage_test"] == pytest.approx(summary["test"]["coverage"])
