"""Metrics and figures for one model on one split: macro-F1 first, then accuracy, per class, confusion."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support


def classification_metrics(labels: np.ndarray, predictions: np.ndarray, classes: list[str]) -> dict[str, Any]:
    """macro-F1, accuracy and per-class precision/recall/F1/support (every class listed, even if absent)."""
    ids = list(range(len(classes)))
    precision, recall, f1, support = precision_recall_fscore_support(
        labels, predictions, labels=ids, zero_division=0
    )
    return {
        "f1_macro": float(f1_score(labels, predictions, labels=ids, average="macro", zero_division=0)),
        "accuracy": float(accuracy_score(labels, predictions)),
        "per_class": {
            name: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, name in enumerate(classes)
        },
    }


def predictions_frame(names: list[str], labels: np.ndarray, probabilities: np.ndarray,
                      classes: list[str]) -> pd.DataFrame:
    """One row per image: true and predicted class, confidence and every class probability."""
    predicted = probabilities.argmax(1)
    frame = pd.DataFrame(
        {
            "image": names,
            "true_label": [classes[i] for i in labels],
            "pred_label": [classes[i] for i in predicted],
            "true_id": labels,
            "pred_id": predicted,
            "confidence": probabilities.max(1).round(6),
            "correct": labels == predicted,
        }
    )
    for index, name in enumerate(classes):
        frame[f"p_{name}"] = probabilities[:, index].round(6)
    return frame


def plot_confusion(labels: np.ndarray, predictions: np.ndarray, classes: list[str], title: str,
                   path: Path) -> None:
    """Confusion matrix PNG with class names, counts in the cells."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from catalog_classifier.ops.io import atomic_path

    matrix = confusion_matrix(labels, predictions, labels=list(range(len(classes))))
    figure, axes = plt.subplots(figsize=(8, 7))
    image = axes.imshow(matrix, cmap="Blues")
    figure.colorbar(image, ax=axes, fraction=0.046)
    axes.set_xticks(range(len(classes)), classes, rotation=40, ha="right")
    axes.set_yticks(range(len(classes)), classes)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    axes.set_title(title)
    threshold = matrix.max() / 2 if matrix.size else 0
    for (row, col), count in np.ndenumerate(matrix):
        axes.text(col, row, str(count), ha="center", va="center",
                  color="white" if count > threshold else "black")
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=110)
    plt.close(figure)


def plot_curves(history: pd.DataFrame, title: str, path: Path) -> None:
    """Learning curves: loss and macro-F1 per epoch, train against validation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from catalog_classifier.ops.io import atomic_path

    figure, (loss_axes, f1_axes) = plt.subplots(1, 2, figsize=(11, 4))
    for split in ("train", "val"):
        loss_axes.plot(history["epoch"], history[f"{split}_loss"], marker="o", label=split)
        f1_axes.plot(history["epoch"], history[f"{split}_f1_macro"], marker="o", label=split)
    loss_axes.set(xlabel="epoch", ylabel="cross-entropy", title=f"{title}: loss")
    f1_axes.set(xlabel="epoch", ylabel="macro-F1", title=f"{title}: macro-F1", ylim=(0, 1))
    loss_axes.legend()
    f1_axes.legend()
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=110)
    plt.close(figure)


def plot_reliability(before: list[dict[str, Any]], after: list[dict[str, Any]], titles: tuple[str, str],
                     path: Path) -> None:
    """Reliability diagrams side by side (uncalibrated | calibrated): accuracy per confidence bin against the
    diagonal, bar width = bin, bin counts written above the bars. Empty bins are left blank."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from catalog_classifier.ops.io import atomic_path

    figure, panels = plt.subplots(1, 2, figsize=(11, 4.5), sharey=True)
    for axes, rows, title in zip(panels, (before, after), titles, strict=True):
        filled = [row for row in rows if row["count"]]
        axes.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfect calibration")
        axes.bar([row["lower"] for row in filled], [row["accuracy"] for row in filled],
                 width=[row["upper"] - row["lower"] for row in filled], align="edge", edgecolor="black",
                 alpha=0.7, label="accuracy")
        axes.plot([row["confidence"] for row in filled], [row["accuracy"] for row in filled], "o", color="red",
                  label="mean confidence")
        for row in filled:
            axes.text((row["lower"] + row["upper"]) / 2, min(row["accuracy"] + 0.02, 0.97), str(row["count"]),
                      ha="center", fontsize=7)
        axes.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence (max probability)", title=title)
        axes.legend(loc="upper left", fontsize=8)
    panels[0].set_ylabel("accuracy")
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=110)
    plt.close(figure)
