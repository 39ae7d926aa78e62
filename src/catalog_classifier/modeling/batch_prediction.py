"""Batch prediction for auto-labelling: a folder, files or a CSV of images in; predictions, a review queue and,
when true labels are given, the precision the auto-labels reached.

The predictions file holds one row per input (an unreadable or missing file gets its reason in ``error``). Beside
it, ``<stem>_review.csv`` holds the rows a human must look at (``needs_review``), most uncertain first, and
``<stem>_summary.json`` the counts: how many were auto-labelled (coverage) and, with a ``label`` column in the
input CSV, the share of auto-labels that were right (precision), to compare with the target the threshold was
chosen for on validation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from catalog_classifier.modeling.prediction import ImageClassifier, expand_paths, parse_top3
from catalog_classifier.ops.exits import InputError
from catalog_classifier.ops.io import write_csv, write_json

IMAGE_COLUMN = "image"
LABEL_COLUMN = "label"


@dataclass(frozen=True)
class BatchInput:
    """What to predict: the name shown in the output, the file (None: the row names none), the true label."""

    names: list[str]
    paths: list[Path | None]
    labels: list[str] | None = None


def read_csv_input(path: Path) -> BatchInput:
    """A CSV with an ``image`` column (paths absolute or relative to the CSV's folder) and optionally ``label``."""
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: not a readable CSV ({str(err).splitlines()[0] if str(err) else 'empty'})") from None
    if IMAGE_COLUMN not in frame.columns:
        columns = ", ".join(map(str, frame.columns)) or "none"
        raise InputError(f"{path} has no {IMAGE_COLUMN!r} column (columns: {columns}): it needs one, holding "
                         "image paths absolute or relative to the CSV's folder")
    names = [cell.strip() for cell in frame[IMAGE_COLUMN]]
    paths = [(path.parent / name if name else None) for name in names]  # an absolute name stays absolute
    labels = [cell.strip() for cell in frame[LABEL_COLUMN]] if LABEL_COLUMN in frame.columns else None
    return BatchInput(names=names, paths=paths, labels=labels)


def read_inputs(sources: Sequence[str | Path]) -> BatchInput:
    """One CSV file, or image files and folders (searched recursively); nothing found is an error."""
    sources = [Path(source) for source in sources]
    csvs = [source for source in sources if source.suffix.lower() == ".csv"]
    if csvs:
        if len(sources) != 1:
            raise InputError("a CSV input is given alone (one --input CSV, no other paths)")
        if not csvs[0].is_file():
            raise FileNotFoundError(f"no such CSV file: {csvs[0]}")
        batch = read_csv_input(csvs[0])
    else:
        files = expand_paths(sources)
        batch = BatchInput(names=[str(path) for path in files], paths=list(files))
    if not batch.names:
        raise FileNotFoundError(f"no image found in {', '.join(map(str, sources))}")
    return batch


def predict_batch(classifier: ImageClassifier, batch: BatchInput) -> pd.DataFrame:
    """One row per input, in order; the classifier decodes and runs ``batch_size`` images at a time."""
    return classifier.predict_files(batch.paths, names=batch.names, progress_desc="predict")


def margin(top3: str) -> float:
    """Top-1 minus top-2 probability (how close the runner-up was); 1 with a single class, NaN without one."""
    probabilities = [probability for _, probability in parse_top3(top3)]
    if not probabilities:
        return math.nan
    return probabilities[0] - (probabilities[1] if len(probabilities) > 1 else 0.0)


def review_queue(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows needing review, most uncertain first: lowest confidence, then smallest top-1/top-2 margin.

    Unreadable rows (no confidence) come last: nobody can label them by looking until the file is fixed.
    """
    queue = frame[frame["needs_review"].astype(bool)].copy()
    queue["_margin"] = queue["top3"].map(margin)
    queue["_unreadable"] = queue["error"] != ""
    queue = queue.sort_values(["_unreadable", "confidence", "_margin"], kind="stable", na_position="last")
    return queue.drop(columns=["_margin", "_unreadable"]).reset_index(drop=True)


def summarise(frame: pd.DataFrame, classifier: ImageClassifier, labels: Sequence[str] | None) -> dict[str, Any]:
    """Counts, coverage (auto-labelled share of all rows) and, with true labels, the auto-labels' precision.

    With labels, coverage and precision are over the rows that have a true label; an unreadable row counts as
    not auto-labelled.
    """
    calibration = classifier.calibration
    auto = ~frame["needs_review"].astype(bool) & (frame["error"] == "")
    summary: dict[str, Any] = {
        "n_images": len(frame),
        "n_unreadable": int((frame["error"] != "").sum()),
        "n_auto_labelled": int(auto.sum()),
        "n_review": int((~auto).sum()),
        "coverage": _ratio(int(auto.sum()), len(frame)),
        "temperature": calibration.temperature,
        "threshold": calibration.threshold,
        "target_precision": calibration.target_precision,
    }
    if labels is not None:
        known = pd.Series([bool(label) for label in labels], index=frame.index)
        correct = frame["label"] == pd.Series(list(labels), index=frame.index)
        summary.update(n_labelled=int(known.sum()),
                       n_auto_labelled_with_label=int((auto & known).sum()),
                       n_auto_labelled_correct=int((auto & known & correct).sum()),
                       coverage=_ratio(int((auto & known).sum()), int(known.sum())),
                       precision=_ratio(int((auto & known & correct).sum()), int((auto & known).sum())))
    return summary


def _ratio(part: int, whole: int) -> float | None:
    return round(part / whole, 6) if whole else None


def companion_paths(output: Path) -> tuple[Path, Path]:
    """``<stem>_review.csv`` and ``<stem>_summary.json`` beside the predictions file."""
    return output.with_name(f"{output.stem}_review.csv"), output.with_name(f"{output.stem}_summary.json")


def write_outputs(output: Path, frame: pd.DataFrame, summary: dict[str, Any]) -> tuple[Path, Path]:
    """Predictions, review queue and summary, each written atomically; returns (review, summary) paths."""
    review, summary_path = companion_paths(output)
    write_csv(output, frame)
    write_csv(review, review_queue(frame))
    write_json(summary_path, summary)
    return review, summary_path


def describe_summary(summary: dict[str, Any]) -> str:
    """One line: auto-labelled share and, with true labels, their precision against the target."""
    def share(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.1%}"

    threshold = "none (target not reachable: all to review)" if summary["threshold"] is None else (
        f"{summary['threshold']:.4f}")
    line = (f"auto-labelled {summary['n_auto_labelled']}/{summary['n_images']} "
            f"(coverage {share(summary['coverage'])}), {summary['n_review']} to review, "
            f"{summary['n_unreadable']} unreadable; threshold {threshold}")
    if "precision" in summary:
        target = summary["target_precision"]
        line += (f"; precision on auto-labelled rows {share(summary['precision'])} "
                 f"({summary['n_auto_labelled_correct']}/{summary['n_auto_labelled_with_label']} right"
                 f"{'' if target is None else f', target {target:.1%}'})")
    return line
