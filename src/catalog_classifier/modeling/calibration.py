"""Temperature scaling and calibration error: turn raw softmax scores into confidences that mean what they say.

A network trained with cross-entropy is usually over-confident; one scalar ``T`` (logits / T), fitted on the
validation split, fixes most of that without changing any prediction (argmax is invariant under T > 0). No I/O here.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, softmax

# Search range of T. Wide enough for any sane network; bounded so that a validation split the model separates
# perfectly (NLL falls forever as T -> 0) gives a finite, reported temperature instead of a numerical failure.
MIN_TEMPERATURE = 0.05
MAX_TEMPERATURE = 20.0


def _as_logits(logits: Any) -> np.ndarray:
    """float64 (n, classes) array from a numpy array or a torch tensor (float64 so the NLL minimum is precise)."""
    if hasattr(logits, "detach"):
        logits = logits.detach().cpu().numpy()
    array = np.asarray(logits, dtype=np.float64)
    if array.ndim != 2:
        raise ValueError(f"logits must be (images, classes), got shape {array.shape}")
    return array


def negative_log_likelihood(logits: Any, labels: Any, temperature: float) -> float:
    """Mean cross-entropy of ``softmax(logits / temperature)`` against ``labels``."""
    scores = _as_logits(logits)
    labels = np.asarray(labels, dtype=np.int64)
    log_probs = log_softmax(scores / temperature, axis=1)
    return float(-log_probs[np.arange(len(labels)), labels].mean())


def fit_temperature(val_logits: Any, val_labels: Any) -> float:
    """The T > 0 minimising validation NLL of ``softmax(logits / T)``; 1.0 when there is nothing to fit.

    Searched on log T (the NLL is smooth and unimodal there in practice) with a bounded Brent search; an already
    calibrated model comes back with T ≈ 1.
    """
    scores = _as_logits(val_logits)
    labels = np.asarray(val_labels, dtype=np.int64)
    if len(labels) == 0:
        return 1.0
    result = minimize_scalar(lambda log_t: negative_log_likelihood(scores, labels, float(np.exp(log_t))),
                             bounds=(np.log(MIN_TEMPERATURE), np.log(MAX_TEMPERATURE)), method="bounded",
                             options={"xatol": 1e-6})
    return float(np.exp(result.x))


def calibrated_probabilities(logits: Any, temperature: float) -> np.ndarray:
    """``softmax(logits / temperature)`` per row, float64."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    return softmax(_as_logits(logits) / temperature, axis=1)


def _bin_index(confidence: np.ndarray, n_bins: int) -> np.ndarray:
    """Equal-width bins on [0, 1], right-closed: bin i holds (i/n, (i+1)/n]; a confidence of 0 falls in bin 0."""
    return np.clip(np.ceil(confidence * n_bins).astype(np.int64) - 1, 0, n_bins - 1)


def reliability_bins(probabilities: Any, labels: Any, n_bins: int) -> list[dict[str, Any]]:
    """Per equal-width bin of max probability: bounds, count, mean confidence and accuracy (None when empty).

    The rows a reliability diagram draws (accuracy against confidence) and the ECE sums over.
    """
    probs = np.asarray(probabilities, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    confidence = probs.max(1) if len(probs) else np.zeros(0)
    correct = probs.argmax(1) == labels if len(probs) else np.zeros(0, dtype=bool)
    index = _bin_index(confidence, n_bins)
    rows = []
    for position in range(n_bins):
        members = index == position
        count = int(members.sum())
        rows.append({
            "lower": position / n_bins, "upper": (position + 1) / n_bins, "count": count,
            "confidence": float(confidence[members].mean()) if count else None,
            "accuracy": float(correct[members].mean()) if count else None,
        })
    return rows


def expected_calibration_error(probabilities: Any, labels: Any, n_bins: int) -> float:
    """Σ_bins (count / n) · |accuracy − mean confidence| over equal-width bins of max probability (0 when empty)."""
    rows = reliability_bins(probabilities, labels, n_bins)
    total = sum(row["count"] for row in rows)
    if total == 0:
        return 0.0
    return float(sum(row["count"] / total * abs(row["accuracy"] - row["confidence"]) for row in rows if row["count"]))
