"""Prediction with a trained classifier and its own stored preprocessing: files, folders or encoded bytes in.

Used by ``catalog-classifier predict``, by the promotion gate (to score champion and challenger on the same
images) and by the served MLflow model, so all three decode, resize and run a model in exactly one way,
the way the evaluate stage does (same decoder, same resize, same runtime settings, same forward pass).
One unreadable image gets a reason in its own row; it never stops the batch.

A classifier folder may carry the evaluate stage's ``autolabel.json``: its temperature turns logits into calibrated
confidences, and its threshold says which predictions can be taken as labels without a human look
(``needs_review`` is false only at or above it), and its conformal quantile gives every row a ``prediction_set``:
the labels, most probable first, that hold the true one with probability >= 1 - ``autolabel.set_alpha``, for a
reviewer to choose from (``a|b`` in CSV, a list in the served JSON). Without that file (versions registered before
calibration) the temperature is 1, every row needs review (an uncalibrated confidence promises no precision) and
rows carry no set.
"""

from __future__ import annotations

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

from catalog_classifier.config.params import Params
from catalog_classifier.data.images import ImageLoadError, load_rgb, resize_to_array
from catalog_classifier.data.imageset import ImageSet
from catalog_classifier.modeling.calibration import calibrated_probabilities
from catalog_classifier.modeling.conformal import join_set, set_labels
from catalog_classifier.modeling.fit_loop import predict_logits
from catalog_classifier.modeling.models import Classifier, load_classifier, save_safetensors
from catalog_classifier.modeling.torch_setup import Runtime, resolve_runtime, torch_threads
from catalog_classifier.ops.io import CorruptFileError, read_json, write_json
from catalog_classifier.ops.progress import progress

log = logging.getLogger(__name__)

TOP_K = 3
# Extensions picked up when a folder is given; a file named explicitly is always tried, whatever its name.
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
OUTPUT_COLUMNS = ["image", "label", "confidence", "top3", "needs_review", "prediction_set", "error"]
WEIGHTS_FILE = "model.pt"  # the train stage's state dict (local pipeline outputs)
SAFE_WEIGHTS_FILE = "weights.safetensors"  # what a classifier folder, and so the registry, carries
ONNX_FILE = "model.onnx"  # the same weights as an ONNX graph (a registered folder carries it; see onnx_runtime)
CONFIG_FILE = "model_config.json"
SETTINGS_FILE = "serving.json"
AUTOLABEL_FILE = "autolabel.json"

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


@dataclass(frozen=True)
class Calibration:
    """Temperature and auto-label threshold of one model (from its ``autolabel.json``); the default is none."""

    temperature: float = 1.0
    threshold: float | None = None  # None: no confidence reaches the target precision, every row needs review
    target_precision: float | None = None
    test_coverage: float | None = None  # share of the evaluate stage's test images at or above the threshold
    # What the threshold was fitted on and promises there: share auto-labelled, one-sided precision lower bound.
    calibration_source: str | None = None
    calibration_coverage: float | None = None
    precision_lower_bound: float | None = None
    # The LAC quantile of the conformal prediction sets (autolabel.json "conformal"); None: no sets (older files)
    set_quantile: float | None = None
    set_alpha: float | None = None

    @classmethod
    def from_autolabel(cls, payload: dict[str, Any], source: Path | str) -> Calibration:
        """Only the fields prediction needs; a threshold counts only when the target precision was reachable."""
        temperature = float(payload["temperature"])
        if not np.isfinite(temperature) or temperature <= 0:
            raise CorruptFileError(f"{source}: temperature must be a positive number, got {payload['temperature']!r}")
        threshold = payload.get("threshold") if payload.get("reachable") else None
        coverage = (payload.get("test") or {}).get("coverage")
        fitted = payload.get("calibration") or {}
        sets = payload.get("conformal") or {}
        quantile = sets.get("quantile")
        if quantile is not None and not (np.isfinite(float(quantile)) and 0 <= float(quantile) <= 1):
            raise CorruptFileError(f"{source}: conformal quantile must be in [0, 1], got {quantile!r}")

        def number(value: Any) -> float | None:
            return None if value is None else float(value)

        return cls(temperature=temperature, threshold=None if threshold is None else float(threshold),
                   target_precision=float(payload["target_precision"]), test_coverage=number(coverage),
                   calibration_source=fitted.get("source"), calibration_coverage=number(fitted.get("coverage")),
                   precision_lower_bound=number(fitted.get("precision_lower_bound")),
                   set_quantile=number(quantile), set_alpha=number(sets.get("alpha")))

    @classmethod
    def read(cls, path: Path) -> Calibration:
        return cls.from_autolabel(read_json(path), path)

    def needs_review(self, confidence: float) -> bool:
        return self.threshold is None or not confidence >= self.threshold


def pipeline_inference_settings(params: Params) -> InferenceSettings:
    """Run a model as the evaluate stage runs it, so the served and benchmarked predictions are the evaluated ones."""
    return InferenceSettings(batch_size=params.evaluate.batch_size, channels_last=params.train.channels_last,
                             bf16=params.train.bf16, num_threads=params.train.num_threads)


def write_classifier_dir(weights: Path, directory: Path, settings: InferenceSettings,
                         autolabel: Path | None = None) -> Path:
    """The self-contained folder a served model carries: weights, preprocessing config, inference settings and,
    when given, the calibration (``autolabel.json``) its confidences and review flags come from.

    Only data: the train stage's state dict is rewritten as safetensors (no pickle), the rest is JSON."""
    import shutil

    directory.mkdir(parents=True, exist_ok=True)
    save_safetensors(torch.load(weights, map_location="cpu", weights_only=True), directory / SAFE_WEIGHTS_FILE)
    shutil.copyfile(weights.with_name(CONFIG_FILE), directory / CONFIG_FILE)
    write_json(directory / SETTINGS_FILE, settings.to_dict())
    if autolabel is not None:
        shutil.copyfile(autolabel, directory / AUTOLABEL_FILE)
    return directory


def format_top3(top: Sequence[tuple[str, float]]) -> str:
    """``label:prob;label:prob;...`` (six decimals), most probable first."""
    return ";".join(f"{label}:{probability:.6f}" for label, probability in top)


def parse_top3(text: str) -> list[tuple[str, float]]:
    """The pairs :func:`format_top3` wrote (a class name may hold ``:``; the probability never does)."""
    if not text:
        return []
    pairs = [item.rsplit(":", 1) for item in text.split(";")]
    return [(label, float(probability)) for label, probability in pairs]


class ImageClassifier:
    """A trained classifier with the preprocessing and runtime it was stored with."""

    def __init__(self, model: Classifier, config: dict[str, Any], settings: InferenceSettings,
                 calibration: Calibration | None = None) -> None:
        self.config = config
        self.classes: list[str] = list(config["classes"])
        self.settings = settings
        self.calibration = calibration or Calibration()
        # Loading a model leaves the process's thread count as it was (the gate loads the champion beside the
        # challenger); each classifier applies its own count around its own forward passes.
        threads = torch.get_num_threads()
        self.runtime: Runtime = resolve_runtime(settings.channels_last, settings.bf16, settings.num_threads)
        torch.set_num_threads(threads)
        self.model = model.to(memory_format=torch.channels_last) if self.runtime.channels_last else model

    @classmethod
    def from_dir(cls, directory: Path | str) -> ImageClassifier:
        directory = Path(directory)
        safe = directory / SAFE_WEIGHTS_FILE
        model, config = load_classifier(safe if safe.is_file() else directory / WEIGHTS_FILE)
        settings_file = directory / SETTINGS_FILE
        settings = InferenceSettings.from_dict(read_json(settings_file)) if settings_file.is_file() else (
            InferenceSettings())
        autolabel = directory / AUTOLABEL_FILE
        if autolabel.is_file():
            calibration = Calibration.read(autolabel)
        else:
            calibration = Calibration()
            log.info("%s has no %s (registered before calibration): temperature 1, every prediction needs review",
                     directory, AUTOLABEL_FILE)
        return cls(model, config, settings, calibration)

    def predict_files(self, paths: Sequence[Path | str | None], names: Sequence[str] | None = None,
                      progress_desc: str | None = None) -> pd.DataFrame:
        """One row per path, in order: label, calibrated confidence, top-3, review flag, or why it was unreadable.

        ``names`` (default: the paths) fill the ``image`` column; a path of ``None`` is a row without one.
        ``progress_desc`` shows a progress bar over the batches (in a terminal only).
        """
        shown = [str(path) for path in paths] if names is None else list(names)
        return self._predict(shown, [_file_loader(path) for path in paths], progress_desc)

    def predict_encoded(self, names: Sequence[str], payloads: Sequence[bytes | None]) -> pd.DataFrame:
        """Same as :meth:`predict_files` for encoded image bytes (a payload of ``None`` is reported as such)."""
        return self._predict(list(names), [_bytes_loader(payload) for payload in payloads])

    def probabilities_for_files(self, paths: Sequence[Path]) -> tuple[np.ndarray, list[str]]:
        """Calibrated class probabilities (N, C) for images that must all be readable (the gate's scoring)."""
        pixels = [self._decode(_file_loader(Path(path))) for path in paths]
        return self._forward(np.stack(pixels)) if pixels else np.empty((0, len(self.classes))), self.classes

    def _decode(self, loader: Loader) -> np.ndarray:
        height, width = self.config["input_size"]
        return resize_to_array(loader(), (height, width), self.config["interpolation"])

    def _logits(self, pixels: np.ndarray) -> torch.Tensor:
        batch = ImageSet(pixels=torch.from_numpy(pixels), labels=torch.zeros(len(pixels), dtype=torch.int64),
                         names=[""] * len(pixels))
        with torch_threads(self.runtime.threads):
            return predict_logits(self.model, batch, self.settings.batch_size, self.runtime)

    def _forward(self, pixels: np.ndarray) -> np.ndarray:
        """Calibrated probabilities: softmax of logits / temperature (the argmax, so the label, is unchanged).

        The evaluate stage's own function, in float64, so an image at the threshold is decided as it was there.
        """
        return calibrated_probabilities(self._logits(pixels).float().numpy(), self.calibration.temperature)

    def _predict(self, names: list[str], loaders: list[Loader], progress_desc: str | None = None) -> pd.DataFrame:
        rows: list[dict[str, Any]] = []
        starts = range(0, len(loaders), self.settings.batch_size)
        if progress_desc is not None:
            starts = progress(starts, desc=progress_desc, total=len(starts))
        # Decode one batch at a time: a folder of thousands of photos never sits in memory at once.
        for start in starts:
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
                    # No prediction is no label: such a row always goes to a human.
                    rows.append({"image": names[index], "label": "", "confidence": float("nan"), "top3": "",
                                 "needs_review": True, "prediction_set": "", "error": errors[index]})
                else:
                    rows.append({"image": names[index], **self._describe(probabilities[position[index]])})
        return pd.DataFrame(rows, columns=OUTPUT_COLUMNS)

    def _describe(self, probabilities: np.ndarray) -> dict[str, Any]:
        order = np.argsort(-probabilities, kind="stable")[:TOP_K]
        confidence = float(probabilities[order[0]])
        return {"label": self.classes[order[0]], "confidence": round(confidence, 6),
                "top3": format_top3([(self.classes[i], float(probabilities[i])) for i in order]),
                "needs_review": self.calibration.needs_review(confidence),
                "prediction_set": self._prediction_set(probabilities), "error": ""}

    def _prediction_set(self, probabilities: np.ndarray) -> str:
        """The conformal set (``a|b``, most probable first) the reviewer chooses from; empty without a quantile."""
        if self.calibration.set_quantile is None:
            return ""
        return join_set(set_labels(probabilities[None, :], self.calibration.set_quantile, self.classes)[0])


def _file_loader(path: Path | str | None) -> Loader:
    def load() -> Any:
        if path is None or str(path) == "":
            raise ImageLoadError("no image path")
        return load_rgb(path)

    return load


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
