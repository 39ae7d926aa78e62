"""The explanation figures (matplotlib, Agg): one image with its SHAP and Grad-CAM maps, class means, the SHAP
summary and the faithfulness curves. Drawing only: every number shown is computed elsewhere."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from catalog_classifier.explanations.faithfulness import Faithfulness


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(figure: Any, path: Path) -> None:
    from catalog_classifier.ops.io import atomic_path

    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=100)
    _pyplot().close(figure)


def _hwc(image: torch.Tensor) -> np.ndarray:
    return image.permute(1, 2, 0).clamp(0, 1).numpy()


def _draw_shap(axes: Any, image: np.ndarray, values: np.ndarray, limit: float | None = None) -> Any:
    """SHAP's own look: the photo in grey, positive evidence red, negative blue (symmetric scale)."""
    from shap.plots.colors import red_transparent_blue

    limit = limit or float(np.abs(values).max()) or 1.0
    axes.imshow(image.mean(-1), cmap="gray", alpha=0.3)
    return axes.imshow(values, cmap=red_transparent_blue, vmin=-limit, vmax=limit)


def _draw_cam(axes: Any, image: np.ndarray, cam: np.ndarray) -> Any:
    axes.imshow(image)
    return axes.imshow(cam, cmap="jet", alpha=0.45, vmin=0, vmax=1)


def plot_local(image: torch.Tensor, shap_values: np.ndarray, cam: np.ndarray, title: str, path: Path) -> None:
    """One figure per image: original | SHAP | Grad-CAM, titled with true class, prediction and probability."""
    plt = _pyplot()
    picture = _hwc(image)
    figure, axes = plt.subplots(1, 3, figsize=(12, 4.4))
    axes[0].imshow(picture)
    axes[0].set_title("original")
    shown = _draw_shap(axes[1], picture, shap_values)
    figure.colorbar(shown, ax=axes[1], fraction=0.046, label="SHAP value (probability)")
    axes[1].set_title("SHAP (Partition, blur masker)")
    shown = _draw_cam(axes[2], picture, cam)
    figure.colorbar(shown, ax=axes[2], fraction=0.046)
    axes[2].set_title("Grad-CAM")
    for ax in axes:
        ax.axis("off")
    figure.suptitle(title)
    figure.tight_layout()
    _save(figure, path)


def plot_class_means(means: dict[int, np.ndarray], counts: dict[int, int], classes: list[str], title: str,
                     path: Path) -> None:
    """Mean Grad-CAM heatmap per class: where the model looks, on average, to recognise each class."""
    plt = _pyplot()
    columns = min(4, len(classes))
    rows = -(-len(classes) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 3.4 * rows), squeeze=False)
    for index, ax in enumerate(axes.ravel()):
        ax.axis("off")
        if index >= len(classes):
            continue
        if index in means:
            ax.imshow(means[index], cmap="jet", vmin=0, vmax=1)
        ax.set_title(f"{classes[index]}\n(n={counts.get(index, 0)})", fontsize=9)
    figure.suptitle(title)
    figure.tight_layout()
    _save(figure, path)


def plot_shap_summary(images: torch.Tensor, values: np.ndarray, captions: list[str], mean_abs: np.ndarray,
                      title: str, path: Path, max_rows: int = 8) -> None:
    """SHAP over a sample: image / SHAP pairs (shared colour scale) and the mean |SHAP| map of the sample."""
    plt = _pyplot()
    shown = min(max_rows, len(images))
    columns = 4  # two image/SHAP pairs per row
    rows = -(-shown // 2) + 1
    figure, axes = plt.subplots(rows, columns, figsize=(3 * columns, 3.1 * rows), squeeze=False)
    limit = (float(np.percentile(np.abs(values[:shown]), 99.5)) if shown else 0.0) or 1.0
    for ax in axes.ravel():
        ax.axis("off")
    for index in range(shown):
        row, col = divmod(index, 2)
        picture = _hwc(images[index])
        axes[row, 2 * col].imshow(picture)
        axes[row, 2 * col].set_title(captions[index], fontsize=8)
        _draw_shap(axes[row, 2 * col + 1], picture, values[index], limit)
    last = axes[rows - 1, 0]
    last.imshow(mean_abs, cmap="magma")
    last.set_title(f"mean |SHAP|, {len(values)} images", fontsize=9)
    figure.suptitle(title)
    figure.tight_layout()
    _save(figure, path)


def plot_faithfulness(result: Faithfulness, title: str, path: Path) -> None:
    """Mean deletion and insertion curves per method, AUC in the legend."""
    plt = _pyplot()
    summary = result.summary()
    figure, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, kind in zip(axes, ("deletion", "insertion"), strict=True):
        curves = getattr(result, kind)
        for method, values in curves.items():
            x = np.linspace(0, 1, values.shape[1])
            ax.plot(x, values.mean(0), marker="o", label=f"{method} (AUC {summary[method][f'{kind}_auc']:.3f})")
        better = "lower" if kind == "deletion" else "higher"
        ax.set(xlabel=f"fraction of pixels {'removed' if kind == 'deletion' else 'restored'}",
               ylabel="P(explained class)", title=f"{kind} ({better} AUC is better)", ylim=(0, 1))
        ax.legend()
    figure.suptitle(title)
    figure.tight_layout()
    _save(figure, path)
