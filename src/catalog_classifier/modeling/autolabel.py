"""Confident auto-labelling: which calibrated confidence is high enough to skip human review.

Temperature and threshold are fitted on the calibration predictions: the out-of-fold predictions of the
cross-validation on train+val where the model's fit is cheap (about 870 images), else the validation split (175).
The threshold is the lowest confidence at which a one-sided Clopper-Pearson lower bound (``bound_confidence``,
0.95) of the precision of the auto-labelled calibration images reaches the target: the point precision of a small
subset would pick the luckiest threshold, and the promise to the catalogue team is about new images. Test only
measures what the threshold gives, with Wilson intervals. No I/O here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import binomtest

from catalog_classifier.config.params import AutolabelParams
from catalog_classifier.modeling.calibration import (
    calibrated_probabilities,
    expected_calibration_error,
    fit_temperature,
    reliability_bins,
)
from catalog_classifier.modeling.uncertainty import clopper_pearson_lower

# Slack on "precision >= target": k/n computed in floating point must not miss a target it meets exactly.
_TOLERANCE = 1e-12


@dataclass(frozen=True)
class ThresholdChoice:
    """The chosen threshold (None when no threshold reaches the target) and what it gives on the split it was
    chosen on."""

    threshold: float | None
    reachable: bool
    coverage: float
    precision: float | None
    n_auto: int
    n: int
    precision_lower_bound: float | None = None  # one-sided Clopper-Pearson bound at the threshold (bounded choice)


@dataclass(frozen=True)
class CoverageAt:
    """What one threshold does on one split: share auto-labelled, their precision, intervals, per-class coverage."""

    coverage: float
    precision: float | None
    n_auto: int
    n: int
    precision_interval: tuple[float, float] | None
    coverage_interval: tuple[float, float] | None
    per_class_coverage: dict[str, float | None]


def _arrays(confidence: Any, correct: Any) -> tuple[np.ndarray, np.ndarray]:
    confidence = np.asarray(confidence, dtype=np.float64).ravel()
    correct = np.asarray(correct, dtype=bool).ravel()
    if confidence.shape != correct.shape:
        raise ValueError(f"{len(confidence)} confidences but {len(correct)} correctness flags")
    return confidence, correct


def _cumulative(confidence: Any, correct: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(distinct thresholds, descending; images with confidence >= each; correct ones among them).

    Counting only at the last image of each run of equal confidences keeps ties all in or all out.
    """
    confidence, correct = _arrays(confidence, correct)
    order = np.argsort(-confidence, kind="stable")
    ordered = confidence[order]
    hits = np.cumsum(correct[order])
    counts = np.arange(1, len(ordered) + 1)
    group_end = np.r_[ordered[1:] != ordered[:-1], True] if len(ordered) else np.zeros(0, dtype=bool)
    return ordered[group_end], counts[group_end], hits[group_end]


def choose_threshold(confidence: Any, correct: Any, target_precision: float,
                     bound_confidence: float | None = None) -> ThresholdChoice:
    """The lowest distinct confidence t whose subset ``confidence >= t`` reaches ``target_precision``: its point
    precision, or (``bound_confidence`` given) the one-sided Clopper-Pearson lower bound of its precision at that
    confidence level, which a small lucky subset cannot reach.

    Precision is not monotone in t, so every candidate is checked and the lowest that reaches the target wins
    (largest coverage). None reaching it: ``reachable=False``, no threshold, nothing auto-labelled.
    """
    thresholds, counts, hits = _cumulative(confidence, correct)
    total = len(np.asarray(confidence).ravel())
    if bound_confidence is None:
        reaching = np.flatnonzero(hits >= (target_precision - _TOLERANCE) * counts)
        bounds = None
    else:
        bounds = clopper_pearson_lower(hits, counts, bound_confidence)
        reaching = np.flatnonzero(bounds >= target_precision - _TOLERANCE)
    if not len(reaching):
        return ThresholdChoice(threshold=None, reachable=False, coverage=0.0, precision=None, n_auto=0, n=total)
    lowest = reaching[-1]
    return ThresholdChoice(threshold=float(thresholds[lowest]), reachable=True,
                           coverage=float(counts[lowest] / total), precision=float(hits[lowest] / counts[lowest]),
                           n_auto=int(counts[lowest]), n=total,
                           precision_lower_bound=None if bounds is None else float(bounds[lowest]))


def wilson_interval(successes: int, trials: int, confidence_level: float) -> tuple[float, float] | None:
    """Wilson score interval of a binomial proportion (sound at 0/n and n/n, unlike the normal one); None if n = 0.

    SciPy's (``binomtest(...).proportion_ci(method="wilson")``), two-sided at ``confidence_level``.
    """
    if trials == 0:
        return None
    interval = binomtest(successes, trials).proportion_ci(confidence_level, method="wilson")
    return float(max(0.0, interval.low)), float(min(1.0, interval.high))


def auto_labelled(threshold: float | None, confidence: Any) -> np.ndarray:
    """Which images a threshold auto-labels (none when there is no threshold)."""
    confidence = np.asarray(confidence, dtype=np.float64).ravel()
    if threshold is None:
        return np.zeros(len(confidence), dtype=bool)
    return confidence >= threshold


def coverage_at(threshold: float | None, confidence: Any, correct: Any, labels: Any, classes: list[str],
                confidence_level: float) -> CoverageAt:
    """Coverage and precision of ``threshold`` on one split, their Wilson intervals, and coverage per TRUE class
    (None for a class with no image in the split)."""
    confidence, correct = _arrays(confidence, correct)
    labels = np.asarray(labels, dtype=np.int64).ravel()
    chosen = auto_labelled(threshold, confidence)
    n_auto, total, hits = int(chosen.sum()), len(confidence), int(correct[chosen].sum())
    per_class: dict[str, float | None] = {}
    for index, name in enumerate(classes):
        members = labels == index
        per_class[name] = float(chosen[members].mean()) if members.any() else None
    return CoverageAt(coverage=n_auto / total if total else 0.0, precision=hits / n_auto if n_auto else None,
                      n_auto=n_auto, n=total, precision_interval=wilson_interval(hits, n_auto, confidence_level),
                      coverage_interval=wilson_interval(n_auto, total, confidence_level),
                      per_class_coverage=per_class)


def precision_coverage_curve(confidence: Any, correct: Any) -> pd.DataFrame:
    """One row per distinct threshold (descending): the coverage and precision of auto-labelling at it."""
    thresholds, counts, hits = _cumulative(confidence, correct)
    total = len(np.asarray(confidence).ravel())
    return pd.DataFrame({"threshold": thresholds, "coverage": counts / total if total else counts * 0.0,
                         "precision": hits / counts if len(counts) else hits * 0.0})


@dataclass(frozen=True)
class AutolabelReport:
    """Everything the evaluate stage writes about auto-labelling for one model."""

    summary: dict[str, Any]  # autolabel.json
    curve: pd.DataFrame  # precision_coverage.csv: split, threshold, coverage, precision
    confidence: dict[str, np.ndarray]  # calibrated max probability per split ("val", "test")
    auto: dict[str, np.ndarray]  # auto-labelled or not, per split
    reliability_before: list[dict[str, Any]]  # test, uncalibrated
    reliability_after: list[dict[str, Any]]  # test, calibrated


def _rounded_pair(pair: tuple[float, float] | None) -> list[float] | None:
    return None if pair is None else [round(pair[0], 6), round(pair[1], 6)]


@dataclass(frozen=True)
class CalibrationSet:
    """The predictions temperature and threshold are fitted on, and where they come from."""

    logits: Any
    labels: Any
    source: str  # "val" or "out-of-fold (5-fold x 2 on train+val, first repeat)"


def autolabel_report(model_name: str, logits: dict[str, Any], labels: dict[str, Any], classes: list[str],
                     params: AutolabelParams, calibration: CalibrationSet | None = None) -> AutolabelReport:
    """Fit T on the calibration set (default: val), measure ECE before/after, choose the threshold there with its
    precision bound, and report what it does on val and test.

    ``logits`` and ``labels`` hold the "val" and "test" splits. Temperature and threshold are kept unrounded so that
    ``softmax(logits / temperature).max() >= threshold`` on the same logits selects exactly the images counted here.
    """
    calibration = calibration or CalibrationSet(logits["val"], labels["val"], "val")
    temperature = fit_temperature(calibration.logits, calibration.labels)
    raw, calibrated, confidence, correct = {}, {}, {}, {}
    for split in ("val", "test"):
        raw[split] = calibrated_probabilities(logits[split], 1.0)
        calibrated[split] = calibrated_probabilities(logits[split], temperature)
        confidence[split] = calibrated[split].max(1)
        correct[split] = calibrated[split].argmax(1) == np.asarray(labels[split])
    fitted_on = calibrated_probabilities(calibration.logits, temperature)
    choice = choose_threshold(fitted_on.max(1), fitted_on.argmax(1) == np.asarray(calibration.labels),
                              params.target_precision, params.bound_confidence)
    on_val = coverage_at(choice.threshold, confidence["val"], correct["val"], labels["val"], classes,
                         params.interval_confidence)
    test = coverage_at(choice.threshold, confidence["test"], correct["test"], labels["test"], classes,
                       params.interval_confidence)
    ece = {f"{split}_{when}": round(expected_calibration_error(probs[split], labels[split], params.ece_bins), 6)
           for split in ("val", "test") for when, probs in (("before", raw), ("after", calibrated))}
    summary = {
        "model": model_name, "temperature": temperature, "target_precision": params.target_precision,
        "reachable": choice.reachable, "threshold": choice.threshold,
        "interval_confidence": params.interval_confidence, "bound_confidence": params.bound_confidence,
        "calibration": {"source": calibration.source, "coverage": round(choice.coverage, 6),
                        "precision": None if choice.precision is None else round(choice.precision, 6),
                        "precision_lower_bound": None if choice.precision_lower_bound is None
                        else round(choice.precision_lower_bound, 6),
                        "n_auto": choice.n_auto, "n": choice.n},
        "val": {"coverage": round(on_val.coverage, 6),
                "precision": None if on_val.precision is None else round(on_val.precision, 6),
                "n_auto": on_val.n_auto, "n": on_val.n},
        "test": {"coverage": round(test.coverage, 6),
                 "precision": None if test.precision is None else round(test.precision, 6),
                 "precision_interval": _rounded_pair(test.precision_interval),
                 "coverage_interval": _rounded_pair(test.coverage_interval),
                 "n_auto": test.n_auto, "n": test.n,
                 "per_class_coverage": {name: None if share is None else round(share, 6)
                                        for name, share in test.per_class_coverage.items()}},
        "ece": {**ece, "bins": params.ece_bins},
    }
    curve = pd.concat([precision_coverage_curve(confidence[split], correct[split]).assign(split=split)
                       for split in ("val", "test")], ignore_index=True)
    return AutolabelReport(
        summary=summary, curve=curve[["split", "threshold", "coverage", "precision"]], confidence=confidence,
        auto={split: auto_labelled(choice.threshold, confidence[split]) for split in ("val", "test")},
        reliability_before=reliability_bins(raw["test"], labels["test"], params.ece_bins),
        reliability_after=reliability_bins(calibrated["test"], labels["test"], params.ece_bins))


def autolabel_metrics(summary: dict[str, Any]) -> dict[str, float | None]:
    """The key figures of ``autolabel.json`` as flat metrics (evaluate's metrics.json, MLflow)."""
    return {
        "temperature": summary["temperature"], "autolabel_threshold": summary["threshold"],
        "autolabel_coverage_calibration": summary["calibration"]["coverage"],
        "autolabel_precision_bound_calibration": summary["calibration"]["precision_lower_bound"],
        "autolabel_coverage_val": summary["val"]["coverage"], "autolabel_coverage_test": summary["test"]["coverage"],
        "autolabel_precision_test": summary["test"]["precision"],
        "ece_test_before": summary["ece"]["test_before"], "ece_test_after": summary["ece"]["test_after"],
    }


def autolabel_line(summary: dict[str, Any]) -> str:
    """One printed line: the threshold and what it gives on test, or that the target is unreachable."""
    target = summary["target_precision"]
    source = summary["calibration"]["source"]
    if not summary["reachable"]:
        return (f"{summary['model']}: auto-labelling target precision {target:.2f} unreachable with a "
                f"{summary['bound_confidence']:.0%} lower bound on {source} (T {summary['temperature']:.3f}); "
                "nothing auto-labelled, coverage 0")
    test, fitted = summary["test"], summary["calibration"]
    precision = "n/a" if test["precision"] is None else f"{test['precision']:.3f}"
    interval = test.get("precision_interval")
    shown = f" [{interval[0]:.3f}, {interval[1]:.3f}]" if interval else ""
    return (f"{summary['model']}: auto-label at calibrated confidence >= {summary['threshold']:.4f} "
            f"(T {summary['temperature']:.3f}; on {source}: coverage {fitted['coverage']:.3f}, precision bound "
            f"{fitted['precision_lower_bound']:.4f} >= {target:.2f}): test coverage "
            f"{test['coverage']:.3f} ({test['n_auto']}/{test['n']}), precision {precision}{shown}")
