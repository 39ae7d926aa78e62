"""Prediction with a trained classifier and its own stored preprocessing: files, folders or encoded bytes in.

Used by ``catalog-classifier predict``, by the promotion gate (to score champion and challenger on the same
images) and by the served MLflow model, so all three decode, resize and run a model in exactly one way,
the way the evaluate stage does (same decoder, same resize, same runtime settings, same forward pass).
One unreadable image gets a reason in its own row; it never stops the batch.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from catalog_classifier.data.images import ImageLoadError, load_rgb, resize_to_array
from catalog_classifier.data.imageset import ImageSet
from catalog_classifier.modeling.models import Classifier, load_classifier
from catalog_classifier.modeling.training import predict_logits
from catalog_classifier.ops.io import read_json, write_json
from catalog_classifier.ops.runtime import Runtime, resolve_runtime

log = logging.getLogger(__name__)

TOP_K = 3
# Extensions picked up when a folder is given; a file named explicitly is always tried, whatever its name.
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
OUTPUT_COLUMNS = ["image", "label", "probability", "top3", "error"]
WEIGHTS_FILE = "model.pt"
CONFIG_FILE = "model_config.json"
SETTINGS_FILE = "serving.json"

Loader = Callable[[], Any]  # returns a PIL RGB image or raises ImageLoadError


@dataclass(frozen=True)
class InferenceSettings:
    """How to run the model (not what it computes): stored with it so predict matches the evaluate stage."""

    batch_size: int = 64
    channels_last: bool | str = "auto"
    bf16: bool | str = "auto"
    num_threads: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> InferenceSettings:
        return cls(**{key: payload[key] for key in cls.__dataclass_fields__ if key in payload})


def write_classifier_dir(weights: Path, directory: Path, settings: InferenceSettings) -> Path:
    """The self-contained folder a served model carries: weights, preprocessing config, inference settings."""
    import shutil

    directory.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(weights, directory / WEIGHTS_FILE)
    shutil.copyfile(weights.with_name(CONFIG_FILE), directory / CONFIG_FILE)
    write_json(directory / SETTINGS_FILE, settings.to_dict())
    return directory


class ImageClassifier:
    """A trained classifier with the preprocessing and runtime it was stored with."""

    def __init__(self, model: Classifier, config: dict[str, Any], settings: InferenceSettings) -> None:
        self.config = config
        self.classes: list[str] = list(config["classes"])
        self.settings = settings
        self.runtime: Runtime = resolve_runtime(settings.channels_last, settings.bf16, settings.num_threads)
        self.model = model.to(memory_format=torch.channels_last) if self.runtime.channels_last else model

    @classmethod
    def from_dir(cls, directory: Path | str) -> ImageClassifier:
        directory = Path(directory)
        model, config = load_classifier(directory / WEIGHTS_FILE)
        settings_file = directory / SETTINGS_FILE
        settings = InferenceSettings.from_dict(read_json(settings_file)) if settings_file.is_file() else (
            InferenceSettings())
        return cls(model, config, settings)

    def predict_files(self, paths: Sequence[Path | str]) -> pd.DataFrame:
        """One row per path, in order: label, probability, top-3 (JSON), or the reason it could not be read."""
        return self._predict([str(path) for path in paths], [_file_loader(Path(path)) for path in paths])

    def predict_encoded(self, names: Sequence[str], payloads: Sequence[bytes | None]) -> pd.DataFrame:
        """Same as :meth:`predict_files` for encoded image bytes (a payload of ``None`` is reported as such)."""
        return self._predict(list(names), [_bytes_loader(payload) for payload in payloads])

    def probabilities_for_files(self, paths: Sequence[Path]) -> tuple[np.ndarray, list[str]]:
        """Class probabilities (N, C) for images that must all be readable (the gate's scoring)."""
        pixels = [self._decode(_file_loader(Path(path))) for path in paths]
        return self._forward(np.stack(pixels)) if pixels else np.empty((0, len(self.classes))), self.classes

    def _decode(self, loader: Loader) -> np.ndarray:
        height, width = self.config["input_size"]
        return resize_to_array(loader(), (height, width), self.config["interpolation"])

    def _forward(self, pixels: np.ndarray) -> np.ndarray:
        batch = ImageSet(pixels=torch.from_numpy(pixels), labels=torch.zeros(len(pixels), dtype=torch.int64),
                         names=[""] * len(pixels))
        logits = predict_logits(self.model, batch, self.settings.batch_size, self.runtime)
        return torch.softmax(logits, 1).numpy()

    def _predict(self, names: list[str], loaders: list[Loader]) -> pd.DataFrame:
        rows: list[dict[str, Any]] = []
        # Decode one batch at a time: a folder of thousands of photos never sits in memory at once.
        for start in range(0, len(loaders), self.settings.batch_size):
            chunk = range(start, min(start + self.settings.batch_size, len(loaders)))
            decoded: dict[int, np.ndarray] = {}
            errors: dict[int, str] = {}
            for index in chunk:
                try:
                    decoded[index] = self._decode(loaders[index])
                except ImageLoadError as err:
                    errors[index] = str(err)
            probabilities = self._forward(np.stack(list(decoded.values()))) if decoded else None
            position = {index: row for row, index in enumerate(decoded)}
            for index in chunk:
                if index in errors:
                    log.warning("%s: %s", names[index], errors[index])
                    rows.append({"image": names[index], "label": "", "probability": float("nan"), "top3": "",
                                 "error": errors[index]})
                else:
                    rows.append({"image": names[index], **self._describe(probabilities[position[index]])})
        return pd.DataFrame(rows, columns=OUTPUT_COLUMNS)

    def _describe(self, probabilities: np.ndarray) -> dict[str, Any]:
        order = np.argsort(-probabilities, kind="stable")[:TOP_K]
        top = [[self.classes[i], round(float(probabilities[i]), 6)] for i in order]
        return {"label": top[0][0], "probability": top[0][1], "top3": json.dumps(top, ensure_ascii=False),
                "error": ""}


def _file_loader(path: Path) -> Loader:
    return lambda: load_rgb(path)


def _bytes_loader(payload: bytes | None) -> Loader:
    def load() -> Any:
        if payload is None:
            raise ImageLoadError("not valid base64")
        if not payload:
            raise ImageLoadError("empty file (0 bytes)")
        # Through a file so the decoding is byte-for-byte the one used on files (EXIF, draft, modes).
        with tempfile.TemporaryDirectory(prefix="catalog-predict-") as folder:
            path = Path(folder) / "image"
            path.write_bytes(payload)
            return load_rgb(path)

    return load


def expand_paths(paths: Iterable[Path | str]) -> list[Path]:
    """Files as given (even unreadable or missing: they get a reason), folders as their image files, sorted."""
    expanded: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            expanded += sorted(
                item for item in path.rglob("*")
                if item.is_file() and item.suffix.lower() in IMAGE_SUFFIXES
                and not any(part.startswith(".") for part in item.relative_to(path).parts)
            )
        else:
            expanded.append(path)
    return expanded


def time_calls(call: Callable[[Any], Any], items: Sequence[Any], warmup: int, repeats: int) -> dict[str, float]:
    """p50/p95/mean milliseconds of ``call`` on one item at a time, cycling through ``items`` after a warmup."""
    for index in range(warmup):
        call(items[index % len(items)])
    times = []
    for index in range(repeats):
        started = time.perf_counter()
        call(items[index % len(items)])
        times.append((time.perf_counter() - started) * 1000.0)
    return {"p50_ms": float(np.percentile(times, 50)), "p95_ms": float(np.percentile(times, 95)),
            "mean_ms": float(np.mean(times)), "repeats": repeats}


def single_image_latency(classifier: ImageClassifier, paths: Sequence[Path], warmup: int,
                         repeats: int) -> dict[str, float]:
    """Milliseconds for one image file through the predict path (decode, resize, forward, top-3), as served."""
    return time_calls(lambda path: classifier.predict_files([path]), list(paths), warmup, repeats)
