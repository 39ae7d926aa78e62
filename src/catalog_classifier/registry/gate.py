"""The promotion rule, as pure functions: which images both models are judged on, and who wins.

A challenger replaces the champion only when, on the same images, it is better beyond what the sample can explain:
a paired bootstrap (images resampled with replacement, both models scored on each resample) gives an interval of
macro-F1(challenger) - macro-F1(champion), and its lower end must exceed ``min_delta`` (0: significantly better at
``uncertainty.confidence``). A retrain of the same recipe with another seed differs by noise and stays challenger.
None of the challenger's class F1 scores may be below ``class_f1_floor``. "The same images" is today's test split
minus every image the champion was trained on (by file name or content hash), so neither model is judged on photos
it has memorised. The first model (no champion) must pass the floor only.

Auto-labelling adds two rules for every challenger, the first included. Its promise: the calibration predictions
(out-of-fold, else val) must give a threshold at which a one-sided lower confidence bound of precision reaches
``autolabel.target_precision`` while auto-labelling at least ``min_coverage`` of them; and at that threshold it
must auto-label at least ``min_coverage`` of the shared images too. A model that is accurate but confident on too
few photos saves no manual labelling. 0 disables both.

Scores are computed over the classes present in the shared images: removing the champion's training images
can leave a class with no test image, and an F1 of 0 for a class nobody could be tested on would decide
nothing but the outcome. Predictions of such a class still count as errors for the image's true class.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import pandas as pd
from sklearn.metrics import f1_score

from catalog_classifier.config.params import UncertaintyParams
from catalog_classifier.modeling.uncertainty import bootstrap_macro_f1, paired_bootstrap_delta

# F1 values are ratios of small integers: a delta equal to min_delta must not be lost to rounding.
TOLERANCE = 1e-9


@dataclass(frozen=True)
class Scores:
    """macro-F1 and per-class F1 of one model on the shared images (classes present there only)."""

    f1_macro: float
    per_class: dict[str, float]

    @property
    def weakest(self) -> tuple[str, float]:
        name = min(self.per_class, key=lambda key: (self.per_class[key], key))
        return name, self.per_class[name]


@dataclass(frozen=True)
class Decision:
    """Outcome of the gate, with every figure it compared (they become registry tags)."""

    promote: bool
    reason: str
    figures: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def score(true_labels: Sequence[str], predicted: Sequence[str], classes: Sequence[str]) -> Scores:
    """F1 per class present in ``true_labels`` and their mean (labels are class names)."""
    if len(true_labels) != len(predicted):
        raise ValueError(f"{len(true_labels)} true labels but {len(predicted)} predictions")
    present = [name for name in classes if name in set(true_labels)]
    if not present:
        raise ValueError("no image to score")
    values = f1_score(list(true_labels), list(predicted), labels=present, average=None, zero_division=0)
    per_class = {name: float(value) for name, value in zip(present, values, strict=True)}
    return Scores(f1_macro=float(sum(per_class.values()) / len(per_class)), per_class=per_class)


def shared_test_images(test_manifest: pd.DataFrame, champion_train: pd.DataFrame | None) -> tuple[pd.DataFrame,
                                                                                                   list[str]]:
    """Test rows the champion never trained on (matched by name or sha256), and the names left out."""
    if champion_train is None or champion_train.empty:
        return test_manifest.reset_index(drop=True), []
    seen = test_manifest["image"].isin(set(champion_train["image"]))
    if "sha256" in test_manifest and "sha256" in champion_train:
        seen |= test_manifest["sha256"].isin(set(champion_train["sha256"].dropna()))
    return test_manifest[~seen].reset_index(drop=True), sorted(test_manifest.loc[seen, "image"])


def autolabel_figures(true_labels: Sequence[str], predicted: Sequence[str], confidences: Sequence[float],
                      threshold: float | None) -> dict[str, float | int | None]:
    """Coverage (share of images with confidence >= threshold) and the precision of those auto-labels.

    No threshold (the target precision was not reachable, or the model carries no calibration): coverage 0.
    """
    if threshold is None:
        chosen = [False] * len(true_labels)
    else:
        chosen = [confidence >= threshold for confidence in confidences]
    n_auto = sum(chosen)
    right = sum(1 for keep, truth, guess in zip(chosen, true_labels, predicted, strict=True) if keep and truth == guess)
    return {"n_auto_labelled": n_auto,
            "coverage": n_auto / len(true_labels) if true_labels else 0.0,
            "precision": right / n_auto if n_auto else None}


@dataclass(frozen=True)
class AutolabelPromise:
    """What the challenger's calibration promises: the threshold (None: the bound never reached the target), the
    share of calibration images it auto-labels, the precision bound there, and what it was fitted on."""

    threshold: float | None
    coverage: float | None
    precision_lower_bound: float | None
    target_precision: float | None
    source: str | None = None


def _encode(labels: Sequence[str], classes: Sequence[str]) -> list[int]:
    index = {name: position for position, name in enumerate(classes)}
    unknown = len(classes)  # a label outside the configured classes: an error of every class, never a hit
    return [index.get(label, unknown) for label in labels]


def _promise_failure(promise: AutolabelPromise | None, min_coverage: float) -> str | None:
    if min_coverage <= 0 or promise is None:
        return None
    target = "?" if promise.target_precision is None else f"{promise.target_precision:g}"
    where = f" on {promise.source}" if promise.source else ""
    if promise.threshold is None:
        return f"auto-label precision: no threshold's lower bound reaches the target {target}{where}"
    if (promise.coverage or 0.0) < min_coverage - TOLERANCE:
        return (f"auto-label precision: the lower bound reaches {target} only at coverage "
                f"{promise.coverage or 0.0:.3f}{where}, below the minimum {min_coverage:g}")
    return None


def decide(
    true_labels: Sequence[str],
    challenger: Sequence[str],
    champion: Sequence[str] | None,
    classes: Sequence[str],
    *,
    min_delta: float,
    class_f1_floor: float,
    uncertainty: UncertaintyParams,
    coverage: float | None = None,
    min_coverage: float = 0.0,
    promise: AutolabelPromise | None = None,
) -> Decision:
    """Apply the rule to per-image predicted labels of both models on the same images (champion None: first).

    ``coverage`` is the challenger's auto-label coverage on those images (None: not measured, counts as 0 when
    ``min_coverage`` > 0); ``promise`` its calibration's precision bound (None: not checked).
    """
    if not true_labels:
        return Decision(False, "no shared test image: the champion was trained on every test image", {
            "n_images": 0, "min_delta": min_delta, "class_f1_floor": class_f1_floor, "min_coverage": min_coverage})
    mine = score(true_labels, challenger, classes)
    weakest_class, weakest_f1 = mine.weakest
    truth_ids = _encode(true_labels, classes)
    width = len(classes) + 1
    statistics = {"resamples": uncertainty.bootstrap_resamples, "confidence": uncertainty.confidence,
                  "seed": uncertainty.seed}
    mine_interval = bootstrap_macro_f1(truth_ids, _encode(challenger, classes), width, **statistics)
    figures: dict[str, Any] = {
        "n_images": len(true_labels),
        "challenger_f1_macro": round(mine.f1_macro, 6),
        "challenger_f1_macro_interval": [round(mine_interval.low, 6), round(mine_interval.high, 6)],
        "interval_confidence": uncertainty.confidence,
        "bootstrap_resamples": uncertainty.bootstrap_resamples,
        "challenger_class_f1": {name: round(value, 6) for name, value in mine.per_class.items()},
        "weakest_class": weakest_class,
        "weakest_class_f1": round(weakest_f1, 6),
        "min_delta": min_delta,
        "class_f1_floor": class_f1_floor,
        "min_coverage": min_coverage,
    }
    if coverage is not None:
        figures["challenger_coverage"] = round(coverage, 6)
    failures = []
    below = sorted(name for name, value in mine.per_class.items() if value < class_f1_floor - TOLERANCE)
    if below:
        listed = ", ".join(f"{name} {mine.per_class[name]:.3f}" for name in below)
        failures.append(f"class F1 below the floor {class_f1_floor:g}: {listed}")
    covered = coverage or 0.0
    if min_coverage > 0 and covered < min_coverage - TOLERANCE:
        failures.append(f"auto-label coverage {covered:.3f} below the minimum {min_coverage:g}")
    promise_failure = _promise_failure(promise, min_coverage)
    if promise is not None:
        figures.update(calibration_coverage=promise.coverage, calibration_precision_bound=promise.precision_lower_bound,
                       calibration_source=promise.source)
    if promise_failure:
        failures.append(promise_failure)
    if champion is None:
        if failures:
            return Decision(False, "first model: " + "; ".join(failures), figures)
        return Decision(True, f"first model: every class F1 >= {class_f1_floor:g} "
                              f"(weakest {weakest_class} {weakest_f1:.3f}){_covered(covered, min_coverage)}",
                        figures)
    theirs = score(true_labels, champion, classes)
    paired = paired_bootstrap_delta(truth_ids, _encode(challenger, classes), _encode(champion, classes), width,
                                    **statistics)
    figures.update(champion_f1_macro=round(theirs.f1_macro, 6), delta=round(paired.estimate, 6),
                   delta_interval=[round(paired.low, 6), round(paired.high, 6)],
                   champion_class_f1={name: round(value, 6) for name, value in theirs.per_class.items()})
    comparison = (f"macro-F1 {mine.f1_macro:.4f} vs champion {theirs.f1_macro:.4f}: difference "
                  f"{paired.estimate:+.4f}, paired {uncertainty.confidence:.0%} interval "
                  f"[{paired.low:+.4f}, {paired.high:+.4f}] on {len(true_labels)} images")
    if not paired.low > min_delta + TOLERANCE:
        failures.insert(0, f"{comparison}: its lower end is not above {min_delta:g}")
    if failures:
        return Decision(False, "; ".join(failures), figures)
    return Decision(True, f"{comparison}: lower end above {min_delta:g}; every class F1 >= {class_f1_floor:g}"
                          f"{_covered(covered, min_coverage)}", figures)


def _covered(coverage: float, min_coverage: float) -> str:
    return f"; auto-label coverage {coverage:.3f} >= {min_coverage:g}" if min_coverage > 0 else ""
