"""How faithful a heatmap is to what the model uses: deletion and insertion curves, their AUCs, and a paired
bootstrap of each method against random heatmaps.

Deletion and insertion curves (Petsiuk et al., RISE, 2018) remove or restore pixels in the order a heatmap ranks
them and follow the probability of the explained class; both start from one baseline image set by params,
independent of either explainer, and a method counts as better than random only when a paired bootstrap interval
of its AUC difference excludes 0. Images are float RGB in [0, 1] (N, 3, H, W).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from catalog_classifier.explanations.explainers import Scorer


def random_saliency(shape: tuple[int, int], grid: int, rng: np.random.Generator) -> np.ndarray:
    """A random but smooth heatmap (uniform grid upsampled bilinearly): the baseline a method must beat.

    Random *regions*, not random pixels: deleting scattered pixels destroys an image far faster than
    deleting the same area in blobs, which would make a pixel-random baseline unfairly hard to beat.
    """
    import cv2

    coarse = rng.random((grid, grid)).astype(np.float32)
    return cv2.resize(coarse, (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)


def pixel_ranks(saliency: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Rank of every pixel, 0 = most salient; ties (SHAP patches) broken at random, not in raster order."""
    flat = saliency.ravel()
    order = np.lexsort((rng.random(flat.size), -flat))
    ranks = np.empty(flat.size, dtype=np.int64)
    ranks[order] = np.arange(flat.size)
    return ranks.reshape(saliency.shape)


BASELINES = ("image_mean", "grey")


def perturbation_baseline(images: torch.Tensor, kind: str) -> torch.Tensor:
    """What a removed pixel becomes (deletion) and what insertion starts from: one image per input image.

    Fixed by ``explain.faithfulness.baseline`` alone, never by either explainer: a blurred copy would be SHAP's
    own masker (SHAP's maps are optimised against exactly that filler) and black is far outside the training
    images. ``image_mean``: each image's mean colour; ``grey``: 0.5 everywhere.
    """
    if kind == "image_mean":
        return images.mean((2, 3), keepdim=True).expand_as(images).clone()
    if kind == "grey":
        return torch.full_like(images, 0.5)
    raise ValueError(f"unknown faithfulness baseline {kind!r}; one of {', '.join(BASELINES)}")


def perturbation_series(
    image: torch.Tensor, ranks: np.ndarray, steps: int, baseline: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Deletion and insertion series, each (steps + 1, 3, H, W).

    Deletion: the top k/steps of pixels replaced by the baseline; insertion: the top pixels pasted onto the
    baseline (RISE). The same baseline for both, so deletion ends where insertion starts.
    """
    total = ranks.size
    counts = np.round(np.linspace(0, total, steps + 1)).astype(np.int64)
    shown = torch.from_numpy(ranks[None] < counts[:, None, None]).unsqueeze(1)  # (S, 1, H, W): revealed first k
    deletion = torch.where(shown, baseline.unsqueeze(0), image.unsqueeze(0))
    insertion = torch.where(shown, image.unsqueeze(0), baseline.unsqueeze(0))
    return deletion, insertion


def auc(curve: np.ndarray) -> float:
    """Area under a curve sampled at equal fractions of pixels from 0 to 1."""
    return float(np.trapezoid(curve, dx=1.0 / (len(curve) - 1)))


@dataclass(frozen=True)
class Faithfulness:
    """Per-method curves (n_images, steps + 1) of P(target) while deleting / inserting pixels."""

    deletion: dict[str, np.ndarray]
    insertion: dict[str, np.ndarray]

    def summary(self) -> dict[str, dict[str, float]]:
        """Mean AUC per method (deletion: lower is better; insertion: higher is better) and its std error."""
        out: dict[str, dict[str, float]] = {}
        for method in self.deletion:
            deletion = np.array([auc(curve) for curve in self.deletion[method]])
            insertion = np.array([auc(curve) for curve in self.insertion[method]])
            n = len(deletion)
            out[method] = {
                "deletion_auc": round(float(deletion.mean()), 4),
                "insertion_auc": round(float(insertion.mean()), 4),
                "deletion_auc_se": round(float(deletion.std(ddof=1) / np.sqrt(n)) if n > 1 else 0.0, 4),
                "insertion_auc_se": round(float(insertion.std(ddof=1) / np.sqrt(n)) if n > 1 else 0.0, 4),
            }
        return out

    def aucs(self, method: str, kind: str) -> np.ndarray:
        """Per-image AUCs of one method's deletion or insertion curves (the pairs the bootstrap resamples)."""
        return np.array([auc(curve) for curve in getattr(self, kind)[method]])

    def versus_random(self, n_resamples: int, seed: int) -> dict[str, dict[str, dict[str, Any]]]:
        """Per method and curve kind: paired bootstrap of the AUC difference (method - random) and the decision."""
        out: dict[str, dict[str, dict[str, Any]]] = {}
        for method in self.deletion:
            if method == "random":
                continue
            out[method] = {}
            for kind in ("deletion", "insertion"):
                result = paired_bootstrap(self.aucs(method, kind), self.aucs("random", kind), n_resamples, seed)
                out[method][kind] = {**result, "better": better_than_random(result, kind)}
        return out

    def mean_curves(self) -> dict[str, dict[str, list[float]]]:
        """Mean curve per method (its trapezoid AUC equals the mean AUC: the rule is linear)."""
        return {method: {kind: [round(float(v), 4) for v in getattr(self, kind)[method].mean(0)]
                         for kind in ("deletion", "insertion")} for method in self.deletion}


def paired_bootstrap(method_aucs: np.ndarray, random_aucs: np.ndarray, n_resamples: int,
                     seed: int) -> dict[str, float]:
    """Mean AUC difference (method - random) over images and its 95 % percentile interval.

    Paired: both curves of one image are resampled together, so image difficulty (the bulk of the variance)
    cancels out of the difference instead of drowning it.
    """
    differences = np.asarray(method_aucs, dtype=np.float64) - np.asarray(random_aucs, dtype=np.float64)
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(differences), size=(n_resamples, len(differences)))
    means = differences[picks].mean(1)
    low, high = np.percentile(means, [2.5, 97.5])
    return {"mean_diff": round(float(differences.mean()), 4), "ci95_low": round(float(low), 4),
            "ci95_high": round(float(high), 4), "n_resamples": n_resamples}


def better_than_random(result: dict[str, float], kind: str) -> bool:
    """Better only when the whole interval lies on the good side of 0 (deletion: below, insertion: above)."""
    return result["ci95_high"] < 0 if kind == "deletion" else result["ci95_low"] > 0


def faithfulness_curves(
    scorer: Scorer,
    images: torch.Tensor,
    saliencies: dict[str, np.ndarray],
    targets: Sequence[int],
    steps: int,
    baseline: str,
    seed: int,
) -> Faithfulness:
    """Deletion and insertion curves of every method's heatmaps (``saliencies[method]`` is (N, H, W)).

    ``baseline`` (see :func:`perturbation_baseline`) is the one filler of both curves for every method.
    """
    rng = np.random.default_rng(seed)
    fillers = perturbation_baseline(images, baseline)
    deletion = {method: np.zeros((len(images), steps + 1), np.float32) for method in saliencies}
    insertion = {method: np.zeros((len(images), steps + 1), np.float32) for method in saliencies}
    for index, target in enumerate(targets):
        series = []
        for method in saliencies:
            series.extend(perturbation_series(images[index], pixel_ranks(saliencies[method][index], rng),
                                              steps, fillers[index]))
        probabilities = scorer(torch.cat(series))[:, int(target)].reshape(len(saliencies), 2, steps + 1)
        for position, method in enumerate(saliencies):
            deletion[method][index] = probabilities[position, 0]
            insertion[method][index] = probabilities[position, 1]
    return Faithfulness(deletion, insertion)
