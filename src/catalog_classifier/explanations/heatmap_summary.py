"""Summaries of heatmaps in numbers: mean map per class, centre of mass, share of heat in the hottest pixels."""

from __future__ import annotations

import numpy as np


def class_mean_maps(maps: np.ndarray, labels: np.ndarray, num_classes: int) -> dict[int, np.ndarray]:
    """Mean heatmap per class over the images of that class (classes without images are left out)."""
    return {k: maps[labels == k].mean(0) for k in range(num_classes) if (labels == k).any()}


def heat_centre(heatmap: np.ndarray) -> tuple[float, float]:
    """Centre of mass of a heatmap as (row, column) fractions of the image: 0.5, 0.5 is the centre."""
    total = float(heatmap.sum())
    if total <= 0:
        return 0.5, 0.5
    rows, cols = np.indices(heatmap.shape)
    return (round(float((rows * heatmap).sum() / total / max(heatmap.shape[0] - 1, 1)), 4),
            round(float((cols * heatmap).sum() / total / max(heatmap.shape[1] - 1, 1)), 4))


def top_share(heatmap: np.ndarray, fraction: float = 0.2) -> float:
    """Share of the total heat held by the hottest ``fraction`` of pixels: 0.2 = uniform, 1 = a point."""
    flat = np.sort(np.clip(heatmap.ravel(), 0, None))[::-1]
    total = float(flat.sum())
    return round(float(flat[: max(1, round(fraction * flat.size))].sum() / total), 4) if total > 0 else 0.0
