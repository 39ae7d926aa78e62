"""The forward pass the engine batches: images of several requests, each preprocessed on its own, scored together.

A request's images are decoded and resized where the request is handled; only the forward pass (the part that
gains from a batch) is shared. Each queued image carries its request's deadline: an image whose request has
already been answered 504 is dropped from its batch, so a timed-out request costs no more CPU.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from catalog_classifier.data.images import resize_to_array
from catalog_classifier.modeling.prediction import ImageClassifier

# What the endpoint answers per row: mlflow models serve's columns of the served pyfunc, in its order.
RESPONSE_COLUMNS = ("label", "confidence", "top3", "needs_review", "error")


@dataclass(frozen=True)
class QueuedImage:
    """One preprocessed image waiting for a batch, when its request stops waiting (``time.monotonic``), and the
    model its request started on (None: whichever the batch step serves)."""

    pixels: np.ndarray
    deadline: float
    model: BatchModel | None = None


def error_row(message: str) -> dict[str, Any]:
    """The answer for an image that could not be read: no label, no confidence, always reviewed."""
    return {"label": "", "confidence": None, "top3": "", "needs_review": True, "error": message}


class BatchModel:
    """An :class:`ImageClassifier` split in the two halves the engine schedules apart."""

    def __init__(self, classifier: ImageClassifier) -> None:
        self.classifier = classifier
        self.size = tuple(classifier.config["input_size"])
        self.interpolation = classifier.config["interpolation"]

    def preprocess(self, image: Any) -> np.ndarray:
        """CHW uint8 at the model's input size, resized as the predict path resizes."""
        return resize_to_array(image, self.size, self.interpolation)

    def forward(self, items: Sequence[QueuedImage], now: float | None = None) -> list[dict[str, Any] | None]:
        """One answer row per item in order; ``None`` for an item whose deadline has passed (never computed)."""
        now = time.monotonic() if now is None else now
        live = [index for index, item in enumerate(items) if item.deadline > now]
        rows: list[dict[str, Any] | None] = [None] * len(items)
        if not live:
            return rows
        # The classifier's own calibrated forward and row format: the same numbers as predict and mlflow serve.
        probabilities = self.classifier._forward(np.stack([items[index].pixels for index in live]))
        for position, index in enumerate(live):
            described = self.classifier._describe(probabilities[position])
            rows[index] = {column: described[column] for column in RESPONSE_COLUMNS}
        return rows


def forward_by_model(items: Sequence[QueuedImage], served: BatchModel,
                     now: float | None = None) -> list[dict[str, Any] | None]:
    """One batch whose images may belong to requests that started on different versions (a champion switch in
    progress): each group runs through the model its requests started on, so a request never mixes versions."""
    groups: dict[int, tuple[BatchModel, list[int]]] = {}
    for index, item in enumerate(items):
        model = item.model or served
        groups.setdefault(id(model), (model, []))[1].append(index)
    rows: list[dict[str, Any] | None] = [None] * len(items)
    for model, indexes in groups.values():
        for index, row in zip(indexes, model.forward([items[i] for i in indexes], now), strict=True):
            rows[index] = row
    return rows
